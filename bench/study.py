"""What a study costs on this machine, measured by training it (Ray Tune, as ``gatelens grid`` does),
against its compute floor, in one run:

- solo vs stacked throughput: S seeds' training steps one model after another against one
  ``SeedStack`` step (cluster/models/stack.py) at the profile's batch shape, for lstm and gru at each
  depth, interleaved, fastest of several; and the fused ``nn.LSTM`` model's (``lstm_fused``) training
  rate at each depth: the floor's rate;
- the study itself: minutes per model-epoch for each cell and depth, epochs trained, and whether
  each run was stopped by early stopping or by the epoch cap;
- dev frame accuracy against wall minutes (training + dev scoring) for each run, by training mode;
- a stacked step alone (fastest and median) and beside a second process running the same step,
  as two trials share the 2 cores (``side_by_side``);
- per-trial start-up seconds (the worker process's start to the model being ready, from the first
  checkpoint's ``startup_*`` metrics);
- the compute floor: the frames the study trained (epochs x training frames, per run) divided by
  nn.LSTM's rate at that run's depth, over the cores; and the ratio of the wall time to it.
- where the core-minutes went (``wall_split``): training steps (and their ratio to the floor), dev
  scoring, trial start-up, the rest of each trial's span, and cores no trial held.

    .venv/bin/python bench/study.py --corpus data/corpus [--profile demo|study] [--seeds 0,1,2]

Runs go to a fresh temporary storage (``--storage`` keeps them). The demo profile takes minutes;
the study profile hours on 2 cores (README). ``--skip-study`` prints the throughput part alone.

Training modes (``--modes 0,20,40``: chunk_width 0 = whole utterances, n = carried-state streams in
windows of n frames): every mode trains each ``--cells`` x ``--layers`` point for ``--epochs`` epochs
(early stopping off) in one Tune grid, modes interleaved so the machine's load falls on all alike;
it prints dev frame accuracy against wall minutes (training + dev scoring, start-up excluded) per
mode, training frames per second, the minutes each mode takes to reach the best dev accuracy of
whole utterances, and where the early-stopping rule (``--stop patience,min_delta``) would stop each
curve. The load average and the CPU are printed with the numbers.

    .venv/bin/python bench/study.py --corpus data/corpus --modes 0,20,40 --cells lstm,gru --layers 2 --epochs 6
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import json

import polars as pl
import torch
import torch.nn.functional as F

from cluster.grid import run_study, trial_configs
from cluster.models import ModelConfig, SeedStack, build_model, load_checkpoint
from cluster.runs import collect_results, iter_runs
from cluster.runtime import log_ray_to, machine as runtime_machine
from cluster.schedule import newbob_stop_epoch, stop_epoch
from cluster.settings import parse_assignment
from cluster.studies import PROFILES
from cluster.train import TrainConfig, _optimizer


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
    """The CPU (``cluster.runtime.machine``) and the load average now (other users' work counts)."""
    return f"{runtime_machine()}; load average {' / '.join(f'{x:.2f}' for x in os.getloadavg())}"


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
                         "seed": cfg["seed"], "epoch": r["epoch"], "dev_acc": r["frame_acc"], "minutes": wall,
                         "frames_per_s": r["train_frames_per_s"]})
    return pl.DataFrame(rows).sort("cell", "layers", "chunk_width", "seed", "epoch")


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
            patience, min_delta = args.stop.split(",")
            e = stop_epoch(m["dev_acc"].to_list(), int(patience), float(min_delta))
            stops = f"patience {patience}, min_delta {min_delta} stops it after epoch {e}" if e else \
                f"patience {patience}, min_delta {min_delta} would not stop it"
            print(f"  {'whole' if w == 0 else f'cw{w}':<6} {m['frames_per_s'].mean():>8.0f} frames/s  best "
                  f"{100 * m['dev_acc'].max():.2f} %  {reach}; {stops}\n         {curve}")


def _models(cell: str, layers: int, hidden: int, seeds: int) -> list:
    out = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        out.append(build_model(ModelConfig(cell=cell, layers=layers, hidden=hidden, num_targets=120),
                               torch.zeros(40), torch.ones(40)))
    return out


