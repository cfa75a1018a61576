"""Tables 1-3: test phone error rate and frame accuracy by cell, depth, lazy update and residual
shortcuts (Sec. 3.2, 5.1, 5.2), from a study's trial results.

The trial results are each run's ``run.json`` and ``epochs.parquet`` (``cluster.runs.collect_results``:
the test row scores the best-on-dev weights). The paper reports WER from Kaldi decoding; we
report PER from our phone-loop decoder and frame accuracy on the frame targets.

- Table 1 (LSTM vs GRU by depth): the plain runs (no residual, no lazy update).
- Table 2 (LSTM without / with lazy cell update): per depth, ``lstm`` against ``lstm_lazy``.
- Table 3 (without / with residual shortcuts): per cell and depth.
A table appears when the study holds at least one run for its comparison.

Summary rows (checkpoint_id ``study:<name>``, label = run name, layer 0): layers, residual, lazy,
test_per, test_frame_acc, dev_frame_acc.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from analyses.common import (STUDY, Analysis, FigureSpec, Output, Params, StudyRef, figure_path, grid, save,
                             summary_frame)
from analyses.stats import over_seeds
from cluster.runs import collect_results

NAME = "comparisons"
VERSION = 1
FIGURE = FigureSpec("tables01-03_comparisons.png", "Tables 1-3", "Error by depth, per cell and variant")
SYSTEM = {"lstm": "LSTM", "gru": "GRU", "lstm_lazy": "LSTM lazy", "lstm_fused": "LSTM (nn.LSTM)"}


@dataclass
class ComparisonParams(Params):
    storage: str | None = None  # where the study's runs are (recorded with the analysis)


@dataclass
class Table:
    """A table in the paper's layout: a title, header rows (cells may span columns: (text, span)),
    and body rows of strings."""

    name: str  # "Table 1"
    title: str
    header: list[list[tuple[str, int]]]
    rows: list[list[str]] = field(default_factory=list)


def study_id(study: str) -> str:
    return StudyRef("", study).subject_id


def load(reader, ref: StudyRef, params: ComparisonParams) -> dict:
    """The study's trial results, from its runs (the store is not needed)."""
    return {"study": ref.study, "results": collect_results(ref.storage, ref.study)}


def _pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * v:.2f}"


def _find(df: pl.DataFrame, **kw) -> dict | None:
    for k, v in kw.items():
        df = df.filter(pl.col(k) == v)
    return df.row(0, named=True) if df.height else None


def _cell(r: dict | None, metric: str) -> str:
    """A table cell: the mean over seeds, +- the half-width of its 95 % interval when there are
    several seeds."""
    if r is None:
        return "-"
    mean, low, high = r[metric], r.get(f"{metric}_ci_low"), r.get(f"{metric}_ci_high")
    if r.get("n_seeds", 1) > 1 and low is not None and np.isfinite(low):
        return f"{_pct(mean)} +- {100 * (high - low) / 2:.2f}"
    return _pct(mean)


