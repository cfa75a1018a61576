"""Hostile files in storage and bad arguments to the other commands (rows of ``test_hostile.py``).

Each ``setup`` plants real files in the case's folder: a Kaldi corpus whose scp would run a shell
command, checkpoints that would make the process grow or hold NaN, manifests with fields of the
wrong type. ``MARK`` is the file a planted command would create.
"""

from __future__ import annotations

import json
from pathlib import Path

import kaldiio
import numpy as np
import torch

from hostile_case import Case

MARK = "planted-ran"
STORED = "gru-1x16-f81cd15319"  # a checkpoint the fixture store holds a finished capture of


def kaldi_corpus(folder: Path, *, feats_line: str | None = None, manifest_extra: str = "",
                 num_targets: str = "20") -> Path:
    """A small real Kaldi layout (kaldiio-written arks); ``feats_line`` is appended to train's feats.scp."""
    rng = np.random.default_rng(0)
    root = folder / "kaldi"
    (root / "lang").mkdir(parents=True, exist_ok=True)
    (root / "lang" / "phones.txt").write_text("<eps> 0\nSIL 1\nAA 2\n")
    for split in ("train", "dev"):
        d = root / split
        d.mkdir(exist_ok=True)
        feats = {f"u{k}": rng.standard_normal((12, 40)).astype(np.float32) for k in range(3)}
        kaldiio.save_ark(str(d / "feats.ark"), feats, scp=str(d / "feats.scp"))
        kaldiio.save_ark(str(d / "pdf.ark"), {u: rng.integers(0, 20, 12).astype(np.int32) for u in feats})
        kaldiio.save_ark(str(d / "phones.ark"), {u: rng.integers(1, 3, 12).astype(np.int32) for u in feats})
    if feats_line is not None:
        with open(root / "train" / "feats.scp", "a") as f:
            f.write(feats_line.format(mark=folder / MARK) + "\n")
        kaldiio.save_ark(str(root / "train" / "pdf.ark"), {f"u{k}": np.zeros(12, np.int32) for k in range(4)})
        kaldiio.save_ark(str(root / "train" / "phones.ark"), {f"u{k}": np.ones(12, np.int32) for k in range(4)})
    (root / "corpus.toml").write_text(
        f'name = "hostile"\nphones = "lang/phones.txt"\nnum_targets = {num_targets}\n{manifest_extra}\n'
        + "".join(f'[splits.{s}]\nfeats = "{s}/feats.scp"\ntargets = "{s}/pdf.ark"\nphones = "{s}/phones.ark"\n'
                  for s in ("train", "dev")))
    return root / "corpus.toml"


def checkpoint(folder: Path, name: str = "ck.pt", edit=None, cell: str = "gru") -> Path:
    """A real gatelens checkpoint (tiny), optionally edited as a hostile writer would."""
    from cluster.models import ModelConfig, build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model(ModelConfig(cell=cell, layers=1, hidden=4, num_targets=20), torch.zeros(40), torch.ones(40))
    path = save_checkpoint(folder / name, model, {"name": "hostile", "phones": ["<eps>", "SIL", "AA"], "num_targets": 20},
                           extra={"stamps": {"config": {"corpus": str(folder / "kaldi" / "corpus.toml")}}})
    if edit is not None:
        payload = torch.load(path, weights_only=True)
        edit(payload)
        torch.save(payload, path)
    return path


def _huge(payload):
    payload["config"]["layers"] = 1_000_000


def _nan(payload):
    payload["state_dict"]["layers.0.W_cx"][0, 0] = float("nan")


def _with_corpus(folder: Path, **kw) -> None:
    kaldi_corpus(folder, **kw)


