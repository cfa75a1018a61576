"""Real Kaldi data directories, written by kaldiio in the test (not by our writer), and every bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import kaldiio
import numpy as np
import pytest

from cluster.data.kaldi import CorpusError, check_corpus, read_corpus
from service.cli import main as cli

PHONES_TXT = "<eps> 0\nSIL 1\nAA_B 2\nAA_E 3\nB_S 4\n#0 5\n"
NUM_TARGETS = 50


def make_kaldi_setup(root: Path, n: int = 6, seed: int = 0, text_ali: bool = False) -> Path:
    """A WSJ-like layout: data/<split>/feats.scp, exp/ali_<split>/{pdf,phones}.ark, data/lang/phones.txt."""
    rng = np.random.default_rng(seed)
    (root / "data" / "lang").mkdir(parents=True)
    (root / "data" / "lang" / "phones.txt").write_text(PHONES_TXT)
    expect = {}
    for split in ("train", "dev"):
        (root / "data" / split).mkdir(parents=True)
        (root / "exp" / f"ali_{split}").mkdir(parents=True)
        feats, pdf, ph = {}, {}, {}
        for i in range(n):
            utt = f"spk{i % 2}-{split}-{i:03d}"
            t = int(rng.integers(20, 60))
            feats[utt] = rng.standard_normal((t, 40)).astype(np.float32)
            pdf[utt] = rng.integers(0, NUM_TARGETS, t).astype(np.int32)
            ph[utt] = rng.integers(1, 5, t).astype(np.int32)
        kaldiio.save_ark(str(root / "data" / split / "feats.ark"), feats, scp=str(root / "data" / split / "feats.scp"))
        kaldiio.save_ark(str(root / "exp" / f"ali_{split}" / "pdf.ark"), pdf, text=text_ali)
        kaldiio.save_ark(str(root / "exp" / f"ali_{split}" / "phones.ark"), ph, text=text_ali)
        (root / "data" / split / "utt2spk").write_text("".join(f"{u} {u.split('-')[0]}\n" for u in sorted(feats)))
        expect[split] = (feats, pdf, ph)
    manifest = root / "corpus.toml"
    manifest.write_text(
        'name = "toy-wsj"\n'
        f'phones = "data/lang/phones.txt"\nnum_targets = {NUM_TARGETS}\n'
        + "".join(
            f'[splits.{s}]\nfeats = "data/{s}/feats.scp"\ntargets = "exp/ali_{s}/pdf.ark"\n'
            f'phones = "exp/ali_{s}/phones.ark"\nutt2spk = "data/{s}/utt2spk"\n'
            for s in ("train", "dev")
        )
    )
    return manifest, expect


@pytest.mark.parametrize("text_ali", [False, True])
def test_kaldiio_written_directory_reads_back_identically(tmp_path, text_ali):
    manifest, expect = make_kaldi_setup(tmp_path, text_ali=text_ali)
    corpus = read_corpus(manifest)
    assert corpus.name == "toy-wsj" and corpus.phones[2] == "AA_B" and corpus.num_targets == NUM_TARGETS
    for split in ("train", "dev"):
        feats, pdf, ph = expect[split]
        got = {u.utt_id: u for u in corpus.split(split)}
        assert sorted(got) == sorted(feats)
        for utt, f in feats.items():
            assert np.array_equal(got[utt].feats, f)
            assert np.array_equal(got[utt].targets, pdf[utt]) and np.array_equal(got[utt].phones, ph[utt])
            assert got[utt].speaker == utt.split("-")[0]
    # no CMVN file named: global stats come from the training features
    stacked = np.concatenate(list(expect["train"][0].values())).astype(np.float64)
    np.testing.assert_allclose(corpus.cmvn_mean, stacked.mean(0), rtol=1e-5, atol=1e-6)


def test_relative_scp_paths_resolve_against_the_manifest_root(tmp_path):
    manifest, expect = make_kaldi_setup(tmp_path / "a")
    scp = tmp_path / "a" / "data" / "train" / "feats.scp"
    scp.write_text(scp.read_text().replace(str(tmp_path / "a") + "/", ""))
    shutil.move(tmp_path / "a", tmp_path / "moved")
    utts = list(read_corpus(tmp_path / "moved" / "corpus.toml").split("train"))
    assert np.array_equal(utts[0].feats, expect["train"][0][utts[0].utt_id])


def test_check_summary_and_cli(tmp_path, capsys):
    manifest, _ = make_kaldi_setup(tmp_path)
    summary = check_corpus(manifest)
    assert summary["splits"]["train"]["utterances"] == 6 and summary["feat_dim"] == 40
    assert cli(["corpus", "check", str(manifest)]) == 0
    out = capsys.readouterr().out
    assert "toy-wsj" in out and "train" in out and "OK" in out


# ---------------------------------------------------------------------------------- bad inputs

def _expect_error(manifest: Path, *patterns: str, split: str = "train", **kw) -> str:
    with pytest.raises(CorpusError) as err:
        check_corpus(manifest, **kw)
    msg = str(err.value)
    for p in patterns:
        assert p in msg, f"{p!r} not in error: {msg}"
    return msg


def test_missing_file_is_named(tmp_path):
    manifest, _ = make_kaldi_setup(tmp_path)
    (tmp_path / "exp" / "ali_dev" / "phones.ark").unlink()
    _expect_error(manifest, "ali_dev/phones.ark", "not found")
    (tmp_path / "data" / "lang" / "phones.txt").unlink()
    with pytest.raises(CorpusError, match="phones.txt: phone table not found"):
        read_corpus(manifest)


def test_missing_archive_behind_an_scp_is_named_with_the_utterance(tmp_path):
    manifest, _ = make_kaldi_setup(tmp_path)
    (tmp_path / "data" / "dev" / "feats.ark").unlink()
    _expect_error(manifest, "data/dev/feats.scp", "utterance spk0-dev-000", "not found")


def test_feature_dimension_must_not_change(tmp_path):
    manifest, expect = make_kaldi_setup(tmp_path)
    feats = dict(expect["dev"][0])
    odd = sorted(feats)[3]
    feats[odd] = np.zeros((len(expect["dev"][1][odd]), 13), dtype=np.float32)
    kaldiio.save_ark(str(tmp_path / "data" / "dev" / "feats.ark"), feats, scp=str(tmp_path / "data" / "dev" / "feats.scp"))
    _expect_error(manifest, "data/dev/feats.scp", f"utterance {odd}", "dimension 13")


def test_unaligned_utterances_are_counted_and_refused_unless_skipped(tmp_path):
    manifest, expect = make_kaldi_setup(tmp_path)
    pdf = dict(expect["train"][1])
    gone = sorted(pdf)[0]
    del pdf[gone]
    kaldiio.save_ark(str(tmp_path / "exp" / "ali_train" / "pdf.ark"), pdf)
    _expect_error(manifest, "1 of 6 utterances have features but no target alignment", gone, "--skip-unaligned")
    summary = check_corpus(manifest, skip_unaligned=True)
    assert summary["splits"]["train"]["utterances"] == 5 and summary["splits"]["train"]["skipped"] == 1


def test_alignment_without_features_is_reported(tmp_path):
    manifest, expect = make_kaldi_setup(tmp_path)
    ph = dict(expect["train"][2])
    ph["stray-utt"] = np.ones(30, dtype=np.int32)
    kaldiio.save_ark(str(tmp_path / "exp" / "ali_train" / "phones.ark"), ph)
    _expect_error(manifest, "a phone alignment but no features", "stray-utt")


def test_frame_count_mismatch_beyond_tolerance(tmp_path):
    manifest, expect = make_kaldi_setup(tmp_path)
    pdf = dict(expect["dev"][1])
    utt = sorted(pdf)[2]
    pdf[utt] = pdf[utt][:-1]  # within the default tolerance of 2: accepted, padded
    kaldiio.save_ark(str(tmp_path / "exp" / "ali_dev" / "pdf.ark"), pdf)
    assert len(read_corpus(manifest).split("dev").load(utt).targets) == len(expect["dev"][0][utt])
    pdf[utt] = pdf[utt][:-5]
    kaldiio.save_ark(str(tmp_path / "exp" / "ali_dev" / "pdf.ark"), pdf)
    _expect_error(manifest, "ali_dev/pdf.ark", f"utterance {utt}", "target frames vs", "tolerance is 2")


def test_target_id_outside_declared_range(tmp_path):
    manifest, expect = make_kaldi_setup(tmp_path)
    pdf = dict(expect["train"][1])
    utt = sorted(pdf)[4]
    pdf[utt] = pdf[utt].copy()
    pdf[utt][7] = NUM_TARGETS
    kaldiio.save_ark(str(tmp_path / "exp" / "ali_train" / "pdf.ark"), pdf)
    _expect_error(manifest, "ali_train/pdf.ark", f"utterance {utt}", f"target id {NUM_TARGETS}", f"[0, {NUM_TARGETS})")


def test_phone_id_missing_from_phone_table(tmp_path):
    manifest, expect = make_kaldi_setup(tmp_path)
    ph = dict(expect["dev"][2])
    utt = sorted(ph)[1]
    ph[utt] = ph[utt].copy()
    ph[utt][0] = 9
    kaldiio.save_ark(str(tmp_path / "exp" / "ali_dev" / "phones.ark"), ph)
    _expect_error(manifest, "ali_dev/phones.ark", f"utterance {utt}", "phone id 9", "phones.txt")


def test_empty_archive(tmp_path):
    manifest, _ = make_kaldi_setup(tmp_path)
    (tmp_path / "exp" / "ali_train" / "pdf.ark").write_bytes(b"")
    _expect_error(manifest, "ali_train/pdf.ark", "empty archive")


def test_truncated_alignment_archive(tmp_path):
    manifest, _ = make_kaldi_setup(tmp_path)
    ark = tmp_path / "exp" / "ali_train" / "phones.ark"
    data = ark.read_bytes()
    ark.write_bytes(data[: len(data) - 37])
    _expect_error(manifest, "ali_train/phones.ark", "truncated or corrupt")


def test_truncated_feature_archive_names_the_utterance(tmp_path):
    manifest, expect = make_kaldi_setup(tmp_path)
    ark = tmp_path / "data" / "dev" / "feats.ark"
    data = ark.read_bytes()
    ark.write_bytes(data[: len(data) - 100])
    last = sorted(expect["dev"][0])[-1]
    _expect_error(manifest, "data/dev/feats.scp", f"utterance {last}", "truncated or corrupt")


def test_manifest_errors(tmp_path):
    bad = tmp_path / "m.json"
    bad.write_text("{not json")
    with pytest.raises(CorpusError, match="m.json: not a valid JSON manifest"):
        read_corpus(bad)
    bad.write_text(json.dumps({"phones": "p.txt", "splits": {}}))
    with pytest.raises(CorpusError, match="lacks the field 'num_targets'"):
        read_corpus(bad)
    with pytest.raises(CorpusError, match="corpus manifest not found"):
        read_corpus(tmp_path / "nowhere")


def test_cli_reports_bad_input_with_exit_code_2(tmp_path, capsys):
    manifest, _ = make_kaldi_setup(tmp_path)
    (tmp_path / "exp" / "ali_train" / "pdf.ark").write_bytes(b"")
    assert cli(["corpus", "check", str(manifest)]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "pdf.ark" in err and "Traceback" not in err


# ------------------------------------------------------------------------- non-finite features

def _poison(root: Path, expect: dict, split: str, which: int, frame: int, dim: int, value: float) -> str:
    """Rewrite ``split``'s feats.ark/scp (with kaldiio) with ``value`` at [frame, dim] of one utterance."""
    feats = dict(expect[split][0])
    utt = sorted(feats)[which]
    feats[utt] = feats[utt].copy()
    feats[utt][frame, dim] = value
    kaldiio.save_ark(str(root / "data" / split / "feats.ark"), feats, scp=str(root / "data" / split / "feats.scp"))
    return utt