def paper_tables(df: pl.DataFrame) -> list[Table]:
    """Tables 1-3 from collected results (the ones the runs allow); each cell is a grid point's
    mean over its seeds (``analyses.stats.over_seeds``)."""
    if df.is_empty():
        return []
    if "seed" in df.columns:
        df = over_seeds(df)
    tables = []
    plain = df.filter(~pl.col("residual") & (pl.col("cell") != "lstm_lazy"))
    if plain.height:
        t = Table("Table 1", "Performance of LSTM and GRU systems (test set)",
                  [[("System", 1), ("Recurrent layers", 1), ("PER %", 1), ("Frame acc. %", 1)]])
        for cell in [c for c in SYSTEM if c in set(plain["cell"])]:
            for n in sorted(set(plain.filter(pl.col("cell") == cell)["layers"])):
                r = _find(plain, cell=cell, layers=n)
                t.rows.append([SYSTEM[cell], str(n), _cell(r, "test_per"), _cell(r, "test_frame_acc")])
        tables.append(t)
    lazy = df.filter(~pl.col("residual") & pl.col("cell").is_in(["lstm", "lstm_lazy"]))
    if "lstm_lazy" in set(lazy["cell"]):
        t = Table("Table 2", "Performance of LSTM without / with lazy cell update (test set)",
                  [[("Recurrent layers", 1), ("Baseline", 2), ("Lazy update", 2)],
                   [("", 1), ("PER %", 1), ("Acc. %", 1), ("PER %", 1), ("Acc. %", 1)]])
        for n in sorted(set(lazy["layers"])):
            b, z = _find(lazy, cell="lstm", layers=n), _find(lazy, cell="lstm_lazy", layers=n)
            t.rows.append([str(n)] + [_cell(r, k) for r in (b, z) for k in ("test_per", "test_frame_acc")])
        tables.append(t)
    if df["residual"].any():
        t = Table("Table 3", "Performance of LSTM / GRU without / with residual shortcuts (test set)",
                  [[("System", 1), ("Recurrent layers", 1), ("Baseline", 2), ("Residual learning", 2)],
                   [("", 1), ("", 1), ("PER %", 1), ("Acc. %", 1), ("PER %", 1), ("Acc. %", 1)]])
        res = df.filter(pl.col("cell") != "lstm_lazy")
        for cell in [c for c in SYSTEM if c in set(res.filter(pl.col("residual"))["cell"])]:
            for n in sorted(set(res.filter((pl.col("cell") == cell) & pl.col("residual"))["layers"])):
                b, r_ = _find(res, cell=cell, layers=n, residual=False), _find(res, cell=cell, layers=n, residual=True)
                t.rows.append([SYSTEM[cell], str(n)] + [_cell(r, k) for r in (b, r_)
                                                        for k in ("test_per", "test_frame_acc")])
        tables.append(t)
    return tables


def run(inputs: dict, params: ComparisonParams, fig_dir) -> Output:
    study, df = inputs["study"], inputs["results"]
    sid = study_id(study)
    rows = []
    for r in df.iter_rows(named=True):
        rows += [{"label": r["run"], "metric": m, "value": v} for m, v in (
            ("layers", r["layers"]), ("residual", float(bool(r["residual"]))), ("lazy", float(r["cell"] == "lstm_lazy")),
            ("test_per", r["test_per"]), ("test_frame_acc", r["test_frame_acc"]), ("dev_frame_acc", r["dev_frame_acc"]))]
    fig, axes = grid(2, cols=2, size=(5.0, 3.4))
    for ax, (key, what) in zip(axes, (("test_per", "test PER %"), ("test_frame_acc", "test frame accuracy %"))):
        if df.height:
            _by_depth(ax, df, key)
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("recurrent layers")
        ax.set_ylabel(what)
        ax.set_title(what + " by depth", fontsize=9)
    fig.suptitle(f"{FIGURE.paper}: study {study} ({df.height} runs)", fontsize=9)
    fig.tight_layout()
    figure = save(fig, figure_path(fig_dir, "study", f"{study}-{FIGURE.file}"), FIGURE.paper)
    return Output(NAME, VERSION, sid, summary_frame(rows, sid, NAME, VERSION), [figure], params.to_dict())


def _by_depth(ax, df: pl.DataFrame, key: str) -> None:
    """Per system (cell, residual): each grid point's mean over seeds joined by a line, its 95 %
    interval over seeds as an error bar (none with one seed), and every seed's value as a point,
    so that the line is never a zig-zag through single seeds."""
    points = over_seeds(df, metrics=(key,))
    for k, ((cell, residual), sub) in enumerate(points.sort("layers").group_by("cell", "residual", maintain_order=True)):
        colour = f"C{k}"
        x = sub["layers"].to_numpy().astype(float)
        mean = 100 * sub[key].to_numpy()
        low, high = 100 * sub[f"{key}_ci_low"].to_numpy(), 100 * sub[f"{key}_ci_high"].to_numpy()
        err = np.where(np.isfinite(low), [mean - low, high - mean], 0.0)
        label = SYSTEM.get(cell, cell) + (" + residual" if residual else "")
        ax.errorbar(x, mean, yerr=err, fmt="o-", color=colour, capsize=3, label=f"{label} (mean, 95 % CI)")
        seeds = df.filter((pl.col("cell") == cell) & (pl.col("residual") == residual))
        jitter = 0.06 * (k - 1)
        ax.scatter(seeds["layers"].to_numpy() + jitter, 100 * seeds[key].to_numpy(), s=10, color=colour, alpha=0.5,
                   marker="x")


ANALYSIS = Analysis(NAME, VERSION, STUDY, order=100, params=ComparisonParams, load=load, run=run, figures=(FIGURE,))
