"""The paper's grids (Tables 1-3) as Ray Tune studies; each trial fits its own Ray Train run.

Train V2 pattern (Ray 2.60): ``Tuner(TorchTrainer)`` is gone, so a Tune trial function builds a
``TorchTrainer`` with ``TuneReportCallback`` and fits it. The trial itself holds no CPU (its
trainer's workers do), so trials run concurrently as the cluster's CPUs/GPUs allow.

One trial per grid point trains that point's unfinished seeds side by side (``stack_seeds``,
``cluster/train.py``): a study of 6 points x 5 seeds starts 6 trials, not 30. Each seed's run
lives at ``<storage>/<study>/runs/<run name>/`` (checkpoints, ``run.json``, ``epochs.parquet``)
exactly as a run trained alone; a finished run (``cluster.runs.RunDir.finished``) is not trained
again unless asked. The trial's own Ray Train storage (every seed's resume state) is
``<storage>/<study>/stacks/<trial name>/``.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from cluster.errors import InputError
from cluster.runs import RunDir, study_dir
from cluster.runtime import ensure_ray
from cluster.studies import PROFILES, STUDIES, Profile
from cluster.train import STACK_FIELDS, TrainConfig, clock, make_trainer, report_line, run_name, seed_reports


def trial_configs(study: str, profile: Profile, overrides: dict | None = None,
                  custom: list[dict] | None = None, seeds: tuple[int, ...] | None = None) -> list[TrainConfig]:
    """Every run of the study: its grid points (at the profile's depths) x the seeds (the
    profile's unless given). Seeds are a study dimension: run names carry them (``..._s1``)."""
    if custom is None and study not in STUDIES:
        raise InputError(f"unknown study {study!r}: choose {', '.join(STUDIES)} or give a custom grid")
    points = custom if custom is not None else STUDIES[study]
    if profile.depths is not None and custom is None:
        points = [p for p in points if p["layers"] in profile.depths]
    if not seeds and "seed" in (overrides or {}):  # --set seed=N: that one seed
        seeds = (overrides["seed"],)
    seeds = tuple(seeds) if seeds else profile.seeds
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise InputError(f"--seeds {','.join(map(str, seeds))}: distinct non-negative integers")
    base = {**profile.train, **(overrides or {})}
    return [TrainConfig.from_dict({**base, **p, "seed": s}) for p in points for s in seeds]


STACKS = "stacks"
GATES = {"lstm": 4, "lstm_lazy": 4, "lstm_fused": 4, "gru": 3}  # gate matmuls per layer and frame


def stacks(configs: list[TrainConfig], runs_dir: Path) -> list[TrainConfig]:
    """The study's runs grouped into one trial per grid point (runs that differ only in their
    seed), each trial's config holding its seeds (``stack_seeds``) and where their runs go; the
    longest first (layers x gate matmuls x hidden^2 x seeds: lstm before gru at one depth), so that
    the last trials to start are short ones and no core idles long at the end of a study."""
    points: dict[str, list[TrainConfig]] = {}
    for c in configs:
        key = str(sorted((k, v) for k, v in asdict(c).items() if k not in ("seed", *STACK_FIELDS)))
        points.setdefault(key, []).append(c)
    out = [replace(group[0], stack_seeds=tuple(c.seed for c in group), runs_dir=str(runs_dir))
           for group in points.values()]
    return sorted(out, key=lambda c: -c.layers * GATES.get(c.cell, 4) * c.hidden ** 2 * len(c.stack_seeds))


def stack_name(config: TrainConfig) -> str:
    """A trial's name: its grid point's run name with its seeds, e.g. ``gru_L1_H16_s0-1-2``."""
    return run_name(replace(config, seed=0)).rsplit("_s", 1)[0] + "_s" + "-".join(map(str, config.stack_seeds))


def custom_grid(cells: list[str], layers: list[int], residual: list[bool]) -> list[dict]:
    return [{"cell": c, "layers": n, "residual": r} for c, n, r in itertools.product(cells, layers, residual)]


class Progress(tune.Callback):
    """One line per seed and epoch on the console (dev accuracy, epoch time, ETA), one when a seed
    finishes (its test scores) and one when a trial fails (its error and where the trial's log is).
    The ETA assumes every remaining epoch runs: early stopping can only make it shorter."""

    def __init__(self, configs: dict[str, TrainConfig]):
        self.configs, self.t0, self.done = configs, time.time(), 0  # no stream held: Tune may pickle its callbacks
        self.last, self.epochs_seen = self.t0, False

    def _say(self, text: str) -> None:
        print(f"[{clock(time.time() - self.t0):>7}] {text}", file=sys.stderr, flush=True)
        self.last = time.time()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        for name, m in seed_reports(result):
            cfg = self.configs.get(name)
            if cfg is None:
                continue
            if m.get("final"):
                self.done += 1
            line = report_line(name, m, cfg.epochs, done=f" ({self.done}/{len(self.configs)})")
            if line:
                self.epochs_seen = True
                self._say(line)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._say(f"{trial.config['point']['name']:<22} starting: Ray Train starts its workers")

    def on_step(self, iteration, trials, **info):
        """A line while nothing else is said: after 10 s while no trial has reported an epoch yet
        (trials starting take 30-50 s on 2 cores), after a minute once epochs are under way."""
        if time.time() - self.last > (60 if self.epochs_seen else 10):
            running = [t for t in trials if t.status == "RUNNING"]
            pending = sum(t.status == "PENDING" for t in trials)
            self._say(f"{len(running)} trials running, {pending} waiting, {self.done}/{len(self.configs)} done")

    def on_trial_error(self, iteration, trials, trial, **info):
        name = trial.config["point"]["name"]
        err = trial.get_error()
        first = str(err).strip().splitlines()[-1] if err is not None and str(err).strip() else type(err).__name__
        self._say(f"{name:<22} FAILED: {first}  (trial log: {trial.error_file or trial.path})")


def concurrency(profile: Profile, workers: int, gpus_per_worker: float, threads: int) -> int:
    """Trials at once: a trial holds no resources itself (its trainer's workers do), so without a
    cap Tune starts every trial and their trainers wait for workers until they time out. The cap
    is what the cluster can run: its CPUs (or GPUs) over one trial's."""
    if profile.max_concurrent:
        return profile.max_concurrent
    res = ray.cluster_resources()
    if gpus_per_worker > 0:
        return max(1, math.floor(res.get("GPU", 0) / (workers * gpus_per_worker)))
    return max(1, math.floor(res.get("CPU", 1) / (workers * threads)))


def _trial(space: dict) -> None:
    """One Tune trial: build and fit the Ray Train run of one grid point's seeds."""
    trial = space["point"]
    config = TrainConfig.from_dict(trial["train"])
    trainer = make_trainer(config, trial["name"], trial["stacks_dir"], workers=trial["workers"],
                           gpus_per_worker=trial["gpus_per_worker"], callbacks=[TuneReportCallback()])
    trainer.fit()


def run_study(study: str, profile: str = "demo", storage: str | Path = "data/runs", corpus: str | None = None,
              overrides: dict | None = None, custom: list[dict] | None = None, rerun: bool = False,
              workers: int | None = None, gpus_per_worker: float | None = None, seeds: tuple[int, ...] | None = None):
    """Run every trial of ``study`` that has not finished yet; returns (configs, ResultGrid or None).
    Tune's own tables are off: ``Progress`` prints a line per seed and epoch."""
    prof = PROFILES[profile]
    if corpus:
        overrides = {**(overrides or {}), "corpus": corpus}
    configs = trial_configs(study, prof, overrides, custom, seeds)
    sdir = study_dir(storage, study)
    runs_dir = sdir / "runs"
    todo = [c for c in configs if rerun or not RunDir(study, run_name(c), runs_dir / run_name(c)).finished]
    if not todo:
        return configs, None
    ensure_ray()
    w = workers if workers is not None else prof.workers
    g = gpus_per_worker if gpus_per_worker is not None else prof.gpus_per_worker
    trials = stacks(todo, runs_dir)
    if rerun:
        for c in todo:
            shutil.rmtree(runs_dir / run_name(c), ignore_errors=True)
        for t in trials:
            shutil.rmtree(sdir / STACKS / stack_name(t), ignore_errors=True)
    points = [{"train": {**asdict(t), "corpus": str(Path(t.corpus).resolve())}, "name": stack_name(t),
               "stacks_dir": str(sdir / STACKS), "workers": w, "gpus_per_worker": g} for t in trials]
    at_once = concurrency(prof, w, g, max(c.threads_per_worker for c in todo))
    # the legacy reporter, whose verbose=0 is silent (the new one prints its experiment box regardless)
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    tuner = tune.Tuner(
        tune.with_resources(_trial, {"memory": 512 * 1024 ** 2}),
        param_space={"point": tune.grid_search(points)},
        tune_config=tune.TuneConfig(max_concurrent_trials=at_once,
                                    trial_name_creator=lambda t: t.config["point"]["name"],
                                    trial_dirname_creator=lambda t: t.config["point"]["name"]),
        run_config=tune.RunConfig(name="tune", storage_path=str(sdir), verbose=0,
                                  callbacks=[Progress({run_name(c): c for c in todo})]),
    )
    sizes = sorted({len(t.stack_seeds) for t in trials})
    each = f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
    print(f"starting {len(trials)} trial{'s' if len(trials) != 1 else ''} ({each} seed{'s' if sizes[-1] > 1 else ''} "
          f"each), "
          f"{min(at_once, len(trials))} at once: Ray Train starts each one's workers "
          f"(30-50 s on 2 cores before its first epoch: ~50 s per stacked trial on an AVX2 EPYC)", file=sys.stderr, flush=True)
    grid = tuner.fit()
    return configs, grid
