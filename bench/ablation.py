"""What the unit ablation's kept pass saves: one layer's ablation measured on a batch that keeps
every layer's unablated input (``analyses.unit_ablation._Passes``: layers l..L run), against the
way v1 ran it, each utterance through the whole model with the intervention. Decoding (the same
in both) is left out. Prints the seconds of each and their ratio, measured in the same run.

    .venv/bin/python bench/ablation.py [--cell lstm] [--layers 4] [--hidden 128] [--utterances 50]
"""

from __future__ import annotations

import argparse
import os
import time
from types import SimpleNamespace

import numpy as np
import torch

from analyses.stats import _cpu
from analyses.unit_ablation import _Passes
from cluster.models import Intervention, ModelConfig, build_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cell", default="lstm")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--utterances", type=int, default=50)
    ap.add_argument("--frames", type=int, default=250)
    ap.add_argument("--ablations", type=int, default=8, help="ablations per layer (top + random draws)")
    a = ap.parse_args()
    torch.set_num_threads(1)  # as the analysis's Ray task runs
    torch.manual_seed(0)
    model = build_model(ModelConfig(cell=a.cell, layers=a.layers, hidden=a.hidden, num_targets=120),
                        torch.zeros(40), torch.ones(40))
    rng = np.random.default_rng(0)
    utts = [SimpleNamespace(feats=rng.normal(size=(int(rng.integers(a.frames // 2, a.frames * 3 // 2)), 40))
                            .astype(np.float32)) for _ in range(a.utterances)]
    iv = Intervention("c", list(range(a.hidden // 8)), 0.0)
    with torch.inference_mode():
        t0 = time.perf_counter()
        for layer in range(1, a.layers + 1):
            for _ in range(a.ablations):
                for u in utts:
                    model(torch.from_numpy(u.feats), interventions={layer: iv})
        v1 = time.perf_counter() - t0
        t0 = time.perf_counter()
        passes = _Passes(model, utts)
        for layer in range(1, a.layers + 1):
            for _ in range(a.ablations):
                passes.ablated(layer, iv)
        v2 = time.perf_counter() - t0
    print(f"{a.cell} {a.layers}x{a.hidden}, {a.utterances} utterances, {a.layers} x {a.ablations} ablations; "
          f"{os.cpu_count()} cores, {_cpu()}, 1 torch thread")
    print(f"per utterance, whole model (v1): {v1:.2f} s; batched from the kept layer input (v2): {v2:.2f} s; "
          f"ratio {v1 / v2:.1f}x")


if __name__ == "__main__":
    main()
