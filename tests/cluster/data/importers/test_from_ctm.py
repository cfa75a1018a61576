"""Kaldi phone CTMs with word-position suffixes over a data dir whose utterances are segments of longer
recordings: frame targets, a refused wav.scp pipe, training and capture."""

from __future__ import annotations

import pytest

from cluster.data.kaldi import read_corpus
from import_sources import assert_frames_match, capture_trained, import_cli, write_ctm

pytestmark = pytest.mark.slow


def test_ctm_over_segments_imports(imported, embedded_utts):
    out = imported("ctm")
    corpus = read_corpus(out)
    assert sum(len(corpus.split(s)) for s in ("train", "dev", "test")) == len(embedded_utts)
    assert not (out / "test" / "words.ctm").exists()  # a phone CTM has no word timings
    assert assert_frames_match(out, embedded_utts) == len(embedded_utts)


def test_a_pipe_in_wav_scp_is_refused_and_never_runs(embedded_utts, tmp_path, capsys):
    ctm = write_ctm(embedded_utts, tmp_path / "data")
    marker = tmp_path / "ran"
    lines = (tmp_path / "data" / "wav.scp").read_text().splitlines()
    rec = lines[0].split()[0]
    lines[0] = f"{rec} touch {marker} |"
    (tmp_path / "data" / "wav.scp").write_text("\n".join(lines) + "\n")
    assert import_cli(["--from", "ctm", ctm, "--out", tmp_path / "out"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "wav.scp" in err and rec in err and "pipe" in err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_ctm_trains_and_captures(trained):
    captured = capture_trained(trained["ctm"])
    assert captured.summary.utterances == 2 and captured.summary.frames > 0