STORAGE_CASES: list[Case] = [
    # files in storage that would run code
    Case("pipe-in-feats-scp", lambda d: ["corpus", "check", d / "kaldi" / "corpus.toml"], 2,
         r"feats\.scp:4: utterance u3: .*a Kaldi pipe runs a shell command",
         setup=lambda d: _with_corpus(d, feats_line="u3 touch {mark} |"), marker=MARK, own_process=True),
    Case("pipe-without-the-flag", lambda d: ["corpus", "check", d / "kaldi" / "corpus.toml"], 2,
         r"a Kaldi pipe runs a shell command",
         setup=lambda d: _with_corpus(d, feats_line="u3 touch {mark} |", manifest_extra="allow_pipes = true"),
         marker=MARK),
    Case("pipe-without-the-manifest", lambda d: ["corpus", "check", d / "kaldi" / "corpus.toml", "--allow-pipes"], 2,
         r"a Kaldi pipe runs a shell command",
         setup=lambda d: _with_corpus(d, feats_line="u3 touch {mark} |"), marker=MARK),
    Case("pipe-reading-stdin", lambda d: ["corpus", "check", d / "kaldi" / "corpus.toml"], 2,
         r"utterance u3: '-': a Kaldi pipe", setup=lambda d: _with_corpus(d, feats_line="u3 -")),
    Case("pipe-as-a-manifest-file", lambda d: ["corpus", "check", d / "kaldi" / "corpus.toml"], 2,
         r"corpus\.toml: 'touch .*\|' is a Kaldi pipe, not a file",
         setup=lambda d: (_with_corpus(d), (d / "kaldi" / "corpus.toml").write_text(
             (d / "kaldi" / "corpus.toml").read_text().replace('"train/pdf.ark"', f'"touch {d / MARK} |"'))),
         marker=MARK),
    Case("capture-of-a-checkpoint-pointing-at-a-piped-corpus", lambda d: ["capture", d / "ck.pt", "--split", "train"], 2,
         r"a Kaldi pipe runs a shell command",
         setup=lambda d: (_with_corpus(d, feats_line="u3 touch {mark} |"), checkpoint(d)), marker=MARK),
    # checkpoints that would exhaust the machine or hold garbage
    Case("checkpoint-with-a-million-layers", lambda d: ["capture", d / "ck.pt"], 2,
         r"config layers=1000000 is outside 1\.\.64; refused before building",
         setup=lambda d: (_with_corpus(d), checkpoint(d, edit=_huge)), timeout=60, own_process=True),
    Case("checkpoint-with-nan-weights", lambda d: ["capture", d / "ck.pt"], 2,
         r"weight layers\.0\.W_cx holds NaN or Inf", setup=lambda d: (_with_corpus(d), checkpoint(d, edit=_nan))),
    # a refused capture must not change the store (the fixture holds a finished capture of STORED)
    Case("refused-capture-keeps-the-good-one",
         lambda d: ["capture", d / "ck.pt", "--checkpoint-id", STORED, "--split", "nosuch"], 2,
         r"no split 'nosuch'", setup=lambda d: (_with_corpus(d), checkpoint(d))),
    Case("capture-bad-id-creates-nothing",
         lambda d: ["capture", d / "ck.pt", "--checkpoint-id", "../x", "--store", d / "newdir" / "s.duckdb"], 2,
         r"--checkpoint-id '\.\./x' must be", setup=lambda d: (_with_corpus(d), checkpoint(d)), marker="newdir"),
    # numbers that reported wrong data as success, or spun
    Case("capture-negative-shards", lambda d: ["capture", d / "ck.pt", "--shards", "-1"], 2,
         r"argument --shards: '-1': must be at least 1"),
    Case("capture-negative-sample", lambda d: ["capture", d / "ck.pt", "--sample", "-1"], 2,
         r"argument --sample: '-1': must be at least 0"),
    Case("capture-no-utterances", lambda d: ["capture", d / "ck.pt", "--utterances", "0"], 2,
         r"argument --utterances: '0': must be at least 1"),
    Case("watch-every-0s", lambda d: ["watch", "--every", "0s", "--storage", d], 2, r"--every '0s': .*positive"),
    Case("watch-every-negative", lambda d: ["watch", "--every=-5m", "--storage", d], 2, r"--every '-5m'"),
    Case("watch-every-nan", lambda d: ["watch", "--every", "nan", "--storage", d], 2, r"--every 'nan'"),
    Case("corpus-a-billion-utterances", lambda d: ["corpus", "--out", d / "c", "--utterances", "1000000000"], 2,
         r"--utterances 1000000000: at most 1,000,000", marker="c", timeout=60, own_process=True),
    Case("corpus-no-utterances", lambda d: ["corpus", "--out", d / "c", "--utterances", "0"], 2,
         r"argument --utterances: '0': must be at least 1", marker="c"),
    Case("train-zero-layers", lambda d: ["train", "--layers", "0", "--storage", d / "runs"], 2,
         r"argument --layers: '0': must be at least 1", marker="runs"),
    Case("train-set-zero-hidden", lambda d: ["train", "--set", "hidden=0", "--storage", d / "runs"], 2,
         r"training option hidden=0: 1 to \d+", marker="runs"),
    Case("train-set-bad-optimizer", lambda d: ["train", "--set", "optimizer=rmsprop", "--storage", d / "runs"], 2,
         r"optimizer='rmsprop': adam or sgd", marker="runs"),
    Case("report-study-outside-reports", lambda d: ["report", "--study", "../escape", "--storage", d], 2,
         r"argument --study: '\.\./escape': a name is", marker="data/escape"),
    Case("grid-study-outside-storage", lambda d: ["grid", "--study", "../../x", "--storage", d / "runs"], 2,
         r"argument --study", marker="runs"),
    # manifest fields of the wrong type: one line, not a traceback
    Case("manifest-num-targets-text", lambda d: ["corpus", "check", d / "kaldi" / "corpus.toml"], 2,
         r"field 'num_targets' must be int, not str 'many'", setup=lambda d: _with_corpus(d, num_targets='"many"')),
    Case("manifest-splits-not-a-table", lambda d: ["corpus", "check", d / "m.json"], 2,
         r"field 'splits' must be dict, not list",
         setup=lambda d: (d / "m.json").write_text(json.dumps({"phones": "p.txt", "num_targets": 3, "splits": []}))),
    Case("manifest-not-a-table", lambda d: ["corpus", "check", d / "m.json"], 2,
         r"a manifest is a table of fields, not a list", setup=lambda d: (d / "m.json").write_text("[1, 2]")),
    Case("manifest-not-utf8", lambda d: ["corpus", "check", d / "m.toml"], 2, r"not a valid TOML manifest",
         setup=lambda d: (d / "m.toml").write_bytes(b"name = \"\xff\xfe\"\n")),
    # corpus sources (gatelens corpus import) whose audio would run a command
    Case("import-ctm-with-a-piped-wav-scp", lambda d: ["corpus", "import", "--from", "ctm", d / "src" / "a.ctm",
                                                       "--out", d / "out"], 2,
         r"wav\.scp: recording r1: 'touch .*\|' is a Kaldi pipe or command", setup=lambda d: _ctm_source(d),
         marker=MARK),
    Case("import-lhotse-with-a-command-source", lambda d: ["corpus", "import", "--from", "lhotse", d / "src",
                                                           "--out", d / "out"], 2,
         r"recording r1: audio source of type 'command' is refused", setup=lambda d: _lhotse_source(d), marker=MARK),
    # lhotse reads a '.sph' file through sph2pipe in a shell: the file's name must never reach one
    Case("import-lhotse-with-a-shell-in-an-sph-name", lambda d: ["corpus", "import", "--from", "lhotse", d / "src",
                                                                 "--out", d / "out"], 2,
         r"utterance u\d", setup=lambda d: _lhotse_source(d, "file", f"{d}/a;touch {d / MARK};.sph"), marker=MARK,
         own_process=True),
    Case("import-lhotse-utterance-id-climbing-out", lambda d: ["corpus", "import", "--from", "lhotse", d / "src",
                                                               "--out", d / "out"], 2,
         r"utterance id '\.\./\.\./x'", setup=lambda d: _lhotse_source(d, "file", f"{d}/a.wav", "../../x")),
]


