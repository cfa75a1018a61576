"""Where a run's Ray Train start-up goes: from ``TorchTrainer.fit()`` to its first epoch, by the
timestamps the worker reports with its first epoch (``startup_*`` in cluster/train.py).

    .venv/bin/python bench/startup.py --corpus data/corpus [--runs 2]

Each run is a tiny one (H=16, one epoch on 48 utterances), so what it prints is start-up, not
training; the same run as a one-trial Tune grid follows (what a trial of ``gatelens grid`` adds).
The baseline, measured in the same run: a fresh ``python -c "import cluster.train"`` (the worker's
imports without Ray around them). The CPU and the load average are printed too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from study import machine

from cluster.grid import run_study
from cluster.runtime import ensure_ray
from cluster.train import TrainConfig, make_trainer

STAGES = [("fit() called -> worker process started (Train controller, placement group, worker actor)",
           "fit", "startup_process_started"),
          ("worker process started -> cluster.train imported from (Ray worker start-up, unpickling)",
           "startup_process_started", "startup_imports_began"),
          ("cluster.train's imports (torch, Ray Train, numba cells)", "startup_imports_began", "startup_imports_ended"),
          ("imports -> loop entered (Train session, torch.distributed process group)",
           "startup_imports_ended", "startup_loop_entered"),
          ("corpus read (train + dev), decoding graph estimated", "startup_loop_entered", "startup_corpus_loaded"),
          ("model built, resume state looked for, prepare_model", "startup_corpus_loaded", "startup_model_ready"),
          ("first epoch (training + dev scoring + its report)", "startup_model_ready", "first_report"),
          ("after the first epoch: test scoring, the final report, shutdown", "first_report", "fit_returned")]


def one_run(corpus: str, storage: Path, name: str) -> dict:
    config = TrainConfig(corpus=corpus, cell="gru", layers=1, hidden=16, epochs=1, batch_size=8,
                         max_train_utterances=48, max_eval_utterances=12)
    trainer = make_trainer(config, name, str(storage))
    t = {"fit": time.time()}
    result = trainer.fit()
    t["fit_returned"] = time.time()
    first = result.metrics_dataframe.iloc[0].to_dict()
    t.update({k: v for k, v in first.items() if k.startswith("startup_")})
    t["first_report"] = t["startup_model_ready"] + first["epoch_seconds"]
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    corpus = str(Path(args.corpus).resolve())
    storage = Path(tempfile.mkdtemp(prefix="gatelens-bench-startup-"))
    try:
        print(f"before: {machine()}", flush=True)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import cluster.train"], check=True)
        bare = time.perf_counter() - t
        ensure_ray()
        runs = [one_run(corpus, storage, f"startup{k}") for k in range(args.runs)]
        t = time.perf_counter()
        run_study("startup", "tiny", storage, corpus=corpus, custom=[{"cell": "gru", "layers": 1}])
        tune_s = time.perf_counter() - t
        print(f"after:  {machine()}")
        print(f"baseline: a fresh python importing cluster.train: {bare:.1f} s")
        print(f"{'stage':<96} " + " ".join(f"{'run ' + str(k + 1):>7}" for k in range(len(runs))))
        for label, a, b in STAGES:
            secs = [r[b] - r[a] if r.get(a) is not None and r.get(b) is not None else float("nan") for r in runs]
            print(f"{label:<96} " + " ".join(f"{s:>6.1f}s" for s in secs))
        print(f"{'fit() to its return':<96} " + " ".join(f"{r['fit_returned'] - r['fit']:>6.1f}s" for r in runs))
        print(f"{'the same run as a one-trial Tune grid (gatelens grid --profile tiny), call to return':<96} "
              f"{tune_s:>6.1f}s")
    finally:
        shutil.rmtree(storage, ignore_errors=True)


if __name__ == "__main__":
    main()
