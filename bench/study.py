"""What a study costs on this machine: minutes per trained model-epoch for each cell and depth, and
the wall time of the whole study, measured by training it (Ray Tune, as ``gatelens grid`` does).

The baseline, measured in the same run: the fused ``nn.LSTM`` model (``lstm_fused``) at the same
shape and depths, one epoch each; the ratio is our cell's minutes per epoch over the baseline's.

    .venv/bin/python bench/study.py --corpus data/corpus [--profile demo|study] [--seeds 0,1,2]

Runs go to a fresh temporary storage (``--storage`` keeps them). The demo profile takes minutes;
one seed of the study profile took 48 min on 2 cores (README).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import polars as pl

from cluster.grid import custom_grid, run_study
from cluster.runs import collect_results, iter_runs
from cluster.runtime import log_ray_to
from cluster.studies import PROFILES


def per_epoch(storage: str, study: str) -> pl.DataFrame:
    """cell, layers, runs, epochs (mean), minutes per model-epoch (mean over the runs' epochs)."""
    rows = []
    for run in iter_runs(storage, study):
        cfg = run.stamp.config
        dev = run.epochs().filter(pl.col("split") == "dev")
        for secs in dev["epoch_seconds"].to_list():
            rows.append({"cell": cfg["cell"], "layers": cfg["layers"], "run": run.name, "minutes": secs / 60})
    df = pl.DataFrame(rows)
    return (df.group_by("cell", "layers").agg(pl.col("run").n_unique().alias("runs"),
                                              (pl.len() / pl.col("run").n_unique()).alias("epochs"),
                                              pl.col("minutes").mean().alias("min_per_epoch"))
            .sort("cell", "layers"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--profile", default="demo", choices=sorted(PROFILES))
    ap.add_argument("--study", default="table1")
    ap.add_argument("--seeds", default=None, help="comma-separated (default: the profile's)")
    ap.add_argument("--storage", default=None, help="keep the runs here (default: a temporary folder)")
    args = ap.parse_args()
    seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else None
    storage = args.storage or tempfile.mkdtemp(prefix="gatelens-bench-study-")
    prof = PROFILES[args.profile]
    print(f"Ray's messages: {log_ray_to(Path(storage) / 'logs', 'bench-study')}", flush=True)
    try:
        t0 = time.perf_counter()
        configs, _ = run_study(args.study, args.profile, storage, corpus=args.corpus, seeds=seeds)
        wall = time.perf_counter() - t0
        depths = sorted({c.layers for c in configs})
        t1 = time.perf_counter()
        run_study("baseline", args.profile, storage, corpus=args.corpus, custom=custom_grid(["lstm_fused"], depths, [False]),
                  overrides={"epochs": 1}, seeds=(0,))
        base_wall = time.perf_counter() - t1
        ours, base = per_epoch(storage, args.study), per_epoch(storage, "baseline")
        results = collect_results(storage, args.study)
        print(f"{args.study} at profile {args.profile} ({prof.train}), seeds {sorted(set(results['seed']))}, "
              f"{os.cpu_count()} cores")
        print(f"{'cell':<10} {'layers':>6} {'runs':>4} {'epochs':>6} {'min/epoch':>9} {'nn.LSTM min/epoch':>17} {'ratio':>6}")
        for r in ours.iter_rows(named=True):
            b = base.filter(pl.col("layers") == r["layers"])["min_per_epoch"]
            ratio = r["min_per_epoch"] / b[0] if b.len() else float("nan")
            print(f"{r['cell']:<10} {r['layers']:>6} {r['runs']:>4} {r['epochs']:>6.1f} {r['min_per_epoch']:>9.2f} "
                  f"{b[0] if b.len() else float('nan'):>17.2f} {ratio:>6.2f}x")
        print(f"study total: {wall / 60:.1f} min wall for {len(configs)} runs "
              f"(baseline: {base_wall / 60:.1f} min for {len(depths)} one-epoch nn.LSTM runs)")
    finally:
        if not args.storage:
            shutil.rmtree(storage, ignore_errors=True)


if __name__ == "__main__":
    main()