@pytest.mark.parametrize("value, shown", [(np.nan, "NaN"), (np.inf, "+Inf"), (-np.inf, "-Inf")])
def test_non_finite_features_are_refused_naming_file_utterance_frame_and_dim(tmp_path, value, shown):
    manifest, expect = make_kaldi_setup(tmp_path)
    utt = _poison(tmp_path, expect, "dev", which=3, frame=17, dim=4, value=value)
    t = len(expect["dev"][0][utt])
    msg = _expect_error(manifest, f"data/dev/feats.scp: utterance {utt}: frame 17 holds {shown} (dim 4); "
                                  f"1 of {t} frames hold NaN or Inf")
    assert "\n" not in msg


def test_the_first_bad_frame_is_named_and_bad_frames_counted(tmp_path):
    manifest, expect = make_kaldi_setup(tmp_path)
    feats = dict(expect["train"][0])
    utt = sorted(feats)[1]
    feats[utt] = feats[utt].copy()
    feats[utt][12, 30] = np.inf  # frames count from 0, like Kaldi's; the first bad one is named
    feats[utt][5, 39] = np.nan
    feats[utt][5, 2] = -np.inf   # the first bad dim of that frame
    feats[utt][9, :] = np.nan
    kaldiio.save_ark(str(tmp_path / "data" / "train" / "feats.ark"), feats, scp=str(tmp_path / "data" / "train" / "feats.scp"))
    _expect_error(manifest, f"data/train/feats.scp: utterance {utt}: frame 5 holds -Inf (dim 2); "
                            f"3 of {len(feats[utt])} frames hold NaN or Inf")


