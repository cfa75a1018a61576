"""The paper's grids (Tables 1-3) as Ray Tune studies; each trial fits its own Ray Train run.

Train V2 pattern (Ray 2.60): ``Tuner(TorchTrainer)`` is gone, so a Tune trial function builds a
``TorchTrainer`` with ``TuneReportCallback`` and fits it. The trial itself holds no CPU (its
trainer's workers do), so trials run concurrently as the cluster's CPUs/GPUs allow.

Runs live at ``<storage>/<study>/runs/<run name>/`` (checkpoints, ``run.json``, ``epochs.parquet``);
a run whose ``epochs.parquet`` exists is finished and is not trained again unless asked.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from cluster.train import EPOCHS_FILE, TrainConfig, run_name

STUDIES: dict[str, list[dict]] = {
    # Table 1: LSTM vs GRU by depth
    "table1": [{"cell": c, "layers": n} for c in ("lstm", "gru") for n in (1, 2, 4, 6)],
    # Table 2: LSTM without / with lazy cell update (final layer only, as the paper)
    "table2": [{"cell": c, "layers": n} for c in ("lstm", "lstm_lazy") for n in (1, 2, 4)],
    # Table 3: residual shortcuts at 4 and 6 layers
    "table3": [{"cell": c, "layers": n, "residual": r} for c in ("lstm", "gru") for n in (4, 6) for r in (False, True)],
}


@dataclass(frozen=True)
class Profile:
    name: str
    train: dict  # TrainConfig overrides
    depths: tuple[int, ...] | None = None  # keep only these depths of a study
    workers: int = 1
    gpus_per_worker: float = 0.0
    max_concurrent: int = 0  # 0: as resources allow


PROFILES = {
    # fits 2 CPU cores: table1 at depths 1, 2, 4 in about a quarter of an hour
    "demo": Profile("demo", {"hidden": 128, "epochs": 3, "batch_size": 16, "lr": 2e-3, "patience": 2},
                    depths=(1, 2, 4)),
    # the paper's shapes, for a cluster of GPU machines
    "paper": Profile("paper", {"hidden": 512, "epochs": 15, "batch_size": 32, "patience": 3,
                               "threads_per_worker": 4}, gpus_per_worker=1.0),
    # for tests and smoke runs: seconds per trial
    "tiny": Profile("tiny", {"hidden": 16, "epochs": 1, "batch_size": 8, "max_train_utterances": 48,
                             "max_eval_utterances": 12}),
}


def trial_configs(study: str, profile: Profile, overrides: dict | None = None,
                  custom: list[dict] | None = None) -> list[TrainConfig]:
    if custom is None and study not in STUDIES:
        raise ValueError(f"unknown study {study!r}: choose {', '.join(STUDIES)} or give a custom grid")
    points = custom if custom is not None else STUDIES[study]
    if profile.depths is not None and custom is None:
        points = [p for p in points if p["layers"] in profile.depths]
    base = {**profile.train, **(overrides or {})}
    return [TrainConfig.from_dict({**base, **p}) for p in points]


def custom_grid(cells: list[str], layers: list[int], residual: list[bool]) -> list[dict]:
    return [{"cell": c, "layers": n, "residual": r} for c, n, r in itertools.product(cells, layers, residual)]


def study_dir(storage: str | Path, study: str) -> Path:
    return Path(storage).resolve() / study


def _trial(space: dict) -> None:
    """One Tune trial: build and fit the Ray Train run of one grid point."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from cluster.train import make_trainer

    trial = space["point"]
    config = TrainConfig.from_dict(trial["train"])
    trainer = make_trainer(config, trial["name"], trial["runs_dir"], workers=trial["workers"],
                           gpus_per_worker=trial["gpus_per_worker"], callbacks=[TuneReportCallback()])
    trainer.fit()


def run_study(study: str, profile: str = "demo", storage: str | Path = "data/runs", corpus: str | None = None,
              overrides: dict | None = None, custom: list[dict] | None = None, rerun: bool = False,
              workers: int | None = None, gpus_per_worker: float | None = None):
    """Run every trial of ``study`` that has not finished yet; returns (configs, ResultGrid or None)."""
    from ray import tune

    from cluster.runtime import ensure_ray

    prof = PROFILES[profile]
    if corpus:
        overrides = {**(overrides or {}), "corpus": corpus}
    configs = trial_configs(study, prof, overrides, custom)
    sdir = study_dir(storage, study)
    runs_dir = sdir / "runs"
    todo = [c for c in configs if rerun or not (runs_dir / run_name(c) / EPOCHS_FILE).exists()]
    if not todo:
        return configs, None
    ensure_ray()
    w = workers if workers is not None else prof.workers
    g = gpus_per_worker if gpus_per_worker is not None else prof.gpus_per_worker
    if rerun:
        import shutil

        for c in todo:
            shutil.rmtree(runs_dir / run_name(c), ignore_errors=True)
    points = [{"train": {**asdict(c), "corpus": str(Path(c.corpus).resolve())}, "name": run_name(c),
               "runs_dir": str(runs_dir), "workers": w, "gpus_per_worker": g} for c in todo]
    tuner = tune.Tuner(
        tune.with_resources(_trial, {"memory": 512 * 1024 ** 2}),
        param_space={"point": tune.grid_search(points)},
        tune_config=tune.TuneConfig(max_concurrent_trials=prof.max_concurrent or None,
                                    trial_name_creator=lambda t: t.config["point"]["name"],
                                    trial_dirname_creator=lambda t: t.config["point"]["name"]),
        run_config=tune.RunConfig(name="tune", storage_path=str(sdir), verbose=1),
    )
    grid = tuner.fit()
    return configs, grid
