"""Bad input of every kind is refused in one line naming the file and the interval, with exit status 2,
and leaves nothing behind: no corpus, no temporary folder, no log folder, an existing corpus untouched."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from import_sources import import_cli

pytestmark = pytest.mark.slow


@pytest.fixture
def timit(sources, tmp_path) -> Path:
    """A private copy of the session's TIMIT source, to spoil."""
    return Path(shutil.copytree(sources["timit"][0], tmp_path / "timit"))


def first_sentence(root: Path, suffix: str) -> Path:
    return sorted((root / "TRAIN").glob(f"*/*/SX*{suffix}"))[0]


def refused(args: list, capsys, out: Path) -> str:
    """Runs the import, which must fail with status 2 and leave nothing; returns its one-line message."""
    assert import_cli([*args, "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("gatelens corpus: error: ")
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.*")) and not (out.parent / "logs").exists()
    return err[-1]


def edit_line(path: Path, k: int, edit) -> None:
    lines = path.read_text().splitlines()
    lines[k] = edit(lines[k].split())
    path.write_text("\n".join(lines) + "\n")


def test_a_gap_between_phones_is_refused(timit, capsys, tmp_path):
    phn = first_sentence(timit, ".PHN")
    edit_line(phn, 2, lambda f: f"{int(f[0]) + 80} {f[1]} {f[2]}")  # 5 ms of nothing before the third phone
    msg = refused(["--from", "timit", timit], capsys, tmp_path / "out")
    assert str(phn) in msg and "gap between phone intervals" in msg and " s and " in msg


def test_overlapping_phones_are_refused(sources, embedded_utts, capsys, tmp_path):
    from import_sources import write_ctm

    ctm = write_ctm(embedded_utts, tmp_path / "data")
    edit_line(ctm, 3, lambda f: " ".join([*f[:2], f"{float(f[2]) - 0.005:.4f}", f"{float(f[3]) + 0.005:.4f}", f[4]]))
    msg = refused(["--from", "ctm", ctm], capsys, tmp_path / "out")
    assert str(ctm) in msg and "phone intervals overlap" in msg and "utterance" in msg


def test_an_alignment_longer_than_its_audio_is_refused(timit, capsys, tmp_path):
    phn = first_sentence(timit, ".PHN")
    n = len(phn.read_text().splitlines())
    edit_line(phn, n - 1, lambda f: f"{f[0]} {int(f[1]) + 800} {f[2]}")  # 50 ms past the end of the audio
    msg = refused(["--from", "timit", timit], capsys, tmp_path / "out")
    assert str(phn) in msg and "after the end of its audio" in msg and "(last interval '" in msg


def test_unreadable_audio_is_refused(sources, capsys, tmp_path):
    src = Path(shutil.copytree(sources["textgrid"][0], tmp_path / "mfa"))
    wav = sorted(src.glob("*/*.wav"))[0]
    wav.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt not really")  # a truncated header
    msg = refused(["--from", "textgrid", src], capsys, tmp_path / "out")
    assert str(wav) in msg and "cannot read audio" in msg


def test_an_empty_transcript_is_refused(timit, capsys, tmp_path):
    txt = first_sentence(timit, ".TXT")
    txt.write_text("0 1000\n")
    msg = refused(["--from", "timit", timit], capsys, tmp_path / "out")
    assert txt.stem in msg and "empty transcript" in msg


def test_an_unmapped_phone_is_refused_until_the_phone_map_maps_it(timit, capsys, tmp_path):
    phn = first_sentence(timit, ".PHN")
    edit_line(phn, 1, lambda f: f"{f[0]} {f[1]} xx")
    msg = refused(["--from", "timit", timit], capsys, tmp_path / "out")
    assert str(phn) in msg and "phone 'xx'" in msg and "--phone-map" in msg and "utterance" in msg
    bad_map = tmp_path / "bad.map"
    bad_map.write_text("xx\n")
    assert "bad.map:1: expected 'SOURCE TARGET'" in refused(["--from", "timit", timit, "--phone-map", bad_map],
                                                            capsys, tmp_path / "out")
    good = tmp_path / "phones.map"
    good.write_text("# a label of our own\nxx SIL\n")
    assert import_cli(["--from", "timit", timit, "--phone-map", good, "--out", tmp_path / "out",
                       "--keep-wavs", "none"]) == 0


def test_an_existing_corpus_is_kept_unless_overwrite(sources, capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine").write_text("keep")
    assert import_cli(["--from", "timit", sources["timit"][0], "--out", out]) == 2
    assert "already exists" in capsys.readouterr().err and (out / "mine").read_text() == "keep"


def test_bad_arguments_are_refused(sources, capsys, tmp_path):
    for args, what in ((["--from", "timit", sources["timit"][0], "--splits", "80,20"], "--splits '80,20'"),
                       (["--from", "kaldi", sources["timit"][0]], "--from 'kaldi'"),
                       (["--from", "timit"], "usage: gatelens corpus import")):
        assert what in refused(args, capsys, tmp_path / "out")
