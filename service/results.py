"""Trial results of a study: the paper's table on the terminal, and the runs into the store.

The rows themselves come from the runs (``cluster.runs.collect_results``)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from analyses.stats import over_seeds
from cluster.runs import RunDir, iter_runs

SYSTEM = {"lstm": "LSTM", "gru": "GRU", "lstm_lazy": "LSTM", "lstm_fused": "LSTM (nn.LSTM)"}


def _interval(r: dict, metric: str) -> str:
    """'11.08 [10.52, 11.64]' (test %, mean over seeds and its 95 % interval), or the mean alone."""
    mean, low, high = r[metric], r.get(f"{metric}_ci_low"), r.get(f"{metric}_ci_high")
    if low is None or low != low:
        return f"{100 * mean:6.2f}" + " " * 16
    return f"{100 * mean:6.2f} [{100 * low:6.2f}, {100 * high:6.2f}]"


def format_table(df: pl.DataFrame, study: str, per_seed: bool = False) -> str:
    """The paper's layout: Table 1 by system and depth, Table 2 baseline vs lazy update, Table 3
    baseline vs residual; PER and frame accuracy (test, %). A grid point trained with several seeds
    shows its mean over seeds with the 95 % interval (``analyses.stats``); ``per_seed`` lists
    every run instead."""
    if df.is_empty():
        return f"no finished runs for study {study!r}"
    runs = df.height
    if not per_seed:
        df = over_seeds(df)

    def cell(r: dict | None) -> str:
        return "      -        " if r is None else f"{100 * r['test_per']:6.2f} {100 * r['test_frame_acc']:6.2f}"

    def find(**kw) -> dict | None:
        sub = df
        for k, v in kw.items():
            sub = sub.filter(pl.col(k) == v)
        return sub.row(0, named=True) if sub.height else None

    lines = []
    if study == "table2":
        lines.append(f"{'Layers':>6}  {'Baseline PER% Acc%':>18}  {'Lazy Update PER% Acc%':>21}")
        for n in sorted(set(df["layers"])):
            lines.append(f"{n:>6}  {cell(find(cell='lstm', layers=n)):>18}  {cell(find(cell='lstm_lazy', layers=n)):>21}")
    elif study == "table3":
        lines.append(f"{'System':<6} {'Layers':>6}  {'Baseline PER% Acc%':>18}  {'Residual PER% Acc%':>18}")
        for c in ("lstm", "gru"):
            for n in sorted(set(df.filter(pl.col("cell") == c)["layers"])):
                lines.append(f"{SYSTEM[c]:<6} {n:>6}  {cell(find(cell=c, layers=n, residual=False)):>18}  "
                             f"{cell(find(cell=c, layers=n, residual=True)):>18}")
    elif per_seed:
        lines.append(f"{'System':<8} {'Layers':>6} {'Residual':>8} {'Seed':>4}  {'PER%':>6} {'Acc%':>6}  {'best epoch':>10}")
        for r in df.sort(["cell", "residual", "layers", "seed"]).iter_rows(named=True):
            name = SYSTEM.get(r["cell"], r["cell"]) + (" lazy" if r["cell"] == "lstm_lazy" else "")
            lines.append(f"{name:<8} {r['layers']:>6} {('yes' if r['residual'] else 'no'):>8} {r['seed']:>4}  "
                         f"{100 * r['test_per']:6.2f} {100 * r['test_frame_acc']:6.2f}  {r['best_epoch']!s:>10}")
    else:
        lines.append(f"{'System':<8} {'Layers':>6} {'Residual':>8} {'Seeds':>5}  {'PER% [95% interval]':<22}  "
                     f"{'Acc% [95% interval]':<22}")
        for r in df.sort(["cell", "residual", "layers"]).iter_rows(named=True):
            name = SYSTEM.get(r["cell"], r["cell"]) + (" lazy" if r["cell"] == "lstm_lazy" else "")
            lines.append(f"{name:<8} {r['layers']:>6} {('yes' if r['residual'] else 'no'):>8} {r['n_seeds']:>5}  "
                         f"{_interval(r, 'test_per'):<22}  {_interval(r, 'test_frame_acc'):<22}")
    what = "every run" if per_seed else "mean over seeds, Student's t 95 % interval (none with one seed)"
    lines.append(f"(test set, best-on-dev weights; PER from Viterbi decoding over a phone loop, SIL excluded; "
                 f"frame accuracy on the frame targets; {what}; {runs} runs)")
    return "\n".join(lines)


def run_rows(run: RunDir) -> tuple[dict, pl.DataFrame, pl.DataFrame | None]:
    """A finished run as store rows: its ``runs`` row, its ``epoch_metrics`` rows and its
    ``utterance_errors`` rows (None for runs trained before they were written)."""
    stamp = run.stamp
    cfg = stamp.config
    epochs = run.epochs()
    extra = [json.dumps({"train_frame_ce": r["train_frame_ce"], "train_frames_per_s": r["train_frames_per_s"]})
             for r in epochs.iter_rows(named=True)]
    rows = epochs.select(
        pl.lit(run.run_id).alias("run_id"), pl.col("epoch").cast(pl.Int32), "split", "frame_ce", "frame_acc",
        pl.lit(None, pl.Float64).alias("phone_acc"), "per", pl.col("frames").cast(pl.Int64),
        pl.col("epoch_seconds").alias("seconds"), "lr").with_columns(pl.Series("extra", extra))
    row = {"run_id": run.run_id, "arch": cfg["cell"], "layers": cfg["layers"], "hidden": cfg["hidden"],
           "residual": cfg["residual"], "seed": stamp.seed, "corpus_name": stamp.corpus["name"],
           "corpus_sha256": stamp.corpus["manifest_sha256"], "config": stamp.to_dict(), "status": "finished",
           "storage_path": str(run.path.resolve())}
    utts = run.utterance_errors()
    if utts is not None:
        utts = utts.with_columns(pl.lit(run.run_id).alias("run_id"),
                                 pl.lit(run.final_checkpoint_id()).alias("checkpoint_id"))
    return row, rows, utts


def ingest_study(store, storage: str | Path, study: str) -> int:
    """Write every finished run of ``study`` (and its epochs) into the store; returns the run count.
    Idempotent: a run's rows are replaced, never added twice."""
    n = 0
    for run in iter_runs(storage, study):
        store.ingest_run(*run_rows(run))
        n += 1
    return n