def _step_fn(models: list, stacked: bool, batch: int, frames: int):
    """One training step of every model on its own [frames, batch] window (spliced input, loss
    per seed over its own frames, backward, clipping and Adam per seed), as one ``SeedStack`` call
    (``stacked``) or model after model."""
    S, K = len(models), 120
    opts = [_optimizer(m, TrainConfig(lr=1e-3)) for m in models]  # the optimizer training builds
    x = torch.randn(frames, S * batch, models[0].config.input_dim)
    y = torch.randint(0, K, (S * batch, frames))
    stack = SeedStack(models)

    def finish(losses):
        for o in opts:
            o.zero_grad(set_to_none=True)
        sum(losses).backward()
        for m, o in zip(models, opts):
            torch.nn.utils.clip_grad_norm_(m.parameters(), 5.0)
            o.step()

    def step():
        if stacked:
            logits, _ = stack.forward_spliced(x)
            losses = [F.cross_entropy(logits[s * batch:(s + 1) * batch].reshape(-1, K),
                                      y[s * batch:(s + 1) * batch].reshape(-1)) for s in range(S)]
            finish(losses)
        else:
            for s, m in enumerate(models):
                rows = slice(s * batch, (s + 1) * batch)
                logits, _ = m.forward_spliced(x[:, rows])
                finish_one = F.cross_entropy(logits.reshape(-1, K), y[rows].reshape(-1))
                opts[s].zero_grad(set_to_none=True)
                finish_one.backward()
                torch.nn.utils.clip_grad_norm_(m.parameters(), 5.0)
                opts[s].step()

    return step


def throughput(depths, hidden: int, batch: int, frames: int, seeds: int, repeats: int = 5) -> dict:
    """Training frames per second (one thread): for lstm and gru at each depth, ``seeds`` models
    solo (one after another) and stacked; for ``lstm_fused`` at each depth, one model (the floor's
    rate). Configurations interleaved step by step, the fastest step of each kept."""
    torch.set_num_threads(1)
    steps = {}
    for n in depths:
        steps[("lstm_fused", n, "one")] = (_step_fn(_models("lstm_fused", n, hidden, 1), False, batch, frames), 1)
        for cell in ("lstm", "gru"):
            for stacked in (False, True):
                steps[(cell, n, "stacked" if stacked else "solo")] = (
                    _step_fn(_models(cell, n, hidden, seeds), stacked, batch, frames), seeds)
    best = {k: float("inf") for k in steps}
    for _ in range(repeats + 1):  # the first round warms up
        for k, (fn, _) in steps.items():
            t = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t)
    return {k: steps[k][1] * batch * frames / best[k] for k in steps}


def _step_times(cell: str, layers: int, hidden: int, batch: int, frames: int, seeds: int, n: int) -> list[float]:
    """Seconds of each of ``n`` stacked training steps (one thread), after one to warm up."""
    torch.set_num_threads(1)
    fn = _step_fn(_models(cell, layers, hidden, seeds), True, batch, frames)
    fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _partner(args: tuple, ready, stop) -> None:
    """The other trial: the same stacked step in a loop in its own process until told to stop."""
    torch.set_num_threads(1)
    fn = _step_fn(_models(*args[:2], args[2], args[5]), True, args[3], args[4])
    fn()
    ready.set()
    while not stop.is_set():
        fn()


def side_by_side(depths, hidden: int, batch: int, frames: int, seeds: int, n: int = 10) -> list[dict]:
    """A stacked step alone and with a second process running the same step beside it (two trials
    at once, as a study runs them on 2 cores): per cell and depth the fastest and the median step
    alone and the median beside the other, in frames per second. What separates the throughput
    table's fastest step from a step inside the study: the spread of steps, and the two trials
    sharing the machine."""
    import multiprocessing as mp
    import statistics

    ctx = mp.get_context("spawn")
    rows = []
    for layers in depths:
        for cell in ("lstm", "gru"):
            args = (cell, layers, hidden, batch, frames, seeds)
            alone = _step_times(*args, n)
            ready, stop = ctx.Event(), ctx.Event()
            p = ctx.Process(target=_partner, args=(args, ready, stop), daemon=True)
            p.start()
            ready.wait(300)
            beside = _step_times(*args, n)
            stop.set()
            p.join(60)
            fr = seeds * batch * frames
            rows.append({"cell": cell, "layers": layers, "fastest": fr / min(alone),
                         "median": fr / statistics.median(alone), "beside": fr / statistics.median(beside)})
    return rows


