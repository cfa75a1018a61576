"""What the unit ablation's kept pass saves: one layer's ablation measured on a batch that keeps
every layer's unablated input (``analyses.unit_ablation._Passes``: layers l..L run), against the
way v1 ran it, each utterance through the whole model with the intervention; and v3, which keeps
the ablated layer's input projection too (the layer's recurrence rerun, not its input GEMM).
Decoding (the same in all) is left out. Prints the seconds of each and their ratios, measured in
the same run.

    .venv/bin/python bench/ablation.py [--cell lstm] [--layers 4] [--hidden 128] [--utterances 50]
    .venv/bin/python bench/ablation.py --design --layers 6 --hidden 512

``--design``: the cost of the analysis's default design instead (``AblationParams``: per layer
phones + repeats ablations, the same again for each neighbouring k), from one measured ablation
per layer, against the model's plain forward pass one utterance at a time over ``--baseline``
utterances (what bench/service.py divides by), measured in the same run. The design's seconds
are the measured per-layer seconds times the design's count of ablations; decoding is left out.
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
    ap.add_argument("--design", action="store_true", help="the default design's cost against a forward pass")
    ap.add_argument("--baseline", type=int, default=40, help="--design: utterances of the forward-pass baseline")
    a = ap.parse_args()
    torch.set_num_threads(1)  # as the analysis's Ray task runs
    torch.manual_seed(0)
    model = build_model(ModelConfig(cell=a.cell, layers=a.layers, hidden=a.hidden, num_targets=120),
                        torch.zeros(40), torch.ones(40))
    rng = np.random.default_rng(0)
    utts = [SimpleNamespace(feats=rng.normal(size=(int(rng.integers(a.frames // 2, a.frames * 3 // 2)), 40))
                            .astype(np.float32)) for _ in range(a.utterances)]
    iv = Intervention("c", list(range(a.hidden // 8)), 0.0)
    if a.design:
        return design(a, model, utts, iv)
    with torch.inference_mode():
        t0 = time.perf_counter()
        for layer in range(1, a.layers + 1):
            for _ in range(a.ablations):
                for u in utts:
                    model(torch.from_numpy(u.feats), interventions={layer: iv})
        v1 = time.perf_counter() - t0
        v2, v3 = (kept_passes(model, utts, a.layers, a.ablations, iv, keep) for keep in (False, True))
    print(f"{a.cell} {a.layers}x{a.hidden}, {a.utterances} utterances, {a.layers} x {a.ablations} ablations; "
          f"{os.cpu_count()} cores, {_cpu()}, 1 torch thread")
    print(f"per utterance, whole model (v1): {v1:.2f} s; batched from the kept layer input (v2): {v2:.2f} s; "
          f"ratio {v1 / v2:.1f}x; and the ablated layer's input projection kept too (v3): {v3:.2f} s, "
          f"{v2 / v3:.2f}x v2")


def kept_passes(model, utts, layers: int, ablations: int, iv, keep: bool) -> float:
    t0 = time.perf_counter()
    passes = _Passes(model, utts, keep_projection=keep)
    for layer in range(1, layers + 1):
        for _ in range(ablations):
            passes.ablated(layer, iv)
    return time.perf_counter() - t0


def design(a, model, utts, iv) -> None:
    from analyses.unit_ablation import AblationParams

    p = AblationParams()
    k = min(p.k, max(1, a.hidden // 4))
    per_layer = (p.phones + p.repeats) * (1 + len({min(n, a.hidden // 4) for n in p.neighbour_ks} - {k}))
    base = utts[: a.baseline]
    with torch.inference_mode():
        _Passes(model, utts[:2]).ablated(1, iv)  # warm: compiled kernels loaded before either clock
        model(torch.from_numpy(utts[0].feats)[None])
        t0 = time.perf_counter()
        for u in base:
            model(torch.from_numpy(u.feats)[None])
        forward = time.perf_counter() - t0
        t0 = time.perf_counter()
        passes = _Passes(model, utts)
        kept = time.perf_counter() - t0
        layer_s, plain_s = [], []
        unkept = _Passes(model, utts[:1], keep_projection=False)
        unkept.inputs, unkept.model = passes.inputs, model  # the same kept inputs, the projection not kept
        for layer in range(1, a.layers + 1):
            passes.ablated(layer, iv)  # the layer's projection made once, as the analysis's first ablation does
            for runs, which in ((layer_s, passes), (plain_s, unkept)):  # interleaved: the same load on both
                t0 = time.perf_counter()
                which.ablated(layer, iv)
                runs.append(time.perf_counter() - t0)
    total = kept + per_layer * sum(layer_s)
    print(f"{a.cell} {a.layers}x{a.hidden}; {os.cpu_count()} cores, {_cpu()}, 1 torch thread, load average "
          f"{os.getloadavg()[0]:.2f}")
    print(f"forward pass, one utterance at a time, {len(base)} utterances ({sum(len(u.feats) for u in base)} frames): "
          f"{forward:.2f} s")
    print(f"ablation on {len(utts)} utterances: kept pass {kept:.2f} s; one ablation at layer 1..{a.layers}: "
          + ", ".join(f"{t:.2f}" for t in layer_s) + f" s; the default design ({per_layer} ablations per layer): "
          f"{total:.1f} s = {total / forward:.1f}x the forward pass (decoding not counted)")
    print(f"the same without the kept input projection (v2): one ablation at layer 1..{a.layers}: "
          + ", ".join(f"{t:.2f}" for t in plain_s) + f" s; the kept projection saves "
          f"{1 - sum(layer_s) / sum(plain_s):.0%} of the ablations' seconds")


if __name__ == "__main__":
    main()
