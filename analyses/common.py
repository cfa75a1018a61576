"""What every analysis shares: reading a checkpoint's facts from the store, the summary rows an
analysis writes back, the single writer that records them, and figure helpers.

An analysis module (one per paper figure or table) has three parts:

  ``load(store, checkpoint_id, params) -> dict``   SQL on the store, in the driver process
  ``run(inputs, params, fig_dir) -> Output``      numbers + figures: a plain function that a Ray
                                                  task runs (``analyses/study.py``); it never
                                                  opens the store (DuckDB allows one writer)
  the driver then calls ``record(store, output)``: the only place analysis rows are written.

Summary rows go to one long table, ``analysis_summary``, keyed by (checkpoint_id, analysis,
analysis_version, label, layer, unit, phone_id, metric). ``layer`` 0 means the whole model,
``unit`` / ``phone_id`` -1 mean "all"; ``label`` says what else a row is about (an utterance, a
noise condition, a run; '' when nothing). Study-level rows (Tables 1-3) use the checkpoint_id
``study:<name>``. The store does not own this table yet, so ``record`` creates it (same DDL as
``SUMMARY_COLUMNS``) through the store's own write transaction.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files, drawn in Ray workers with no display

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from cluster.summaries import SUMMARY_VERSION, is_gru  # noqa: E402
from service.store import TABLES  # noqa: E402

DEFAULT_CAPTURE_VERSION = SUMMARY_VERSION  # which capture rows an analysis reads, unless told
SUMMARY_TABLE = "analysis_summary"
# declared with the store's other tables (service/store.py), so every store has it from the start
SUMMARY_COLUMNS, SUMMARY_KEY = TABLES[SUMMARY_TABLE]
_SUMMARY_SCHEMA = {"checkpoint_id": pl.String, "analysis": pl.String, "analysis_version": pl.Int32,
                   "label": pl.String, "layer": pl.Int32, "unit": pl.Int32, "phone_id": pl.Int32,
                   "metric": pl.String, "value": pl.Float64}


class AnalysisError(RuntimeError):
    """An analysis that cannot run as asked; the message names the checkpoint and file at fault."""


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
    tables: dict[str, pl.DataFrame] = field(default_factory=dict)  # rows of store tables it owns
    store_analysis: str | None = None  # the store's name for those tables ("trace", "noise")


def summary_frame(rows: list[dict], checkpoint_id: str, analysis: str, version: int) -> pl.DataFrame:
    """analysis_summary rows from dicts holding at least metric and value (the rest defaults)."""
    full = [{"checkpoint_id": checkpoint_id, "analysis": analysis, "analysis_version": version, "label": "",
             "layer": 0, "unit": -1, "phone_id": -1, **r} for r in rows]
    for r in full:
        v = r["value"]
        r["value"] = None if v is None else float(v)
    return pl.DataFrame(full, schema=_SUMMARY_SCHEMA)


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


def has_relation(store, name: str) -> bool:
    """Whether the store holds a table or view of that name (the sample view and the summary
    table appear only once something was written to them)."""
    df = store.query("SELECT count(*) AS n FROM (SELECT table_name FROM duckdb_tables() UNION ALL "
                     "SELECT view_name FROM duckdb_views()) WHERE table_name = ?", [name])
    return bool(df["n"][0])


def read_summary(store, analysis: str | None = None, checkpoint_ids: list[str] | None = None,
                 metric: str | None = None) -> pl.DataFrame:
    """analysis_summary rows (empty, with the columns, when nothing was recorded yet)."""
    if not store.path.is_file() or not has_relation(store, SUMMARY_TABLE):
        return pl.DataFrame(schema=_SUMMARY_SCHEMA)
    where, args = [], []
    if analysis is not None:
        where.append("analysis = ?")
        args.append(analysis)
    if metric is not None:
        where.append("metric = ?")
        args.append(metric)
    if checkpoint_ids is not None:
        if not checkpoint_ids:
            return pl.DataFrame(schema=_SUMMARY_SCHEMA)
        where.append(f"checkpoint_id IN ({', '.join('?' for _ in checkpoint_ids)})")
        args += list(checkpoint_ids)
    sql = f"SELECT * FROM {SUMMARY_TABLE}" + (" WHERE " + " AND ".join(where) if where else "")
    return store.query(sql + " ORDER BY ALL", args)


# ---------------------------------------------------------------------------------------------
# The single writer


def record(store, out: Output) -> dict[str, int]:
    """Write an analysis's rows (replacing its earlier rows of the same version) and log it
    finished with its figures. Runs in the driver only: the store has one writer."""
    s = out.summary
    bad = s.filter((pl.col("checkpoint_id") != out.checkpoint_id) | (pl.col("analysis") != out.analysis)
                   | (pl.col("analysis_version") != out.version))
    dup = s.select(SUMMARY_KEY).is_duplicated()
    if bad.height or dup.any():
        raise AnalysisError(f"{out.analysis} of checkpoint {out.checkpoint_id}: summary rows name another "
                            f"checkpoint/analysis or repeat a key (e.g. {s.filter(dup).row(0) if dup.any() else bad.row(0)})")
    written = {}
    if out.tables:  # the store's own tables (traces, noise_impact): its ingest checks and logs them
        written.update(store.ingest_analysis(out.checkpoint_id, out.store_analysis, out.version, out.tables,
                                             params=out.params))
    with store.transaction() as con:
        con.execute(f"DELETE FROM {SUMMARY_TABLE} WHERE checkpoint_id = ? AND analysis = ? AND analysis_version = ?",
                    [out.checkpoint_id, out.analysis, out.version])
        if s.height:
            con.register("incoming_summary", s.to_arrow())
            try:
                con.execute(f"INSERT INTO {SUMMARY_TABLE} BY NAME SELECT * FROM incoming_summary")
            finally:
                con.unregister("incoming_summary")
    written[SUMMARY_TABLE] = s.height
    store.log_finished(out.checkpoint_id, out.analysis, out.version,
                       figure_paths=[f.path for f in out.figures], rows=sum(written.values()))
    return written


# ---------------------------------------------------------------------------------------------
# Small numeric helpers shared by analyses and claims


def slope(y) -> float:
    """Least-squares slope of y over 1, 2, ..., n (NaN for fewer than two points): "falls with
    depth" is slope < 0, which uses every layer rather than only the first and the last."""
    y = np.asarray(y, dtype=np.float64)
    if y.size < 2 or not np.all(np.isfinite(y)):
        return float("nan")
    x = np.arange(1, y.size + 1, dtype=np.float64)
    return float(np.polyfit(x, y, 1)[0])


