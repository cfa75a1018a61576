"""Where a run's Ray Train start-up and shut-down go, under Ray's own settings and under gatelens's
(``cluster.runtime.TRAIN_SETTINGS``), interleaved in one bench run.

    .venv/bin/python bench/startup.py --corpus data/corpus [--runs 2]

Each run is a tiny ``TorchTrainer`` run (H=16, one epoch on 48 utterances), so what it prints is
start-up, not training. The stages come from two clocks of this machine: the worker's timestamps
reported with its first epoch (``startup_*`` in cluster/train.py) and the Train controller's
callbacks (worker group started, each report received, worker group shut down, controller done).
The same run as a one-trial Tune grid follows (what a trial of ``gatelens grid`` adds; under
gatelens's settings only, which its trial process inherits from the cluster's start). Baseline,
measured in the same run: a fresh ``python -c "import cluster.train"`` (the worker's imports
without Ray). The CPU and the load average are printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ray.train import UserCallback
from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback
from study import machine

from cluster.grid import run_study
from cluster.runtime import ensure_ray, train_settings
from cluster.train import TrainConfig, make_trainer

STAGES = [("fit() called -> Train controller started", "fit", "controller_started"),
          ("controller started -> worker group started (placement group, worker actor, process group)",
           "controller_started", "group_started"),
          ("  of which: worker process started -> cluster.train imported from (Ray worker start-up)",
           "startup_process_started", "startup_imports_began"),
          ("worker group started -> training function entered", "group_started", "startup_loop_entered"),
          ("corpus read (train + dev), decoding graph estimated", "startup_loop_entered", "startup_corpus_loaded"),
          ("model built (first Adam imports torch._dynamo), prepare_model", "startup_corpus_loaded",
           "startup_model_ready"),
          ("first epoch in the worker (training + dev scoring)", "startup_model_ready", "first_epoch_done"),
          ("first epoch done -> its report at the controller", "first_epoch_done", "report_1"),
          ("test scoring, final report at the controller", "report_1", "report_2"),
          ("final report -> worker group shut down (end of training seen, workers stopped)",
           "report_2", "group_shut_down"),
          ("worker group shut down -> fit() returned", "group_shut_down", "fit_returned")]


class _Stamps(ControllerCallback, WorkerGroupCallback):
    """Appends ``{"event": ..., "t": ...}`` lines to a file from the Train controller's process."""

    def __init__(self, path: str):
        self.path = path

    def _stamp(self, event: str) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"event": event, "t": time.time()}) + "\n")

    def after_controller_start(self, train_run_context):
        self._stamp("controller_started")

    def after_worker_group_start(self, worker_group):
        self._stamp("group_started")

    def after_worker_group_shutdown(self, worker_group_context):
        self._stamp("group_shut_down")


class _Reports(UserCallback):
    def __init__(self, path: str):
        self.path, self.n = path, 0

    def after_report(self, run_context, metrics, checkpoint):
        self.n += 1
        with open(self.path, "a") as f:
            f.write(json.dumps({"event": f"report_{self.n}", "t": time.time()}) + "\n")


def one_run(corpus: str, storage: Path, name: str, settings: str) -> dict:
    in_force = train_settings(force=settings)
    config = TrainConfig(corpus=corpus, cell="gru", layers=1, hidden=16, epochs=1, batch_size=8,
                         max_train_utterances=48, max_eval_utterances=12)
    stamps = storage / f"{name}.stamps"
    trainer = make_trainer(config, name, str(storage), callbacks=[_Stamps(str(stamps)), _Reports(str(stamps))])
    t = {"fit": time.time()}
    result = trainer.fit()
    t["fit_returned"] = time.time()
    first = result.metrics_dataframe.iloc[0].to_dict()
    t.update({k: v for k, v in first.items() if k.startswith("startup_")})
    t["first_epoch_done"] = t["startup_model_ready"] + first["epoch_seconds"]
    for line in stamps.read_text().splitlines():
        e = json.loads(line)
        t.setdefault(e["event"], e["t"])
    t["settings"] = in_force
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--runs", type=int, default=2, help="runs under each of the two settings, interleaved")
    args = ap.parse_args()
    corpus = str(Path(args.corpus).resolve())
    storage = Path(tempfile.mkdtemp(prefix="gatelens-bench-startup-"))
    try:
        print(f"before: {machine()}", flush=True)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import cluster.train"], check=True)
        bare = time.perf_counter() - t
        ensure_ray()
        arms = ("ray", "gatelens")
        runs = {arm: [] for arm in arms}
        for k in range(args.runs):
            for arm in arms:
                runs[arm].append(one_run(corpus, storage, f"startup{k}{arm}", arm))
        # a Tune trial runs in its own process, which took its environment from the cluster's start
        # (gatelens's settings, see ensure_ray): the one-trial grid is timed under those only
        train_settings(force="gatelens")
        t = time.perf_counter()
        run_study("startup-tune", "tiny", storage, corpus=corpus, custom=[{"cell": "gru", "layers": 1}])
        tune_s = time.perf_counter() - t
        print(f"after:  {machine()}")
        print(f"baseline: a fresh python importing cluster.train: {bare:.1f} s")
        for arm, label in (("ray", "Ray's defaults"), ("gatelens", "gatelens's settings")):
            print(f"{label}: {runs[arm][0]['settings']}")
        cols = [f"Ray {k + 1}" for k in range(args.runs)] + [f"ours {k + 1}" for k in range(args.runs)]
        print(f"{'stage (seconds)':<92} " + " ".join(f"{c:>7}" for c in cols))
        every = runs["ray"] + runs["gatelens"]
        for label, a, b in STAGES + [("fit() to its return", "fit", "fit_returned")]:
            secs = [r[b] - r[a] if r.get(a) is not None and r.get(b) is not None else float("nan") for r in every]
            print(f"{label:<92} " + " ".join(f"{s:>7.1f}" for s in secs))
        print(f"{'the same run as a one-trial Tune grid (gatelens grid --profile tiny), call to return':<92} "
              f"{tune_s:>7.1f} (gatelens's settings)")
    finally:
        shutil.rmtree(storage, ignore_errors=True)


if __name__ == "__main__":
    main()
