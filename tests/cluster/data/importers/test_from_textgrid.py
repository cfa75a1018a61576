"""MFA-style TextGrids written by praatio beside wav and 44.1 kHz flac audio: speaker folders, empty
intervals as silence, resampling said so, word alignment kept, frame targets, training and capture."""

from __future__ import annotations

import json

import pytest

from cluster.data.kaldi import read_corpus
from import_sources import assert_frames_match, capture_trained

pytestmark = pytest.mark.slow


def test_textgrids_import_split_by_speaker_with_resampled_flac(imported, embedded_utts):
    out = imported("textgrid")
    m = json.loads((out / "manifest.json").read_text())
    imp = m["importer"]
    assert imp["resampled"]["utterances"] == 2 and imp["resampled"]["library"].startswith("soxr ")
    assert imp["source_rates"] == {"16000": len(embedded_utts) - 2, "44100": 2}
    assert imp["splits"].startswith("by speaker")
    corpus = read_corpus(out)
    spk = [set(corpus.split(s).utt2spk.values()) for s in ("train", "dev", "test")]
    assert not (spk[0] & spk[1] or spk[0] & spk[2] or spk[1] & spk[2])
    assert sum(len(corpus.split(s)) for s in ("train", "dev", "test")) == len(embedded_utts)
    assert all((out / s / "words.ctm").is_file() for s in ("train", "dev", "test"))
    assert assert_frames_match(out, embedded_utts) == len(embedded_utts)


def test_textgrid_trains_and_captures(trained):
    captured = capture_trained(trained["textgrid"])
    assert captured.summary.utterances == 2 and captured.summary.frames > 0