def family(arch: str) -> str:
    """'gru' or 'lstm' (lstm, lstm_lazy, lstm_fused) for choosing the paper's rules."""
    return "gru" if is_gru(arch) else "lstm"


def histogram_quantiles(counts: np.ndarray, lo: float, hi: float, underflow: int, overflow: int,
                        qs=(0.05, 0.5, 0.95)) -> list[float]:
    """Quantiles of a fixed-bin histogram, values beyond [lo, hi] clamped to lo / hi (as the
    display clips them), interpolated linearly inside a bin."""
    counts = np.asarray(counts, dtype=np.float64)
    mass = np.concatenate([[underflow], counts, [overflow]])
    edges = np.linspace(lo, hi, len(counts) + 1)
    left = np.concatenate([[lo], edges[:-1], [hi]])
    right = np.concatenate([[lo], edges[1:], [hi]])
    total = mass.sum()
    if total == 0:
        return [float("nan")] * len(qs)
    cum = np.cumsum(mass)
    out = []
    for q in qs:
        k = min(int(np.searchsorted(cum, q * total, side="left")), len(mass) - 1)
        before = cum[k] - mass[k]
        frac = 0.0 if mass[k] == 0 else (q * total - before) / mass[k]
        out.append(float(left[k] + frac * (right[k] - left[k])))
    return out


# ---------------------------------------------------------------------------------------------
# Figures


def figure_path(fig_dir: str | os.PathLike, checkpoint_id: str, name: str) -> Path:
    p = Path(fig_dir) / checkpoint_id / name
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def save(fig, path: Path, title: str) -> Figure:
    """Write the figure as PNG (written whole, then renamed: a reader never sees half a file)."""
    import matplotlib.pyplot as plt

    panels = [ax.get_title() for ax in fig.axes if ax.get_label() != "<colorbar>"]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return Figure(str(path.resolve()), panels, title)


def grid(n: int, cols: int = 2, size=(5.0, 3.4)):
    """A figure of n panels on a grid; unused cells removed. Returns (fig, [axes])."""
    import matplotlib.pyplot as plt

    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        fig.delaxes(ax)
    return fig, flat[:n]