def startup_seconds(storage: str, study: str) -> pl.DataFrame:
    """run, seconds from its worker process's start to its model being ready (first checkpoint's
    metrics; the Train controller's own start before the process is not in it), and the corpus
    read + model set-up part of that."""
    rows = []
    for run in iter_runs(storage, study):
        files = run.checkpoint_files()
        if not files:
            continue
        m = load_checkpoint(files[0])[1].metrics
        if m.get("startup_process_started") is None or m.get("startup_model_ready") is None:
            continue
        rows.append({"run": run.name, "startup_s": m["startup_model_ready"] - m["startup_process_started"],
                     "setup_s": m["startup_model_ready"] - m["startup_loop_entered"]})
    return pl.DataFrame(rows, schema={"run": pl.String, "startup_s": pl.Float64, "setup_s": pl.Float64})


def train_frames(corpus: str, limit: int | None) -> int:
    """Frames in the training split (the manifest's count; the first ``limit`` utterances' otherwise)."""
    manifest = json.loads((Path(corpus) / "manifest.json").read_text()) if (Path(corpus) / "manifest.json").is_file() else {}
    frames = ((manifest.get("splits") or {}).get("train") or {}).get("frames")
    if frames is None or limit:
        from cluster.data.kaldi import read_corpus
        from cluster.train import load_split
        return load_split(read_corpus(corpus), "train", limit).frames
    return int(frames)


def floor_minutes(storage: str, study: str, corpus: str, rates: dict, cores: int) -> tuple[float, int]:
    """(the study's compute floor in minutes, frames trained): every run's epochs x training frames,
    at nn.LSTM's rate at its depth, spread over ``cores``."""
    seconds, total = 0.0, 0
    for run in iter_runs(storage, study):
        cfg = run.stamp.config
        epochs = run.epochs().filter(pl.col("split") == "dev").height
        frames = epochs * train_frames(corpus, cfg.get("max_train_utterances"))
        seconds += frames / rates[("lstm_fused", cfg["layers"], "one")]
        total += frames
    return seconds / cores / 60, total


def wall_split(storage: str, study: str, corpus: str, wall: float, cores: int, floor_s: float) -> dict:
    """Where the study's core-seconds (wall x cores) went, from what each run wrote: per trial (the
    runs that differ only in seed, trained stacked) and epoch, the training seconds (a seed's
    training frames over its ``train_frames_per_s``: the stack's training time, the same for every
    seed of it) and the rest of ``epoch_seconds`` (dev scoring of the stack); the start-up (worker
    process start -> model ready); the rest of each trial's span (its start to its last file
    written: checkpoints, test scoring, reports); and the cores no trial held (``idle``).
    ``floor_s``: the floor in core-seconds, so that ``training / floor`` is the cells' own speed in
    the study's conditions (two trials side by side) against nn.LSTM's fused kernel alone."""
    trials: dict[tuple, dict] = {}
    for run in iter_runs(storage, study):
        cfg = run.stamp.config
        key = tuple(sorted((k, json.dumps(v, sort_keys=True, default=str)) for k, v in cfg.items()
                           if k not in ("seed", "run_dir", "name", "run_id")))
        t = trials.setdefault(key, {"train": {}, "epoch": {}, "start": None, "end": 0.0, "startup": 0.0})
        frames = train_frames(corpus, cfg.get("max_train_utterances"))
        for r in run.epochs().filter(pl.col("split") == "dev").iter_rows(named=True):
            if r["train_frames_per_s"]:
                t["train"][r["epoch"]] = max(t["train"].get(r["epoch"], 0.0), frames / r["train_frames_per_s"])
            t["epoch"][r["epoch"]] = max(t["epoch"].get(r["epoch"], 0.0), r["epoch_seconds"] or 0.0)
        files = run.checkpoint_files()
        if files:
            m = load_checkpoint(files[0])[1].metrics
            if m.get("startup_process_started") is not None:
                started = float(m["startup_process_started"])
                t["start"] = started if t["start"] is None else min(t["start"], started)
                t["startup"] = max(t["startup"], m["startup_model_ready"] - started)
        t["end"] = max([t["end"]] + [f.stat().st_mtime for f in run.path.rglob("*") if f.is_file()])
    out = dict.fromkeys(("training", "dev_scoring", "startup", "trial_rest"), 0.0)
    for t in trials.values():
        train, epochs = sum(t["train"].values()), sum(t["epoch"].values())
        out["training"] += train
        out["dev_scoring"] += epochs - train
        out["startup"] += t["startup"]
        if t["start"] is not None:
            out["trial_rest"] += max(0.0, t["end"] - t["start"] - t["startup"] - epochs)
    out["idle"] = max(0.0, wall * cores - sum(out.values()))
    out["trials"], out["floor"] = len(trials), floor_s
    return out


