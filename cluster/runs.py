"""The training storage, read in one place: studies, their runs, and each run's final checkpoint.

Layout (what ``cluster/train.py`` and Ray Train write; ``cluster/grid.py`` chooses the names):

    <storage>/<study>/runs/<run>/
        run.json                  the run's stamps: config, seed, corpus, packages, git revision
        utterances.parquet        per test utterance: reference length, substitutions, insertions, deletions
        epochs.parquet            one row per epoch on dev, one final row on test (written last)
        checkpoint_NNNNNN/model.pt  one per report; the last is the final one (best-on-dev weights,
                                  scored on test: its metrics say ``final``)
    <storage>/<study>/tune/       Ray Tune's own experiment state

A run is *finished* when both ``run.json`` and ``epochs.parquet`` exist: the trainer writes the
first when it starts and the second, whole and renamed, only after the test scoring. Every reader
(the grid, results, the store's ingest, the analyses driver, the report, the watcher) uses
``RunDir`` and ``iter_runs`` rather than globbing paths itself.

Ray's ``CheckpointConfig(checkpoint_score_attribute=...)`` ranks checkpoints only for the
``Result`` of the process that ran ``fit``; later readers of the storage (the watcher, a report a
day later) see directories, so the final checkpoint is the last one, whose file says ``final``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterator

import polars as pl

from cluster.errors import InputError
from cluster.models.checkpoint import MODEL_FILE, CheckpointMeta, checkpoint_id, load_checkpoint

RUN_FILE = "run.json"
EPOCHS_FILE = "epochs.parquet"
UTTERANCES_FILE = "utterances.parquet"  # per scored utterance: ref_len, sub, ins, del (written before epochs)
RUNS = "runs"


def study_dir(storage: str | os.PathLike, study: str) -> Path:
    return Path(storage).resolve() / study


@dataclass(frozen=True)
class RunStamp:
    """``run.json``: what a run must remember to be reproduced."""

    config: dict  # the TrainConfig as a dict
    seed: int
    corpus: dict  # name, manifest_sha256, num_targets
    packages: dict
    git_revision: str | None
    python: str | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "RunStamp":
        return cls(config=d["config"], seed=d.get("seed", d["config"].get("seed")), corpus=d["corpus"],
                   packages=d.get("packages") or {}, git_revision=d.get("git_revision"), python=d.get("python"))

    def to_dict(self) -> dict:
        return {"config": self.config, "seed": self.seed, "corpus": self.corpus, "packages": self.packages,
                "git_revision": self.git_revision, "python": self.python}


@dataclass(frozen=True)
class FinalCheckpoint:
    """A run's final checkpoint: its file, store id and metadata."""

    path: Path  # model.pt
    checkpoint_id: str
    meta: CheckpointMeta

    @property
    def facts(self) -> dict:
        return self.meta.facts


