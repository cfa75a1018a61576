"""Trial results of a study, as the paper's tables (system, layers, PER, frame accuracy)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from cluster.grid import study_dir
from cluster.train import EPOCHS_FILE, RUN_FILE


def collect(storage: str | Path, study: str) -> pl.DataFrame:
    """One row per finished run of ``study``: its grid point and its test scores (best-on-dev weights)."""
    runs = study_dir(storage, study) / "runs"
    rows = []
    for run in sorted(runs.glob("*")) if runs.exists() else []:
        if not (run / EPOCHS_FILE).exists() or not (run / RUN_FILE).exists():
            continue  # unfinished: no final test row yet
        stamp = json.loads((run / RUN_FILE).read_text())
        cfg = stamp["config"]
        epochs = pl.read_parquet(run / EPOCHS_FILE)
        test = epochs.filter(pl.col("split") == "test").row(0, named=True)
        dev = epochs.filter(pl.col("split") == "dev")
        best = dev.sort("frame_acc", descending=True).row(0, named=True) if dev.height else {}
        rows.append({
            "run": run.name, "cell": cfg["cell"], "layers": cfg["layers"], "hidden": cfg["hidden"],
            "residual": cfg["residual"], "lazy_layers": cfg["lazy_layers"] if cfg["cell"] == "lstm_lazy" else None,
            "precision": cfg["precision"], "seed": cfg["seed"], "epochs": dev.height,
            "best_epoch": best.get("epoch"), "dev_frame_acc": best.get("frame_acc"), "dev_per": best.get("per"),
            "test_frame_acc": test["frame_acc"], "test_per": test["per"], "test_frame_ce": test["frame_ce"],
            "git_revision": stamp.get("git_revision"), "corpus": stamp["corpus"]["manifest_sha256"][:12],
        })
    return pl.DataFrame(rows)


SYSTEM = {"lstm": "LSTM", "gru": "GRU", "lstm_lazy": "LSTM", "lstm_fused": "LSTM (nn.LSTM)"}


def format_table(df: pl.DataFrame, study: str) -> str:
    """The paper's layout: Table 1 by system and depth, Table 2 baseline vs lazy update, Table 3
    baseline vs residual; PER and frame accuracy (test, %) per cell."""
    if df.is_empty():
        return f"no finished runs for study {study!r}"

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
    else:
        lines.append(f"{'System':<8} {'Layers':>6} {'Residual':>8}  {'PER%':>6} {'Acc%':>6}  {'best epoch':>10}")
        for r in df.sort(["cell", "residual", "layers"]).iter_rows(named=True):
            name = SYSTEM.get(r["cell"], r["cell"]) + (" lazy" if r["cell"] == "lstm_lazy" else "")
            lines.append(f"{name:<8} {r['layers']:>6} {('yes' if r['residual'] else 'no'):>8}  "
                         f"{100 * r['test_per']:6.2f} {100 * r['test_frame_acc']:6.2f}  {r['best_epoch']!s:>10}")
    lines.append(f"(test set, best-on-dev weights; PER from Viterbi decoding over a phone loop, SIL excluded; "
                 f"frame accuracy on the frame targets; {df.height} runs)")
    return "\n".join(lines)


def run_rows(run_dir: Path, study: str) -> tuple[dict, pl.DataFrame]:
    """A finished run as store rows: its ``runs`` row and its ``epoch_metrics`` rows."""
    stamp = json.loads((run_dir / RUN_FILE).read_text())
    cfg = stamp["config"]
    run_id = f"{study}:{run_dir.name}"  # run names repeat across studies (table1 and table3 share points)
    epochs = pl.read_parquet(run_dir / EPOCHS_FILE)
    extra = [json.dumps({"train_frame_ce": r["train_frame_ce"], "train_frames_per_s": r["train_frames_per_s"]})
             for r in epochs.iter_rows(named=True)]
    rows = epochs.select(
        pl.lit(run_id).alias("run_id"), pl.col("epoch").cast(pl.Int32), "split", "frame_ce", "frame_acc",
        pl.lit(None, pl.Float64).alias("phone_acc"), "per", pl.col("frames").cast(pl.Int64),
        pl.col("epoch_seconds").alias("seconds"), "lr").with_columns(pl.Series("extra", extra))
    run = {"run_id": run_id, "arch": cfg["cell"], "layers": cfg["layers"], "hidden": cfg["hidden"],
           "residual": cfg["residual"], "corpus_name": stamp["corpus"]["name"],
           "corpus_sha256": stamp["corpus"]["manifest_sha256"], "config": stamp, "status": "finished",
           "storage_path": str(run_dir.resolve())}
    return run, rows


def ingest_study(store, storage: str | Path, study: str) -> int:
    """Write every finished run of ``study`` (and its epochs) into the store; returns the run count.
    Idempotent: a run's rows are replaced, never added twice."""
    runs = study_dir(storage, study) / "runs"
    n = 0
    for run_dir in sorted(runs.glob("*")) if runs.exists() else []:
        if (run_dir / EPOCHS_FILE).exists() and (run_dir / RUN_FILE).exists():
            store.ingest_run(*run_rows(run_dir, study))
            n += 1
    return n
