"""Checkpoints that rebuild the model on their own: weights + config + corpus identity + code version.

One torch.save file holding only plain data (dicts, lists, strings, numbers, tensors), so it
loads with torch.load(weights_only=True) and needs none of the trainer's arguments:

    {"format": "gatelens-checkpoint", "format_version": 1,
     "config": ModelConfig as a dict, "state_dict": weights and the CMVN buffers (on CPU),
     "corpus": the corpus manifest's identity (targets, phone table, CMVN, ...),
     "code_version": {"package": "0.1.0", "git": "<sha>" or None}, "extra": {...} or None}

Writes are atomic (temp file in the same directory, fsync, os.replace): a reader sees the
old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from cluster.errors import InputError
from cluster.runtime import git_revision

from .acoustic import AcousticModel, ModelConfig, build_model

FORMAT = "gatelens-checkpoint"
FORMAT_VERSION = 1
MODEL_FILE = "model.pt"
# What a checkpoint may ask to be built: far beyond the paper's 6 x 512, well below what would
# exhaust a machine before its weights are even compared with the config.
MAX_LAYERS, MAX_HIDDEN, MAX_FEAT_DIM, MAX_CONTEXT, MAX_TARGETS = 64, 8192, 4096, 64, 1_000_000


class CheckpointError(InputError):
    """A checkpoint file that exists but cannot be used (truncated, corrupt, or not ours)."""


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint file says about itself, typed. ``extra`` is what the trainer attached:
    the run's stamps, the metrics of the report it came with, and the decoding graph."""

    path: str
    config: ModelConfig
    corpus: dict  # the training corpus's identity (phones, num_targets, CMVN, manifest hash, ...)
    code_version: dict
    extra: dict | None = None

    @property
    def stamps(self) -> dict:
        """The run's ``run.json`` content (config, seed, corpus, packages, git revision); {} if none."""
        return (self.extra or {}).get("stamps") or {}

    @property
    def metrics(self) -> dict:
        """The metrics reported with this checkpoint (an epoch's dev metrics, or the final test ones)."""
        return (self.extra or {}).get("metrics") or {}

    @property
    def is_final(self) -> bool:
        """The run's last report: best-on-dev weights scored on test."""
        return bool(self.metrics.get("final"))

    @property
    def decode_graph(self) -> dict | None:
        return (self.extra or {}).get("decode_graph")

    @property
    def trained_corpus(self) -> str | None:
        """The corpus path the run trained on, as the trainer resolved it."""
        return (self.stamps.get("config") or {}).get("corpus")

    @property
    def facts(self) -> dict:
        """arch, layers, hidden, residual: the columns the store keys checkpoints by."""
        c = self.config
        return {"arch": c.cell, "layers": c.layers, "hidden": c.hidden, "residual": bool(c.residual)}


def model_file(checkpoint: str | os.PathLike) -> Path:
    """A model file, or the checkpoint directory holding ``model.pt``."""
    p = Path(checkpoint)
    return p / MODEL_FILE if p.is_dir() else p


def file_digest(path: str | os.PathLike) -> str:
    """The first 10 hex digits of a checkpoint file's sha256 (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(model_file(path), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:10]


def checkpoint_id(path: str | os.PathLike, facts: dict) -> str:
    """A stable, readable id: <arch>-<layers>x<hidden>[-res]-<first 10 hex of the file's sha256>.
    The same file always gets the same id, so re-capturing it replaces its rows."""
    stem = f"{facts['arch']}-{facts['layers']}x{facts['hidden']}{'-res' if facts['residual'] else ''}"
    return f"{stem}-{file_digest(path)}"


def code_version() -> dict:
    """{"package": installed gatelens version or "unknown", "git": HEAD of this package's repo or None}."""
    try:
        package = importlib.metadata.version("gatelens")
    except importlib.metadata.PackageNotFoundError:
        package = "unknown"
    return {"package": package, "git": git_revision()}


def _plain(obj, where: str = "corpus_identity"):
    """obj as dicts/lists/str/numbers (numpy and tensors become lists), so weights_only loads it."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, dict):
        return {str(k): _plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return _plain(obj.tolist(), where)
    raise TypeError(f"{where}: cannot store a {type(obj).__name__} in a checkpoint")


def save_checkpoint(path, model: AcousticModel, corpus_identity: dict, extra: dict | None = None) -> Path:
    """Write model + config + corpus identity + code version to `path`, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "corpus": _plain(corpus_identity),
        "code_version": code_version(),
        "extra": _plain(extra, "extra"),
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable; not possible on every filesystem
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def _check_shapes(path: Path, config: ModelConfig, state) -> None:
    """The config within bounds and every weight of the shape it implies, before anything real is
    built: a file saying ``layers = 1000000`` must not make this process grow until killed. The
    expected shapes come from building the model on the meta device (no memory behind it)."""
    bounds = {"layers": MAX_LAYERS, "hidden": MAX_HIDDEN, "feat_dim": MAX_FEAT_DIM, "context": MAX_CONTEXT,
              "num_targets": MAX_TARGETS}
    for name, limit in bounds.items():
        value = getattr(config, name)
        if not isinstance(value, int) or not (0 if name == "context" else 1) <= value <= limit:
            raise CheckpointError(f"{path}: config {name}={value!r} is outside 1..{limit}; refused before building")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: state_dict is not a mapping of tensors")
    with torch.device("meta"):
        expected = build_model(config, torch.zeros(config.feat_dim), torch.ones(config.feat_dim)).state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the config ({config.cell}, {config.layers} x "
                              f"{config.hidden}): missing {missing[:3]}, unexpected {unexpected[:3]}")
    for name, t in expected.items():
        if tuple(state[name].shape) != tuple(t.shape):
            raise CheckpointError(f"{path}: weight {name} has shape {tuple(state[name].shape)}, the config "
                                  f"implies {tuple(t.shape)}")
        if state[name].is_floating_point() and not bool(torch.isfinite(state[name]).all()):
            raise CheckpointError(f"{path}: weight {name} holds NaN or Inf; the model cannot be analysed")


def load_checkpoint(path, map_location="cpu") -> tuple[AcousticModel, CheckpointMeta]:
    """(model, meta) from a checkpoint (a model file or a directory holding ``model.pt``).

    Raises FileNotFoundError for a missing file and CheckpointError, naming the file, for
    one that is truncated, corrupt or not a gatelens checkpoint.
    """
    path = model_file(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, EOF...: all mean "this file is unusable"
        raise CheckpointError(f"cannot load checkpoint {path} ({path.stat().st_size} bytes): truncated "
                              f"or not a checkpoint: {type(e).__name__}: {e}") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a gatelens checkpoint")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format_version {payload.get('format_version')!r}, "
                              f"this code reads {FORMAT_VERSION}")
    try:
        config = ModelConfig.from_dict(payload["config"])
        state = payload["state_dict"]
        _check_shapes(path, config, state)
        model = build_model(config, state["cmvn_mean"], state["cmvn_std"])
        model.load_state_dict(state)
    except CheckpointError:
        raise
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{path}: checkpoint does not rebuild a model: {type(e).__name__}: {e}") from None
    model.to(state["cmvn_mean"].device)
    meta = CheckpointMeta(str(path), config, payload["corpus"], payload["code_version"], payload["extra"])
    return model, meta
