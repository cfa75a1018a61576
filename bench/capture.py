"""Capture + summarise throughput against forward-only, and peak memory against utterance count.

1. Throughput: one process, one thread (what each Ray task gets), the same model and the same
   length-sorted batches. Forward-only runs ``model(feats, lengths)``; capture runs
   ``model.capture`` (float32 values of every unit) and feeds every valid frame to the summaries
   (histograms, moments, range shares, per-phone irregularity). The two alternate, --repeats
   times each, and the best of each is compared (this machine is shared: the best run is the
   least disturbed one). Target: capture / forward >= 0.7.
2. Memory: the capture of N and of 2N utterances, each in a fresh process; peak RSS of each
   (os.wait4). Target: within 10%.

    .venv/bin/python bench/capture.py [--corpus data/corpus] [--cell lstm --cell gru] [--layers 4 --hidden 512]
    .venv/bin/python bench/capture.py --quick      # fewer utterances and repeats: about a minute

Without --corpus, a corpus of 400 utterances is generated in a temporary directory (~20 s). Each
throughput run is warmed up first, so numba's first-call compile (or the load of its cached build)
is never timed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# Run as `python bench/X.py`, this folder comes first on sys.path, and bench/service.py would
# shadow the service package: put the repository root first.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def model_for(cell: str, layers: int, hidden: int, precision: str, corpus):
    from cluster.models import ModelConfig, build_model

    torch.manual_seed(0)
    cfg = ModelConfig(cell=cell, layers=layers, hidden=hidden, num_targets=corpus.num_targets, precision=precision)
    return build_model(cfg, corpus.cmvn_mean, corpus.cmvn_std).eval()


def throughput(args, corpus, cell: str) -> tuple[float, float]:
    from cluster.batching import pad_batch
    from cluster.capture import make_batches, summarise_batches
    from cluster.summaries import UnitSummary, paper_rule

    torch.set_num_threads(1)
    model = model_for(cell, args.layers, args.hidden, args.precision, corpus)
    split = corpus.split(args.split)
    ids = sorted(split.utt_ids[: args.utterances], key=lambda u: -len(split.alignments[u].phones))
    frames = sum(len(split.alignments[u].phones) for u in ids)
    batches = make_batches(split, ids, args.batch_size, args.max_frames)
    feats = [pad_batch([split.load(u).feats.copy() for u in b]) for b in batches]  # loading is not timed

    def forward():
        with torch.inference_mode():
            for x, lengths in feats:
                model(x, lengths)

    def capture():
        s = UnitSummary(cell, len(corpus.phones), rules=(paper_rule(cell),))
        summarise_batches(model, split, ids, s, args.batch_size, args.max_frames)
        assert s.frames == frames

    best = {"forward": np.inf, "capture": np.inf}
    capture()  # warm-up: numba's compile or cache load, first-touch allocations
    for _ in range(args.repeats):
        for name, fn in (("forward", forward), ("capture", capture)):
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return frames / best["forward"], frames / best["capture"]


def peak_rss_mib(args, cell: str, utterances: int) -> float:
    """Peak RSS of a fresh process that captures `utterances` utterances."""
    code = (
        "import sys, torch; sys.path.insert(0, %r)\n"
        "torch.set_num_threads(1)\n"
        "from bench.capture import model_for\n"
        "from cluster.capture import summarise_batches\n"
        "from cluster.data.kaldi import read_corpus\n"
        "from cluster.summaries import UnitSummary, paper_rule\n"
        "corpus = read_corpus(%r); split = corpus.split(%r)\n"
        "model = model_for(%r, %d, %d, %r, corpus)\n"
        "ids = split.utt_ids[:%d]\n"
        "ids = sorted(ids, key=lambda u: -len(split.alignments[u].phones))\n"
        "s = UnitSummary(%r, len(corpus.phones), rules=(paper_rule(%r),))\n"
        "summarise_batches(model, split, ids, s, %d, %d)\n"
        "print(s.frames)\n"
    ) % (str(Path(__file__).resolve().parents[1]), str(args.corpus), args.split, cell, args.layers, args.hidden,
         args.precision, utterances, cell, cell, args.batch_size, args.max_frames)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(p.pid, 0)
    out = p.stdout.read().strip()
    if status != 0:
        raise RuntimeError(f"memory probe for {utterances} utterances failed (status {status})")
    return usage.ru_maxrss / 1024, int(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", help="corpus directory (default: generate 400 utterances in a temp dir)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--cell", action="append", help="lstm, gru, lstm_lazy (repeatable; default: lstm and gru)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--utterances", type=int, default=60, help="utterances for the throughput runs")
    ap.add_argument("--memory-utterances", type=int, default=100, help="N for the N vs 2N memory runs")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-frames", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true",
                    help="a quick look: 20 utterances, 2 repeats, memory runs of 30 and 60 utterances")
    args = ap.parse_args()
    if args.quick:
        args.utterances, args.repeats, args.memory_utterances = 20, 2, 30
    cells = args.cell or ["lstm", "gru"]

    from cluster.data.kaldi import read_corpus

    with tempfile.TemporaryDirectory() as tmp:
        if not args.corpus:
            import ray

            from cluster.data.embedded import prepare_embedded

            # A private local cluster: the bench must not lean on (or wait for) someone else's.
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
            args.corpus = Path(tmp) / "corpus"
            t0 = time.perf_counter()
            prepare_embedded(args.corpus, utterances=400, seed=0, shard_size=200)
            print(f"generated a 400-utterance corpus in {time.perf_counter() - t0:.0f} s")
        corpus = read_corpus(args.corpus)
        print(f"{args.layers} x {args.hidden} models, {args.precision}, 1 thread, batches of <= {args.batch_size} "
              f"utterances / {args.max_frames} frames, {args.split} split of {args.corpus}")
        for cell in cells:
            fwd, cap = throughput(args, corpus, cell)
            print(f"{cell:9s} forward-only {fwd:7.0f} frames/s   capture + summarise {cap:7.0f} frames/s   "
                  f"ratio {cap / fwd:.2f}")
        n = args.memory_utterances
        for cell in cells[:1]:
            (m1, f1), (m2, f2) = peak_rss_mib(args, cell, n), peak_rss_mib(args, cell, 2 * n)
            print(f"{cell:9s} peak RSS: {n} utts ({f1} frames) {m1:6.0f} MiB, {2 * n} utts ({f2} frames) "
                  f"{m2:6.0f} MiB: ratio {m2 / m1:.3f}")


if __name__ == "__main__":
    main()
