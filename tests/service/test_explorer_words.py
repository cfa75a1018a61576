"""The explorer's word tier: a corpus imported with word timings serves them, in frames, per utterance."""

from __future__ import annotations

import pytest

from import_sources import embedded_utterances, write_lhotse
from tests_helpers import make_checkpoint

pytestmark = pytest.mark.slow


def test_the_word_tier_of_an_imported_corpus(ray_cluster, small_corpus, tmp_path):
    from cluster.data.importers import ImportOptions, import_corpus
    from service.explorer.data import ExplorerConfig, Loaded

    utts = embedded_utterances(small_corpus, ["test"])
    import_corpus("lhotse", write_lhotse(utts, tmp_path / "src"), tmp_path / "corpus",
                  options=ImportOptions(keep_wavs="none"))
    ckpt = make_checkpoint(tmp_path / "corpus", tmp_path / "run" / "checkpoint_000000" / "model.pt", "gru", 0)
    loaded = Loaded("ck", str(ckpt), ExplorerConfig(store=str(tmp_path / "s.duckdb")), {"split": "test"})
    assert loaded.split.utt_ids and set(loaded.words) == set(loaded.split.utt_ids)
    by_id = {u.utt_id: u for u in utts}
    for utt_id, tier in loaded.words.items():
        want = by_id[utt_id].words()
        assert [w["word"] for w in tier] == [w for w, _, _ in want]
        for w, (_, start, end) in zip(tier, want):  # frames of 10 ms, to the CTM's millisecond
            assert w["start"] == pytest.approx(start * 100, abs=0.1) and w["end"] == pytest.approx(end * 100, abs=0.1)
    words = tmp_path / "corpus" / "test" / "words.ctm"
    words.write_text(words.read_text() + "x 1 nan 0.1 w\n")
    from cluster.errors import InputError

    with pytest.raises(InputError, match=r"words.ctm:\d+: expected 'UTT CHANNEL START DURATION WORD'"):
        Loaded("ck", str(ckpt), ExplorerConfig(store=str(tmp_path / "s.duckdb")), {"split": "test"}).words