def print_split(split: dict, wall: float, cores: int) -> None:
    total = wall * cores
    print(f"where the {total / 60:.1f} core-minutes ({cores} cores x {wall / 60:.1f} min) went, over "
          f"{split['trials']} trials:")
    for what, label in (("training", "training steps (stacked seeds)"), ("dev_scoring", "dev scoring after each epoch"),
                        ("startup", "trial start-up (process start -> model ready)"),
                        ("trial_rest", "the rest of the trials' spans (checkpoints, test scoring, reports)"),
                        ("idle", "cores no trial held (Ray Tune, Train controllers, stragglers)")):
        print(f"  {label:<70} {split[what] / 60:7.1f} min  {split[what] / total:6.1%}")
    print(f"  the training steps alone are {split['training'] / split['floor']:.2f}x the floor "
          f"({split['floor'] / 60:.1f} core-minutes at nn.LSTM's fused rate)")


def stopped_by(storage: str, study: str) -> pl.DataFrame:
    """run, epochs trained, the cap, and whether its early-stopping rule ended it: the run's own
    rule (``schedule.newbob`` or ``should_stop``, with its config) replayed on its dev curve fires
    at its last epoch, so a rule that fires at the cap counts as the rule's."""
    rows = []
    for run in iter_runs(storage, study):
        cfg = TrainConfig.from_dict(run.stamp.config)
        accs = run.epochs().filter(pl.col("split") == "dev").sort("epoch")["frame_acc"].to_list()
        at = (newbob_stop_epoch(accs, cfg.newbob_start, cfg.newbob_stop, cfg.newbob_keep) if cfg.schedule == "newbob"
              else stop_epoch(accs, cfg.patience, cfg.min_delta))
        rows.append({"run": run.name, "epochs": len(accs), "cap": cfg.epochs, "early_stopped": at == len(accs)})
    return pl.DataFrame(rows).sort("run")