@dataclass(frozen=True)
class RunDir:
    """One run of a study in the training storage."""

    study: str
    name: str
    path: Path

    @classmethod
    def of_checkpoint(cls, model_path: Path) -> "RunDir":
        """The run a ``checkpoint_*/model.pt`` belongs to (the watcher finds files, not runs)."""
        run = Path(model_path).resolve().parent.parent
        study = run.parent.parent.name if run.parent.name == RUNS else run.parent.name
        return cls(study, run.name, run)

    @property
    def run_id(self) -> str:
        """The store's key: run names repeat across studies (table1 and table3 share points)."""
        return f"{self.study}:{self.name}"

    @property
    def finished(self) -> bool:
        return (self.path / RUN_FILE).is_file() and (self.path / EPOCHS_FILE).is_file()

    @cached_property
    def stamp(self) -> RunStamp:
        try:
            return RunStamp.from_dict(json.loads((self.path / RUN_FILE).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(f"{self.path / RUN_FILE}: not a readable run stamp: {type(e).__name__}: {e}") from None

    def epochs(self) -> pl.DataFrame:
        return pl.read_parquet(self.path / EPOCHS_FILE)

    def utterance_errors(self) -> pl.DataFrame | None:
        """split, utt_id, ref_len, sub, ins, del of every scored utterance (None for runs trained
        before gatelens wrote them)."""
        path = self.path / UTTERANCES_FILE
        return pl.read_parquet(path) if path.is_file() else None

    def checkpoint_files(self) -> list[Path]:
        """Every reported checkpoint's model file, oldest first."""
        return sorted(d / MODEL_FILE for d in self.path.glob("checkpoint_*") if (d / MODEL_FILE).is_file())

    def final_checkpoint_id(self) -> str | None:
        """The store id of the run's last checkpoint file, from the run's stamp and the file's digest
        alone (no model is loaded: what the ingest of a whole study needs); None without checkpoints."""
        files = self.checkpoint_files()
        if not files:
            return None
        cfg = self.stamp.config
        facts = {"arch": cfg["cell"], "layers": cfg["layers"], "hidden": cfg["hidden"], "residual": bool(cfg["residual"])}
        return checkpoint_id(files[-1], facts)

    @cached_property
    def final_checkpoint(self) -> FinalCheckpoint:
        """The run's final report (loaded once: its metadata and its id)."""
        files = self.checkpoint_files()
        if not files:
            raise InputError(f"{self.path}: finished run without a checkpoint holding {MODEL_FILE}")
        _, meta = load_checkpoint(files[-1])
        if not meta.is_final:
            raise InputError(f"{files[-1]}: the run's last checkpoint is not its final (test) report")
        return FinalCheckpoint(files[-1], checkpoint_id(files[-1], meta.facts), meta)

    def results_row(self) -> dict:
        """The run's grid point and its scores: test (best-on-dev weights) and the best dev epoch."""
        cfg = self.stamp.config
        epochs = self.epochs()
        test = epochs.filter(pl.col("split") == "test").row(0, named=True)
        dev = epochs.filter(pl.col("split") == "dev")
        best = dev.sort("frame_acc", descending=True).row(0, named=True) if dev.height else {}
        return {
            "run": self.name, "cell": cfg["cell"], "layers": cfg["layers"], "hidden": cfg["hidden"],
            "residual": cfg["residual"], "lazy_layers": cfg["lazy_layers"] if cfg["cell"] == "lstm_lazy" else None,
            "precision": cfg["precision"], "seed": cfg["seed"], "epochs": dev.height,
            "best_epoch": best.get("epoch"), "dev_frame_acc": best.get("frame_acc"), "dev_per": best.get("per"),
            "test_frame_acc": test["frame_acc"], "test_per": test["per"], "test_frame_ce": test["frame_ce"],
            "git_revision": self.stamp.git_revision, "corpus": self.stamp.corpus["manifest_sha256"][:12],
        }


def iter_runs(storage: str | os.PathLike, study: str, finished: bool = True) -> Iterator[RunDir]:
    """The runs of a study in name order (only finished ones unless ``finished=False``)."""
    runs = study_dir(storage, study) / RUNS
    for path in sorted(runs.iterdir()) if runs.is_dir() else []:
        run = RunDir(study, path.name, path)
        if path.is_dir() and (run.finished or not finished):
            yield run


def collect_results(storage: str | os.PathLike, study: str) -> pl.DataFrame:
    """One row per finished run of ``study`` (``RunDir.results_row``); the paper's tables read it."""
    return pl.DataFrame([run.results_row() for run in iter_runs(storage, study)])


def studies_results(storage: str | os.PathLike, studies: list[str]) -> pl.DataFrame:
    """``collect_results`` of several studies, with a ``study`` column (empty when none finished)."""
    parts = [collect_results(storage, s).with_columns(pl.lit(s).alias("study")) for s in studies]
    parts = [p for p in parts if p.height]
    return pl.concat(parts, how="diagonal_relaxed") if parts else pl.DataFrame()


def final_checkpoint_ids(storage: str | os.PathLike, studies: list[str]) -> list[str]:
    """The store ids of the studies' final checkpoints, each once, in study and run order."""
    return list(dict.fromkeys(run.final_checkpoint.checkpoint_id for s in studies for run in iter_runs(storage, s)))
