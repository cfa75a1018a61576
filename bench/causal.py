"""What the causal analyses cost, against a plain forward of the same frames (the baseline,
measured in the same run): a forward with units ablated inside the recurrence (what each step of
an ablation sweep runs), and linear CKA of every layer pair and the Hungarian unit matching of
two 4x512 checkpoints on 100 utterances.

    .venv/bin/python bench/causal.py [--quick] [--threads 2]

The checkpoints are untrained (the costs do not depend on the weights); the utterances are random
feature matrices of the embedded corpus' mean length (~260 frames).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from analyses.matching import linear_cka, match_units
from cluster.models import Intervention, ModelConfig, build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20 utterances, 2x256")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cell", default="lstm")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    layers, hidden, n = (2, 256, 20) if args.quick else (4, 512, 100)
    rng = np.random.default_rng(0)
    utts = [torch.from_numpy(rng.normal(size=(int(rng.integers(200, 320)), 40)).astype(np.float32)) for _ in range(n)]
    frames = sum(u.shape[0] for u in utts)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(build_model(ModelConfig(cell=args.cell, layers=layers, hidden=hidden, num_targets=120),
                                  torch.zeros(40), torch.ones(40)).eval())

    with torch.inference_mode():  # warm-up: first calls pay for allocation and kernel selection
        for m in models:
            m(utts[0].unsqueeze(0), torch.tensor([utts[0].shape[0]]))
    t0 = time.perf_counter()
    with torch.inference_mode():
        for m in models:
            for u in utts:
                m(u.unsqueeze(0), torch.tensor([u.shape[0]]))
    forward = time.perf_counter() - t0

    n_ablated = max(1, hidden // 50)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for m in models:
            for u in utts:
                m(u.unsqueeze(0), torch.tensor([u.shape[0]]),
                  interventions={layers // 2 + 1: Intervention("c", list(range(n_ablated)), 0.0)})
    ablated = time.perf_counter() - t0

    t0 = time.perf_counter()
    values = []
    with torch.inference_mode():
        for m in models:
            per = {}
            for u in utts:
                for k, v in m.capture(u, dtype=torch.float32, values=("c",)).items():
                    per.setdefault(int(k[1:].split(".")[0]), []).append(v.numpy())
            values.append({k: np.concatenate(v) for k, v in per.items()})
    capture = time.perf_counter() - t0

    t0 = time.perf_counter()
    cka = [[linear_cka(values[0][i], values[1][j]) for j in sorted(values[1])] for i in sorted(values[0])]
    t_cka = time.perf_counter() - t0
    t0 = time.perf_counter()
    for layer in sorted(values[0]):
        match_units(values[0][layer], values[1][layer])
    t_match = time.perf_counter() - t0

    print(f"{args.cell} {layers}x{hidden}, {n} utterances ({frames} frames), {args.threads} threads")
    print(f"  baseline: plain forward of both checkpoints  {forward:7.2f} s  ({2 * frames / forward:8.0f} frames/s)")
    print(f"  forward with {n_ablated} units of layer {layers // 2 + 1} ablated       {ablated:7.2f} s  "
          f"({2 * frames / ablated:8.0f} frames/s, {ablated / forward:5.2f}x the forward)")
    print(f"  capture of c, both checkpoints               {capture:7.2f} s  ({capture / forward:5.2f}x the forward)")
    print(f"  linear CKA, {len(cka)}x{len(cka[0])} layer pairs              {t_cka:7.2f} s  ({t_cka / forward:5.2f}x)")
    print(f"  Hungarian matching, {layers} layers of {hidden} units  {t_match:7.2f} s  ({t_match / forward:5.2f}x)")


if __name__ == "__main__":
    main()
