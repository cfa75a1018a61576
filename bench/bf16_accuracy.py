"""What precision="bf16" costs in accuracy: the same small model trained in fp32 and in bf16.

Same seed, same initial weights, same batches in the same order; only the matmul precision
differs (cell state and gates stay fp32 either way). Prints dev frame accuracy (argmax over
the frame targets, valid frames only) of: the fp32-trained model in fp32, the bf16-trained
model in bf16, and the fp32-trained model evaluated in bf16 (inference-only cost), with the
differences, per seed and averaged. A second seed shows how large seed-to-seed noise is.

    .venv/bin/python bench/bf16_accuracy.py --corpus data/corpus [--epochs 3] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from cluster.batching import bucket_batches, pad_batch
from cluster.data.kaldi import read_corpus
from cluster.models import ModelConfig, build_model

IGNORE = -100


def load(corpus, split, limit):
    utts = list(corpus.split(split))[: limit or None]
    return [u.feats for u in utts], [u.targets for u in utts]


@torch.no_grad()
def frame_accuracy(model, feats, targets, batch):
    model.eval()
    lengths = np.array([len(f) for f in feats])
    right = total = 0
    for b in bucket_batches(lengths, batch, seed=0, epoch=0):
        x, n, y = pad_batch([feats[i] for i in b], [targets[i] for i in b], IGNORE)
        pred = model(x, n).argmax(-1)
        valid = y != IGNORE
        right += int((pred[valid] == y[valid]).sum())
        total += int(valid.sum())
    model.train()
    return right / total


def train(cfg, corpus, data, args, seed):
    torch.manual_seed(seed)
    model = build_model(cfg, corpus.cmvn_mean, corpus.cmvn_std)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    feats, targets = data
    lengths = np.array([len(f) for f in feats])
    t0 = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        for b in bucket_batches(lengths, args.batch, seed, epoch):
            x, n, y = pad_batch([feats[i] for i in b], [targets[i] for i in b], IGNORE)
            loss = F.cross_entropy(model(x, n).reshape(-1, cfg.num_targets), y.reshape(-1), ignore_index=IGNORE)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
    return model, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--cell", default="lstm")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--max-train", type=int, default=0, help="use only the first N training utterances")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: deterministic, and immune to a busy second core)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    corpus = read_corpus(args.corpus)
    data, dev = load(corpus, "train", args.max_train), load(corpus, "dev", 0)
    print(f"corpus {corpus.name}: {len(data[0])} train / {len(dev[0])} dev utterances, {corpus.num_targets} targets; "
          f"{args.cell} {args.layers}x{args.hidden}, {args.epochs} epochs, batch {args.batch}, Adam {args.lr}, "
          f"{torch.get_num_threads()} threads")
    rows = []
    for seed in args.seeds:
        acc, secs = {}, {}
        for prec in ("fp32", "bf16"):
            cfg = ModelConfig(cell=args.cell, layers=args.layers, hidden=args.hidden,
                              num_targets=corpus.num_targets, precision=prec)
            model, secs[prec] = train(cfg, corpus, data, args, seed)
            acc[prec] = frame_accuracy(model, *dev, args.batch)
            if prec == "fp32":
                acc["fp32->bf16"] = frame_accuracy(model.set_precision("bf16"), *dev, args.batch)
        rows.append(acc)
        print(f"seed {seed}: dev frame acc  fp32 {acc['fp32']:.4f}  bf16 {acc['bf16']:.4f}  "
              f"(bf16 - fp32 {100 * (acc['bf16'] - acc['fp32']):+.2f} points)  fp32 weights in bf16 "
              f"{acc['fp32->bf16']:.4f} ({100 * (acc['fp32->bf16'] - acc['fp32']):+.2f})  "
              f"train time fp32 {secs['fp32']:.0f} s, bf16 {secs['bf16']:.0f} s")
    if len(rows) > 1:
        def mean(k):
            return statistics.mean(r[k] for r in rows)
        spread = max(r["fp32"] for r in rows) - min(r["fp32"] for r in rows)
        print(f"mean over {len(rows)} seeds: fp32 {mean('fp32'):.4f}  bf16 {mean('bf16'):.4f}  "
              f"(bf16 - fp32 {100 * (mean('bf16') - mean('fp32')):+.2f} points; fp32 seed-to-seed spread "
              f"{100 * spread:.2f} points)")


if __name__ == "__main__":
    main()
