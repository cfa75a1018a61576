"""Time of a study's analyses: each analysis in one process, and all of them as parallel Ray tasks.

Works on a study that was captured already (``gatelens analyse --study table1`` or ``make demo``),
on a copy of its store (the copy is written to; the original is not touched):

  serial    every (checkpoint, analysis): load (SQL) + run (numbers and figure) in this process,
            one torch thread: the per-analysis cost, and their sum
  parallel  the same work through ``service.study.analyse``: Ray tasks on the cluster's CPUs,
            the driver writing every result into the store

and prints parallel's wall time against the serial sum (the baseline, same run, same machine).

    .venv/bin/python bench/figures.py [--study table1] [--storage data/runs] [--store data/gatelens.duckdb]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="table1")
    ap.add_argument("--storage", default="data/runs")
    ap.add_argument("--store", default="data/gatelens.duckdb")
    args = ap.parse_args()

    import ray
    import torch

    from analyses.registry import checkpoint_analyses
    from cluster.runs import iter_runs
    from cluster.runtime import ensure_ray
    from service.store import Store
    from service.study import analyse

    src = Store(args.store)
    cks = list(iter_runs(args.storage, args.study))
    ids = [c.final_checkpoint.checkpoint_id for c in cks]
    captured = set(src.query("SELECT checkpoint_id FROM analyses WHERE analysis = 'capture' AND status = 'finished'")
                   ["checkpoint_id"]) if src.path.is_file() else set()
    missing = [c.name for c in cks if c.final_checkpoint.checkpoint_id not in captured]
    if not cks or missing:
        print(f"study {args.study} under {args.storage}: {len(cks)} runs, not captured in {src.path}: {missing}; "
              f"run gatelens analyse --study {args.study} first", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "store.duckdb")
        shutil.copy2(src.path, store.path)
        if src.samples_dir.is_dir():
            shutil.copytree(src.samples_dir, store.samples_dir)
        store.migrate()  # also points the copy's raw_sample view at the copied samples
        torch.set_num_threads(1)
        analyses = checkpoint_analyses()
        times: dict[str, list[float]] = {name: [] for name in analyses}
        t_all = time.perf_counter()
        for name, a in analyses.items():
            params = a.params()
            for cid in ids:
                t0 = time.perf_counter()
                a.run(a.load(store, cid, params), params, Path(tmp) / "serial")
                times[name].append(time.perf_counter() - t0)
        serial = time.perf_counter() - t_all
        ensure_ray()
        cpus = int(ray.cluster_resources().get("CPU", 1))
        t0 = time.perf_counter()
        jobs = analyse(store, ids, Path(tmp) / "parallel", list(analyses), rerun=True, progress=lambda m: None)
        parallel = time.perf_counter() - t0
    failed = [j.error for j in jobs if j.status != "finished"]
    print(f"study {args.study}: {len(ids)} checkpoints ({', '.join(c.name for c in cks)})")
    print(f"{'analysis':<20} {'median s':>9} {'max s':>7}   (one process, one thread, per checkpoint)")
    for name, t in times.items():
        print(f"{name:<20} {statistics.median(t):9.2f} {max(t):7.2f}")
    print(f"serial sum {serial:.1f} s; parallel Ray tasks on {cpus} CPUs incl. writes {parallel:.1f} s: "
          f"{serial / parallel:.2f}x the serial baseline" + (f"; FAILED: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
