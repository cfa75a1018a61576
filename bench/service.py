"""Time from a checkpoint's appearance in the training storage to its analyses being queryable.

1. End to end: a checkpoint file lands in an empty storage; one watcher pass (``run_pass``, the
   same code the detached actor runs) captures it, runs every analysis as Ray tasks and ingests;
   the clock stops when ``gatelens sql`` can read its finished analyses.
2. The split, running the same steps one at a time: capture + summaries (sharded Ray tasks),
   ingest of the capture rows, then per analysis: SQL read, figures (a Ray task), ingest.
Baseline, measured in the same run: a plain forward pass of the model over the same utterances
(no capture, no Ray), so the printed ratio says what the service adds to the model's own cost.

    .venv/bin/python bench/service.py [--corpus DIR] [--utterances 100] [--hidden 128 --layers 2]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

# Run as `python bench/service.py`, this file's folder comes first on sys.path and its name would
# hide the `service` package it benchmarks.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import torch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", help="an embedded corpus (default: generate 300 utterances)")
    ap.add_argument("--utterances", type=int, default=100)
    ap.add_argument("--cell", default="lstm")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=128)
    args = ap.parse_args()

    from analyses.registry import checkpoint_analyses, run_analysis
    from cluster.capture import CaptureConfig, capture
    from cluster.models import checkpoint_id
    from cluster.data.embedded import prepare_embedded
    from cluster.data.kaldi import read_corpus
    from cluster.decode import estimate_graph
    from cluster.models import ModelConfig, build_model, save_checkpoint
    from cluster.runtime import ensure_ray
    from cluster.summaries import SUMMARY_VERSION
    from service.scheduler import WatchConfig, run_pass
    from service.store import Store

    import ray

    ensure_ray()
    tmp = Path(tempfile.mkdtemp(prefix="gatelens-bench-"))
    try:
        corpus_dir = Path(args.corpus) if args.corpus else tmp / "corpus"
        if not args.corpus:
            prepare_embedded(corpus_dir, utterances=300, seed=0)
        corpus = read_corpus(corpus_dir)
        torch.manual_seed(0)
        model = build_model(ModelConfig(cell=args.cell, layers=args.layers, hidden=args.hidden,
                                        num_targets=corpus.num_targets), corpus.cmvn_mean, corpus.cmvn_std).eval()
        graph = estimate_graph([(u.phones, u.targets) for u in corpus.split("train")], corpus.num_targets,
                               phone_symbols=corpus.phones)
        staged = save_checkpoint(tmp / "staged.pt", model, corpus.identity, extra={
            "decode_graph": graph.to_dict(), "stamps": {"config": {"corpus": str(corpus_dir.resolve())}}})

        # baseline: the model's own forward pass over the same utterances
        split = corpus.split("test")
        ids = split.utt_ids[: args.utterances]
        utts = [split.load(u) for u in ids]
        torch.set_num_threads(1)
        t0 = time.perf_counter()
        with torch.no_grad():
            for u in utts:
                model(torch.from_numpy(u.feats)[None])
        forward_s = time.perf_counter() - t0

        # 1. end to end through a watcher pass
        storage = tmp / "runs"
        target = storage / "bench" / "runs" / "run" / "checkpoint_000000" / "model.pt"
        target.parent.mkdir(parents=True)
        config = WatchConfig(storage=str(storage), store=str(tmp / "e2e.duckdb"), figures=str(tmp / "figs"),
                             utterances=args.utterances, settle=0.0).resolved()
        t0 = time.perf_counter()
        shutil.copy(staged, target)
        run_pass(config, progress=lambda m: None)
        done = Store(config.store).query("SELECT count(*) AS n FROM analyses WHERE status = 'finished'")["n"][0]
        e2e = time.perf_counter() - t0

        # 2. the split, step by step
        store = Store(tmp / "split.duckdb")
        cid = checkpoint_id(target, {"arch": args.cell, "layers": args.layers, "hidden": args.hidden,
                                     "residual": False})
        t0 = time.perf_counter()
        result = capture(CaptureConfig(checkpoint=str(target), utterances=args.utterances, sample=3, checkpoint_id=cid))
        t_capture = time.perf_counter() - t0
        t0 = time.perf_counter()
        store.ingest(cid, "capture", SUMMARY_VERSION, result.frames, params=result.params,
                     sample=result.sample, checkpoint=result.checkpoint_row)
        t_ingest = time.perf_counter() - t0
        task = ray.remote(num_cpus=1)(run_analysis)
        split_rows = []
        for name, a in checkpoint_analyses().items():
            p = a.params.from_dict(None)
            t0 = time.perf_counter()
            inputs = a.load(store, cid, p)
            t_read = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = ray.get(task.remote(name, inputs, p.to_dict(), str(tmp / "figs2")))
            t_fig = time.perf_counter() - t0
            t0 = time.perf_counter()
            store.ingest_output(out)
            split_rows.append((name, t_read, t_fig, time.perf_counter() - t0))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    frames = sum(len(u.feats) for u in utts)
    print(f"model {args.cell} {args.layers}x{args.hidden}, {args.utterances} test utterances ({frames} frames)")
    print(f"baseline: forward pass alone          {forward_s:7.2f} s")
    print(f"appearance -> analyses queryable      {e2e:7.2f} s  ({done} analyses finished; "
          f"ratio to baseline {e2e / forward_s:.1f}x)")
    print("split (steps run one at a time):")
    print(f"  capture + summaries (Ray tasks)     {t_capture:7.2f} s")
    print(f"  ingest of capture rows              {t_ingest:7.2f} s")
    for name, t_read, t_fig, t_ing in split_rows:
        print(f"  {name:20s} read {t_read:5.2f} s  figures {t_fig:6.2f} s  ingest {t_ing:5.2f} s")
    total_fig = sum(r[2] for r in split_rows)
    total_ing = t_ingest + sum(r[3] for r in split_rows)
    print(f"  totals: capture+summaries {t_capture:.2f} s, figures {total_fig:.2f} s, "
          f"ingest {total_ing:.2f} s, reads {sum(r[1] for r in split_rows):.2f} s")


if __name__ == "__main__":
    main()