def print_curves(curves: pl.DataFrame, stop: tuple[int, float] | None = None) -> None:
    """Dev frame accuracy % at wall minutes, epoch by epoch, per run (cell, depth, mode, seed)."""
    for (cell, n, w, seed), m in curves.group_by("cell", "layers", "chunk_width", "seed", maintain_order=True):
        curve = "  ".join(f"{100 * a:.1f}@{t:.1f}" for a, t in zip(m["dev_acc"], m["minutes"]))
        where = ""
        if stop:
            e = stop_epoch(m["dev_acc"].to_list(), stop[0], stop[1])
            where = f"; patience {stop[0]}, min_delta {stop[1]} stops it after epoch {e}" if e else \
                f"; patience {stop[0]}, min_delta {stop[1]} would not stop it"
        print(f"  {cell} {n} {'whole' if w == 0 else f'cw{w}'} s{seed}: best {100 * m['dev_acc'].max():.2f} % at epoch "
              f"{m['epoch'][m['dev_acc'].arg_max()]}{where}\n      {curve}")


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
    ap.add_argument("--set", action="append", default=[], help="a training option over the profile's, e.g. lr=0.001")
    ap.add_argument("--stop", default="2,0.3", help="with --modes: patience,min_delta of the early-stopping "
                                                  "rule replayed on each curve (cluster/schedule.py)")
    ap.add_argument("--skip-study", action="store_true", help="the throughput part only")
    args = ap.parse_args()
    seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else None
    storage = args.storage or tempfile.mkdtemp(prefix="gatelens-bench-study-")
    prof = PROFILES[args.profile]
    print(f"Ray's messages: {log_ray_to(Path(storage) / 'logs', 'bench-study')}", flush=True)
    try:
        if args.modes:
            compare_modes(args, storage)
            return
        base = {**prof.train, **dict(parse_assignment(TrainConfig, kv) for kv in args.set)}
        width = base.get("chunk_width", 0)
        batch, frames = (base.get("batch_size", 16), width) if width else (base.get("batch_size", 16), 260)
        depths = sorted({c.layers for c in trial_configs(args.study, prof, seeds=seeds)})
        n_seeds = len(seeds or prof.seeds)
        print(f"before: {machine()}", flush=True)
        rates = throughput(depths, base.get("hidden", 128), batch, frames, n_seeds)
        print(f"training frames/s, 1 thread, {batch} rows x {frames} frames per seed, fastest of 5 interleaved steps "
              f"({n_seeds} seeds: solo = one model after another, stacked = one SeedStack step)")
        print(f"{'cell':<6} {'layers':>6} {'solo':>9} {'stacked':>9} {'stacked/solo':>12} {'nn.LSTM':>9}")
        for n in depths:
            for cell in ("lstm", "gru"):
                solo, st = rates[(cell, n, "solo")], rates[(cell, n, "stacked")]
                print(f"{cell:<6} {n:>6} {solo:>9.0f} {st:>9.0f} {st / solo:>11.2f}x {rates[('lstm_fused', n, 'one')]:>9.0f}")
        print(f"a stacked step alone and beside a second process running the same step (two trials at once), "
              f"median of 10 steps, frames/s:")
        print(f"{'cell':<6} {'layers':>6} {'fastest':>9} {'median':>9} {'beside':>9} {'beside/fastest':>14}")
        for r in side_by_side(depths, base.get("hidden", 128), batch, frames, n_seeds):
            print(f"{r['cell']:<6} {r['layers']:>6} {r['fastest']:>9.0f} {r['median']:>9.0f} {r['beside']:>9.0f} "
                  f"{r['beside'] / r['fastest']:>13.2f}x")
        if args.skip_study:
            return
        t0 = time.perf_counter()
        configs, _ = run_study(args.study, args.profile, storage, corpus=args.corpus, seeds=seeds,
                               overrides=dict(parse_assignment(TrainConfig, kv) for kv in args.set) or None)
        wall = time.perf_counter() - t0
        print(f"after:  {machine()}")
        ours = per_epoch(storage, args.study)
        results = collect_results(storage, args.study)
        print(f"\n{args.study} at profile {args.profile} ({base}), seeds {sorted(set(results['seed']))}, "
              f"{os.cpu_count()} cores: {wall / 60:.1f} min wall for {len(configs)} runs")
        print(f"{'cell':<10} {'layers':>6} {'runs':>4} {'epochs':>6} {'min/epoch':>9}")
        for r in ours.iter_rows(named=True):
            print(f"{r['cell']:<10} {r['layers']:>6} {r['runs']:>4} {r['epochs']:>6.1f} {r['min_per_epoch']:>9.2f}")
        stops = stopped_by(storage, args.study)
        print(f"stopped by early stopping: {stops['early_stopped'].sum()} of {stops.height} runs"
              + ("" if stops["early_stopped"].all() else
                 f" (at the cap: {', '.join(stops.filter(~pl.col('early_stopped'))['run'])})"))
        print(f"best dev frame accuracy: {100 * results['dev_frame_acc'].min():.2f}-{100 * results['dev_frame_acc'].max():.2f} %; "
              f"test PER {100 * results['test_per'].min():.2f}-{100 * results['test_per'].max():.2f} %")
        print("dev frame accuracy % @ wall minutes (training + dev scoring), epoch by epoch:")
        print_curves(mode_curves(storage, args.study))
        ups = startup_seconds(storage, args.study)
        if ups.height:
            print(f"per-trial start-up (worker process start -> model ready), {ups.height} runs: mean "
                  f"{ups['startup_s'].mean():.1f} s, max {ups['startup_s'].max():.1f} s (of which corpus read + "
                  f"model set-up {ups['setup_s'].mean():.1f} s)")
        else:
            print("per-trial start-up: no run's first checkpoint holds the startup_* metrics (trained before they "
                  "were written there)")
        floor, trained = floor_minutes(storage, args.study, args.corpus, rates, os.cpu_count() or 1)
        print(f"compute floor: {trained:,} frames trained at nn.LSTM's rate at each depth over {os.cpu_count()} cores = "
              f"{floor:.1f} min; wall {wall / 60:.1f} min = {wall / 60 / floor:.2f}x the floor")
        cores = os.cpu_count() or 1
        print_split(wall_split(storage, args.study, args.corpus, wall, cores, floor * 60 * cores), wall, cores)
    finally:
        if not args.storage:
            shutil.rmtree(storage, ignore_errors=True)


if __name__ == "__main__":
    main()