def test_training_reads_never_see_non_finite_features(tmp_path):
    """The check sits in Split.load, which training, capture and export read through, and so do
    the CMVN statistics computed from the training features."""
    manifest, expect = make_kaldi_setup(tmp_path)
    utt = _poison(tmp_path, expect, "train", which=0, frame=0, dim=0, value=np.nan)
    corpus = read_corpus(manifest)
    with pytest.raises(CorpusError, match=f"utterance {utt}: frame 0 holds NaN \\(dim 0\\)"):
        corpus.split("train").load(utt)
    with pytest.raises(CorpusError, match=f"utterance {utt}: frame 0 holds NaN"):
        list(corpus.split("train"))
    with pytest.raises(CorpusError, match=f"utterance {utt}: frame 0 holds NaN"):
        corpus.cmvn_mean  # noqa: B018 - computed from the train features
    # the other utterances still read: the error is about that one utterance
    ok = sorted(expect["train"][0])[1]
    assert np.array_equal(corpus.split("train").load(ok).feats, expect["train"][0][ok])


def test_float64_features_beyond_float32_range_are_refused_as_inf(tmp_path):
    """Features are read as float32: a double too large for it becomes Inf, which is refused."""
    manifest, expect = make_kaldi_setup(tmp_path)
    feats = {u: f.astype(np.float64) for u, f in expect["train"][0].items()}
    utt = sorted(feats)[2]
    feats[utt][3, 7] = -1e300
    kaldiio.save_ark(str(tmp_path / "data" / "train" / "feats.ark"), feats, scp=str(tmp_path / "data" / "train" / "feats.scp"))
    _expect_error(manifest, f"data/train/feats.scp: utterance {utt}: frame 3 holds -Inf (dim 7)")