def _ctm_source(d: Path) -> None:
    (d / "src").mkdir()
    (d / "src" / "wav.scp").write_text(f"r1 touch {d / MARK} |\n")
    (d / "src" / "text").write_text("r1 A\n")
    (d / "src" / "a.ctm").write_text("r1 1 0.00 0.50 AH0\n")


def _lhotse_source(d: Path, kind: str = "command", source: str | None = None, utt_id: str = "u1") -> None:
    from lhotse import Recording, RecordingSet, SupervisionSegment, SupervisionSet
    from lhotse.audio import AudioSource
    from lhotse.supervision import AlignmentItem

    (d / "src").mkdir()
    rec = Recording("r1", [AudioSource(kind, [0], source or f"touch {d / MARK}")], 16000, 16000, 1.0)
    RecordingSet.from_recordings([rec]).to_file(d / "src" / "x_recordings.jsonl.gz")
    # three speakers, so that a split by speaker is made and the audio is reached
    sups = [SupervisionSegment(u, "r1", 0.0, 1.0, text="A", speaker=f"s{k}", alignment={"phone": [AlignmentItem("AH0", 0, 1)]})
            for k, u in enumerate((utt_id, "u2", "u3"))]
    SupervisionSet.from_segments(sups).to_file(d / "src" / "x_supervisions.jsonl.gz")
