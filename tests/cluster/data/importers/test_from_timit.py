"""TIMIT folders (NIST SPHERE wavs written by soundfile, .PHN/.WRD in samples): the standard splits, the
61 -> 39 folding, frame targets equal to the embedded corpus's, and a tiny training run and capture."""

from __future__ import annotations

import json

import pytest

from cluster.data.importers.phonesets import PhoneSet
from cluster.data.kaldi import read_corpus
from import_sources import assert_frames_match, capture_trained, import_cli

pytestmark = pytest.mark.slow
TIMIT = PhoneSet("timit")


def test_timit_imports_with_its_own_splits_and_the_39_phones(imported, sources, embedded_utts):
    out = imported("timit")
    corpus = read_corpus(out)
    m = json.loads((out / "manifest.json").read_text())
    speakers = {s: set(corpus.split(s).utt2spk.values()) for s in ("train", "dev", "test")}
    assert speakers["test"] == {"MDAB0", "FELC0"} and speakers["dev"] == {"FAKS0", "MGWT0"}  # core test, dev list
    assert "MZZZ0" not in set().union(*speakers.values())  # a TEST speaker in neither list is left out
    assert not any(u.endswith("SA1") for s in ("train", "dev", "test") for u in corpus.split(s).utt_ids)
    assert corpus.phones[1:] == ["SIL", *sorted(set(TIMIT.symbols) - {"SIL"})] and len(corpus.phones) == 40
    assert corpus.num_targets == 39 * 3 and "ZH" not in corpus.phones and "AO" not in corpus.phones
    assert m["importer"]["splits"] == "the source's own" and m["splits"]["test"]["words"] == "test/words.ctm"
    # the embedded phones folded as TIMIT's 39 classes fold them (AO -> AA, ZH -> SH)
    fold = lambda p: p if p == "SIL" else TIMIT.map(p.lower())  # noqa: E731
    assert assert_frames_match(out, embedded_utts, sources["timit"][2], fold) == len(embedded_utts)


def test_splits_by_speaker_when_asked(sources, tmp_path, capsys):
    assert import_cli(["--from", "timit", sources["timit"][0], "--out", tmp_path / "out", "--splits", "50,25,25",
                       "--keep-wavs", "none"]) == 0
    assert "by speaker, 50,25,25 % of utterances, seed 0" in capsys.readouterr().out
    corpus = read_corpus(tmp_path / "out")
    spk = [set(corpus.split(s).utt2spk.values()) for s in ("train", "dev", "test")]
    assert all(spk) and not (spk[0] & spk[1] or spk[0] & spk[2] or spk[1] & spk[2])
    assert "MZZZ0" in set().union(*spk)  # every speaker takes part in a split by speaker


def test_timit_trains_and_captures(trained):
    captured = capture_trained(trained["timit"])
    assert captured.summary.utterances == 2 and captured.summary.frames > 0
    assert set(captured.frames["phone_responsibility"]["phone"]) <= set(TIMIT.symbols)
