"""What every analysis shares: its declaration, the narrow reader it reads the store through,
the summary rows it hands back, and figure helpers.

An analysis module (one per paper figure or table) declares ``ANALYSIS = Analysis(...)``: name,
version, scope (one checkpoint, or a whole study), the paper's figure it draws and the files it
writes, its parameter dataclass, the tables it owns, and two functions:

  ``load(reader, subject, params) -> dict``   SQL through a ``StoreReader`` (or the study's runs),
                                              in the driver process
  ``run(inputs, params, fig_dir) -> Output``  numbers + figures: a plain function that a Ray task
                                              runs; it never opens the store (DuckDB allows one
                                              writer)

``analyses/registry.py`` finds every such module; the study driver, the watcher and the report
read the registry, and the store's single writer (``service/``) ingests each ``Output`` in one
transaction: its table rows, its summary rows and its log entry.

Summary rows go to one long table, ``analysis_summary``, keyed by (checkpoint_id, analysis,
analysis_version, label, layer, unit, phone_id, metric). ``layer`` 0 means the whole model,
``unit`` / ``phone_id`` -1 mean "all"; ``label`` says what else a row is about (an utterance, a
noise condition, a run; '' when nothing). Study-level rows (Tables 1-3) use the checkpoint_id
``study:<name>``.
"""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Protocol

import matplotlib

matplotlib.use("Agg")  # figures are files, drawn in Ray workers with no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from cluster.errors import InputError  # noqa: E402
from cluster.summaries import SUMMARY_VERSION, is_gru  # noqa: E402
from cluster.tables import ANALYSIS_SUMMARY as SUMMARY, Table  # noqa: E402

DEFAULT_CAPTURE_VERSION = SUMMARY_VERSION  # which capture rows an analysis reads, unless told
SUMMARY_TABLE = SUMMARY.name
CHECKPOINT, STUDY = "checkpoint", "study"  # an analysis's scope


class StoreReader(Protocol):
    """All an analysis may do with the store: read it. (``service.store.Store`` is one.)"""

    path: Path

    def query(self, sql: str, params: list | None = None) -> pl.DataFrame: ...

    def has_relation(self, name: str) -> bool: ...


@dataclass(frozen=True)
class StudyRef:
    """The subject of a study-scope analysis: a study's runs in the training storage."""

    storage: str
    study: str

    @property
    def subject_id(self) -> str:
        return f"study:{self.study}"


@dataclass(frozen=True)
class FigureSpec:
    file: str  # the PNG's name under <fig_dir>/<checkpoint_id>/ ({study}- prefixed for a study)
    paper: str  # the paper's figure or table, e.g. "Fig. 3"
    title: str  # what it shows (the report's section title)


@dataclass(frozen=True)
class Analysis:
    """One analysis, declared by its module as ``ANALYSIS``; see the module docstring."""

    name: str
    version: int
    scope: str  # CHECKPOINT or STUDY
    order: int  # the paper's order (the report's sections follow it)
    params: type
    load: Callable
    run: Callable
    figures: tuple[FigureSpec, ...] = ()
    tables: tuple[Table, ...] = ()  # store tables whose rows only this analysis writes
    # analyses of one checkpoint with the same ``shares`` run in one task, so that what they
    # compute alike (through ``shared``) is computed once: the noisy passes of Fig. 8 and unit memory
    shares: str = ""
    # CPUs its task claims (at most the cluster's): a number, or a function of the inputs ``load``
    # read; ``task_cpus()`` tells the analysis, which may run that many threads (the unit
    # ablation's layers at large shapes, the costliest work of a checkpoint)
    cpus: int | Callable[[dict], int] = 1

    def cpus_for(self, inputs: dict) -> int:
        return max(1, int(self.cpus(inputs) if callable(self.cpus) else self.cpus))

    def __post_init__(self):
        if self.scope not in (CHECKPOINT, STUDY):
            raise ValueError(f"analysis {self.name}: scope {self.scope!r}")


class AnalysisError(InputError):
    """An analysis that cannot run as asked; the message names the checkpoint and file at fault."""


# ---------------------------------------------------------------------------------------------
# Work shared by the analyses of one task

_SHARED: ContextVar[dict | None] = ContextVar("gatelens_shared", default=None)
_CPUS: ContextVar[int] = ContextVar("gatelens_task_cpus", default=1)


@contextmanager
def task_cpus_set(n: int):
    """Inside it, ``task_cpus()`` is n: the CPUs the running task holds."""
    token = _CPUS.set(max(1, int(n)))
    try:
        yield
    finally:
        _CPUS.reset(token)


def task_cpus() -> int:
    """The CPUs the running analysis's task holds (1 outside a task that says otherwise)."""
    return _CPUS.get()


@contextmanager
def sharing():
    """Inside it, ``shared`` keeps what it computed, for the next analysis of the same task."""
    token = _SHARED.set({})
    try:
        yield
    finally:
        _SHARED.reset(token)


def shared(key, make: Callable):
    """``make()``, computed once per ``key`` inside ``sharing()`` (every time outside it). What it
    returns is handed to each analysis alike: they must not change it."""
    cache = _SHARED.get()
    if cache is None:
        return make()
    if key not in cache:
        cache[key] = make()
    return cache[key]


# ---------------------------------------------------------------------------------------------
# Parameters and outputs


class Params:
    """Mixin for an analysis's parameter dataclass: built from a dict, unknown keys refused."""

    @classmethod
    def from_dict(cls, d: dict | None):
        d = dict(d or {})
        known = {f.name: f for f in fields(cls)}
        unknown = set(d) - set(known)
        if unknown:
            raise AnalysisError(f"{cls.__module__}: unknown parameter(s) {sorted(unknown)} (known: {sorted(known)})")
        return cls(**d)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Figure:
    path: str
    panels: list[str]  # panel titles, in drawing order (tests check them)
    title: str = ""  # the paper's figure it corresponds to, e.g. "Fig. 3"


