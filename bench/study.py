"""What a study costs on this machine: minutes per trained model-epoch for each cell and depth, and
the wall time of the whole study, measured by training it (Ray Tune, as ``gatelens grid`` does).

The baseline, measured in the same run: the fused ``nn.LSTM`` model (``lstm_fused``) at the same
shape and depths, one epoch each; the ratio is our cell's minutes per epoch over the baseline's.

    .venv/bin/python bench/study.py --corpus data/corpus [--profile demo|study] [--seeds 0,1,2]

Runs go to a fresh temporary storage (``--storage`` keeps them). The demo profile takes minutes;
one seed of the study profile took 48 min on 2 cores (README).

Training modes (``--modes 0,20,40``: chunk_width 0 = whole utterances, n = carried-state streams in
windows of n frames): every mode trains each ``--cells`` x ``--layers`` point for ``--epochs`` epochs
(early stopping off) in one Tune grid, modes interleaved so the machine's load falls on all alike;
it prints dev frame accuracy against wall minutes (training + dev scoring, start-up excluded) per
mode, training frames per second, and the minutes each mode takes to reach the best dev accuracy of
whole utterances. The load average and the CPU are printed with the numbers.

    .venv/bin/python bench/study.py --corpus data/corpus --modes 0,20,40 --cells lstm,gru --layers 2 --epochs 6
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
from cluster.settings import parse_assignment
from cluster.train import TrainConfig


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


def machine() -> str:
    """The CPU's model name, its cores, and the load average now (other users' work counts)."""
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), "unknown CPU") if Path("/proc/cpuinfo").exists() else "unknown CPU"
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    isa = "AVX-512 (avx512_bf16)" if "avx512_bf16" in flags else "AVX-512" if "avx512f" in flags else "AVX2"
    return f"{cpu}, {os.cpu_count()} cores, {isa}; load average {' / '.join(f'{x:.2f}' for x in os.getloadavg())}"


def mode_curves(storage: str, study: str) -> pl.DataFrame:
    """cell, layers, chunk_width, epoch, dev frame accuracy, wall minutes so far, training frames/s."""
    rows = []
    for run in iter_runs(storage, study):
        cfg = run.stamp.config
        dev = run.epochs().filter(pl.col("split") == "dev").sort("epoch")
        wall = 0.0
        for r in dev.iter_rows(named=True):
            wall += r["epoch_seconds"] / 60
            rows.append({"cell": cfg["cell"], "layers": cfg["layers"], "chunk_width": cfg.get("chunk_width", 0),
                         "epoch": r["epoch"], "dev_acc": r["frame_acc"], "minutes": wall,
                         "frames_per_s": r["train_frames_per_s"]})
    return pl.DataFrame(rows).sort("cell", "layers", "chunk_width", "epoch")


def compare_modes(args, storage: str) -> None:
    widths = [int(w) for w in args.modes.split(",")]
    cells, layers = args.cells.split(","), [int(n) for n in args.layers.split(",")]
    overrides = {"epochs": args.epochs, "patience": args.epochs + 1, **dict(parse_assignment(TrainConfig, kv) for kv in args.set)}
    custom = [{"cell": c, "layers": n, "chunk_width": w} for c in cells for n in layers for w in widths]
    print(f"before: {machine()}", flush=True)
    t0 = time.perf_counter()
    run_study("modes", args.profile, storage, corpus=args.corpus, custom=custom, overrides=overrides, seeds=(0,))
    wall = time.perf_counter() - t0
    curves = mode_curves(storage, "modes")
    print(f"after:  {machine()}")
    print(f"training modes at profile {args.profile} ({ {**PROFILES[args.profile].train, **overrides} }), seed 0, "
          f"{len(custom)} runs in {wall / 60:.1f} min wall (start-up included), 2 at a time")
    for (cell, n), df in curves.group_by("cell", "layers", maintain_order=True):
        whole = df.filter(pl.col("chunk_width") == 0)
        target = whole["dev_acc"].max() if whole.height else None
        print(f"\n{cell} {n} x {PROFILES[args.profile].train.get('hidden')}: dev frame accuracy % at wall minutes "
              f"(epoch by epoch){'' if target is None else f'; target = best whole-utterance {100 * target:.2f} %'}")
        for (w,), m in df.group_by("chunk_width", maintain_order=True):
            curve = "  ".join(f"{100 * a:.1f}@{t:.1f}" for a, t in zip(m["dev_acc"], m["minutes"]))
            hit = m.filter(pl.col("dev_acc") >= target) if target is not None else m.clear()
            reach = (f"target at epoch {hit['epoch'][0]}, {hit['minutes'][0]:.1f} min" if hit.height
                     else "target not reached")
            print(f"  {'whole' if w == 0 else f'cw{w}':<6} {m['frames_per_s'].mean():>8.0f} frames/s  best "
                  f"{100 * m['dev_acc'].max():.2f} %  {reach}\n         {curve}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--profile", default="demo", choices=sorted(PROFILES))
    ap.add_argument("--study", default="table1")
    ap.add_argument("--seeds", default=None, help="comma-separated (default: the profile's)")
    ap.add_argument("--storage", default=None, help="keep the runs here (default: a temporary folder)")
    ap.add_argument("--modes", default=None, help="compare training modes: chunk widths, e.g. 0,20,40")
    ap.add_argument("--cells", default="lstm,gru", help="with --modes")
    ap.add_argument("--layers", default="2", help="with --modes")
    ap.add_argument("--epochs", type=int, default=6, help="with --modes (early stopping off)")
    ap.add_argument("--set", action="append", default=[], help="with --modes: a training option, e.g. lr=0.001")
    args = ap.parse_args()
    seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else None
    storage = args.storage or tempfile.mkdtemp(prefix="gatelens-bench-study-")
    prof = PROFILES[args.profile]
    print(f"Ray's messages: {log_ray_to(Path(storage) / 'logs', 'bench-study')}", flush=True)
    try:
        if args.modes:
            compare_modes(args, storage)
            return
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