def _as_corpus_dir(manifest: Path) -> Path:
    """The corpus directory form (``gatelens corpus check DIR``): the same manifest as manifest.json."""
    import tomllib

    (manifest.parent / "manifest.json").write_text(json.dumps(tomllib.loads(manifest.read_text())))
    return manifest.parent


@pytest.mark.parametrize("value, shown", [(np.nan, "NaN"), (np.inf, "+Inf")])
def test_cli_check_refuses_non_finite_features_with_one_line_and_exit_2(tmp_path, capsys, value, shown):
    manifest, expect = make_kaldi_setup(tmp_path)
    utt = _poison(tmp_path, expect, "dev", which=2, frame=17, dim=4, value=value)
    corpus_dir = _as_corpus_dir(manifest)
    assert cli(["corpus", "check", str(corpus_dir)]) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if "error:" in line]
    t = len(expect["dev"][0][utt])
    assert errors == [f"gatelens corpus: error: {(corpus_dir / 'data' / 'dev' / 'feats.scp').resolve()}: "
                      f"utterance {utt}: frame 17 holds {shown} (dim 4); 1 of {t} frames hold NaN or Inf"]
    assert "Traceback" not in captured.err and "OK" not in captured.out


def test_installed_gatelens_command_exits_2_on_nan_features(tmp_path):
    manifest, expect = make_kaldi_setup(tmp_path)
    utt = _poison(tmp_path, expect, "train", which=4, frame=17, dim=4, value=np.nan)
    exe = Path(sys.executable).parent / "gatelens"
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "service.cli"]
    proc = subprocess.run(cmd + ["corpus", "check", str(_as_corpus_dir(manifest))],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("gatelens corpus: error: ") and last.endswith(
        f"data/train/feats.scp: utterance {utt}: frame 17 holds NaN (dim 4); "
        f"1 of {len(expect['train'][0][utt])} frames hold NaN or Inf"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_pipes_run_only_with_both_consents(tmp_path):
    """A Kaldi pipe is a real feature: with ``allow_pipes = true`` in the manifest and the caller's
    consent it reads through the shell; with either missing it is refused (test_hostile.py)."""
    manifest, expect = make_kaldi_setup(tmp_path)
    scp = tmp_path / "data" / "train" / "feats.scp"
    marker = tmp_path / "pipe-ran"
    lines = scp.read_text().splitlines()
    key = lines[0].split(" ", 1)[0]
    single = tmp_path / "one.mat"
    kaldiio.save_mat(str(single), expect["train"][0][key])
    lines[0] = f"{key} touch {marker}; cat {single} |"
    scp.write_text("\n".join(lines) + "\n")
    manifest.write_text("allow_pipes = true\n" + manifest.read_text())
    with pytest.raises(CorpusError, match="a Kaldi pipe runs a shell command"):
        read_corpus(manifest).split("train").feats_scp
    assert not marker.exists()
    got = read_corpus(manifest, allow_pipes=True).split("train").load(key)
    assert marker.exists() and np.array_equal(got.feats, expect["train"][0][key])