@dataclass
class Output:
    """What one analysis of one checkpoint produced, handed from the Ray task to the writer."""

    analysis: str
    version: int
    checkpoint_id: str
    summary: pl.DataFrame  # analysis_summary rows
    figures: list[Figure] = field(default_factory=list)
    params: dict = field(default_factory=dict)
    tables: dict[str, pl.DataFrame] = field(default_factory=dict)  # rows of the store tables it owns


def summary_frame(rows: list[dict], checkpoint_id: str, analysis: str, version: int) -> pl.DataFrame:
    """analysis_summary rows from dicts holding at least metric and value (the rest defaults)."""
    full = [{"checkpoint_id": checkpoint_id, "analysis": analysis, "analysis_version": version, "label": "",
             "layer": 0, "unit": -1, "phone_id": -1, **r} for r in rows]
    for r in full:
        v = r["value"]
        r["value"] = None if v is None else float(v)
    return pl.DataFrame(full, schema=SUMMARY.schema)


# ---------------------------------------------------------------------------------------------
# Reading the store


def checkpoint_info(store, checkpoint_id: str) -> dict:
    """The checkpoints row (arch, layers, hidden, residual, path, ...) of a stored checkpoint."""
    df = store.query("SELECT * FROM checkpoints WHERE checkpoint_id = ?", [checkpoint_id])
    if df.height == 0:
        raise AnalysisError(f"{store.path}: no checkpoint {checkpoint_id!r} in the store "
                            f"(gatelens capture CHECKPOINT stores one)")
    return df.row(0, named=True)


def corpus_for(store, checkpoint_id: str, explicit: str | None = None) -> str | None:
    """The corpus to run a checkpoint on: the one given, else the one its capture used (logged
    with the capture), else None (the checkpoint's own training corpus, from its stamps)."""
    if explicit:
        return explicit
    df = store.query("SELECT params FROM analyses WHERE checkpoint_id = ? AND analysis = 'capture' "
                     "AND status = 'finished' ORDER BY analysis_version DESC LIMIT 1", [checkpoint_id])
    if df.height and df["params"][0]:
        return json.loads(df["params"][0]).get("corpus")
    return None


def require_rows(df: pl.DataFrame, store, checkpoint_id: str, what: str, version: int) -> pl.DataFrame:
    if df.height == 0:
        raise AnalysisError(f"{store.path}: checkpoint {checkpoint_id} has no {what} at capture version "
                            f"{version} (run gatelens capture on it first)")
    return df


def read_summary(store, analysis: str | None = None, checkpoint_ids: list[str] | None = None,
                 metric: str | None = None, version: int | None = None) -> pl.DataFrame:
    """analysis_summary rows (empty, with the columns, when nothing was recorded yet) of one
    version per (checkpoint, analysis): ``version`` if given, else the latest recorded. Rows of
    two versions are never mixed: after a version bump an old row means something else."""
    if not store.path.is_file() or not store.has_relation(SUMMARY_TABLE):
        return SUMMARY.empty()
    where, args = [], []
    if analysis is not None:
        where.append("analysis = ?")
        args.append(analysis)
    if metric is not None:
        where.append("metric = ?")
        args.append(metric)
    if version is not None:
        where.append("analysis_version = ?")
        args.append(int(version))
    if checkpoint_ids is not None:
        if not checkpoint_ids:
            return SUMMARY.empty()
        where.append(f"checkpoint_id IN ({', '.join('?' for _ in checkpoint_ids)})")
        args += list(checkpoint_ids)
    sql = f"SELECT * FROM {SUMMARY_TABLE}" + (" WHERE " + " AND ".join(where) if where else "")
    if version is None:
        sql += " QUALIFY analysis_version = max(analysis_version) OVER (PARTITION BY checkpoint_id, analysis)"
    return store.query(sql + " ORDER BY ALL", args)


# ---------------------------------------------------------------------------------------------
# Small numeric helpers shared by analyses and claims


def slope(y, x=None) -> float:
    """Least-squares slope of y over x (default 1, 2, ..., n; NaN for fewer than two points or
    one x): "falls with depth" is slope < 0, which uses every layer rather than only the first and
    the last. Pass the layer numbers as x when a layer may be missing."""
    y = np.asarray(y, dtype=np.float64)
    x = np.arange(1, y.size + 1, dtype=np.float64) if x is None else np.asarray(x, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"slope: {x.size} x values for {y.size} y values")
    if y.size < 2 or not np.all(np.isfinite(y)) or np.ptp(x) == 0:
        return float("nan")
    return float(np.polyfit(x, y, 1)[0])


def family(arch: str) -> str:
    """'gru' or 'lstm' (lstm, lstm_lazy, lstm_fused) for choosing the paper's rules."""
    return "gru" if is_gru(arch) else "lstm"


# ---------------------------------------------------------------------------------------------
# Figures


def figure_path(fig_dir: str | os.PathLike, checkpoint_id: str, name: str) -> Path:
    p = Path(fig_dir) / checkpoint_id / name
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def save(fig, path: Path, title: str) -> Figure:
    """Write the figure as PNG (written whole, then renamed: a reader never sees half a file)."""
    panels = [ax.get_title() for ax in fig.axes if ax.get_label() != "<colorbar>"]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return Figure(str(path.resolve()), panels, title)


def grid(n: int, cols: int = 2, size=(5.0, 3.4)):
    """A figure of n panels on a grid; unused cells removed. Returns (fig, [axes])."""
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        fig.delaxes(ax)
    return fig, flat[:n]
