"""lhotse manifests written by lhotse's own API: split manifests, a single CutSet, word alignments, a
refused ``command`` audio source, frame targets equal to the embedded corpus's, training and capture."""

from __future__ import annotations

import json

import pytest

from cluster.data import phones as P
from cluster.data.importers import ImportOptions, import_corpus
from cluster.data.kaldi import read_corpus
from import_sources import assert_frames_match, capture_trained, import_cli, speaker_splits, write_lhotse

pytestmark = pytest.mark.slow


def test_split_manifests_import_with_their_splits_and_word_alignments(imported, embedded_utts):
    out = imported("lhotse")
    corpus = read_corpus(out)
    want = speaker_splits(embedded_utts)
    for split in ("train", "dev", "test"):
        assert set(corpus.split(split).utt2spk.values()) == {s for s, v in want.items() if v == split}
    m = json.loads((out / "manifest.json").read_text())
    assert m["importer"]["splits"] == "the source's own" and m["importer"]["resampled"] is None
    assert corpus.phones == ["<eps>", *P.PHONES]  # ARPAbet-39 + SIL, as the embedded corpus
    assert corpus.num_targets == 120
    words = (out / "test" / "words.ctm").read_text().splitlines()
    first = next(u for u in embedded_utts if want[u.speaker] == "test")
    assert [w.split()[4] for w in words if w.startswith(first.utt_id + " ")] == [w for w, _, _ in first.words()]
    assert assert_frames_match(out, embedded_utts) == len(embedded_utts)


def test_a_single_cutset_of_long_recordings_splits_by_speaker(embedded_utts, ray_cluster, tmp_path):
    """Each speaker's utterances are supervisions at their offsets into one recording (times in the
    cut's own clock): the importer reads each one's span and alignment from its own start."""
    from lhotse import load_manifest

    cuts = write_lhotse(embedded_utts, tmp_path / "src", cuts=True, long=True)
    assert sum(s.start > 0 for c in load_manifest(cuts) for s in c.supervisions) >= 3
    m = import_corpus("lhotse", cuts, tmp_path / "out", options=ImportOptions(keep_wavs="none"))
    assert m["importer"]["splits"].startswith("by speaker, 80,10,10")
    corpus = read_corpus(tmp_path / "out")
    spk = [set(corpus.split(s).utt2spk.values()) for s in ("train", "dev", "test")]
    assert all(spk) and not (spk[0] & spk[1] or spk[0] & spk[2] or spk[1] & spk[2])  # no speaker in two splits
    assert assert_frames_match(tmp_path / "out", embedded_utts) == len(embedded_utts)


def test_a_command_audio_source_is_refused_and_never_runs(embedded_utts, tmp_path, capsys):
    from lhotse import load_manifest

    src = write_lhotse(embedded_utts, tmp_path / "src")
    path = src / "embedded_recordings_test.jsonl.gz"
    marker = tmp_path / "ran"
    recs = load_manifest(path).to_dicts()
    recs = [dict(r) for r in recs]
    recs[0]["sources"] = [{"type": "command", "channels": [0], "source": f"touch {marker}; cat {embedded_utts[0].wav}"}]
    from lhotse import RecordingSet

    RecordingSet.from_dicts(recs).to_file(path)
    assert import_cli(["--from", "lhotse", src, "--out", tmp_path / "out"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "embedded_recordings_test.jsonl.gz" in err and "'command'" in err and "refused" in err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_lhotse_trains_and_captures(trained):
    captured = capture_trained(trained["lhotse"])
    assert captured.summary.utterances == 2 and captured.summary.frames > 0
