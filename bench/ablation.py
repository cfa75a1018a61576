"""What the unit ablation's kept pass saves: one layer's ablation measured on a batch that keeps
every layer's unablated input (``analyses.unit_ablation._Passes``: layers l..L run), against the
way v1 ran it, each utterance through the whole model with the intervention; and v3, which keeps
the ablated layer's input projection too (the layer's recurrence rerun, not its input GEMM).
Decoding (the same in all) is left out. Prints the seconds of each and their ratios, measured in
the same run.

    .venv/bin/python bench/ablation.py [--cell lstm] [--layers 4] [--hidden 128] [--utterances 50]
    .venv/bin/python bench/ablation.py --design --layers 6 --hidden 512
    .venv/bin/python bench/ablation.py --groups --layers 6 --hidden 512 --corpus data/corpus

``--design``: the cost of the analysis's default design instead (``AblationParams``: per layer
phones + repeats ablations, the same again for each neighbouring k), from one measured ablation
per layer, against the model's plain forward pass one utterance at a time over ``--baseline``
utterances (what bench/service.py divides by), measured in the same run. The design's seconds
are the measured per-layer seconds times the design's count of ablations; decoding is left out.

``--groups [--corpus data/corpus]``: what the length groups (``length_groups``) are made of and
save: a frame's fixed cost in rows (fitted at H = 128 and at --hidden), and one ablation at layer 1
on one padded batch against the length groups, on the lengths of the analysis's seeded test draw.
"""

from __future__ import annotations

import argparse
import copy
import threading
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
    ap.add_argument("--groups", action="store_true",
                    help="length groups: the per-frame fixed cost in rows (OVERHEAD_ROWS), and one batch "
                         "against the length groups, on the lengths of --corpus's test draw")
    ap.add_argument("--corpus", help="--groups: an embedded corpus whose test split's seeded draw gives the lengths")
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
    if a.groups:
        return groups(a, model, utts, iv)
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
        unkept = copy.copy(passes)  # the same kept inputs, the projection not kept
        unkept.batches = [copy.copy(b) for b in passes.batches]
        for b in unkept.batches:
            b.keep_projection, b._local = False, threading.local()
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


def _best(fn, n: int = 5) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def groups(a, model, utts, iv) -> None:
    """The fixed cost of a frame in rows' worth of work (one layer's ablated recurrence at 1 and
    at 64 rows of 200 frames, fitted to a + b x rows, at H = 128 and at --hidden), then one
    ablation at layer 1 on one padded batch against the length groups, on the measured
    utterances' lengths (--corpus's test split, the analysis's seeded draw; else --frames')."""
    from analyses.unit_ablation import OVERHEAD_ROWS, AblationParams, length_groups

    print(f"{a.cell}; {os.cpu_count()} cores, {_cpu()}, 1 torch thread, load average {os.getloadavg()[0]:.2f}")
    rng = np.random.default_rng(1)
    with torch.inference_mode():
        for hidden in sorted({128, a.hidden}):
            one = build_model(ModelConfig(cell=a.cell, layers=1, hidden=hidden, num_targets=120), torch.zeros(40),
                              torch.ones(40))
            cut = Intervention("c", list(range(hidden // 8)), 0.0)
            per = {}
            for rows in (1, 64):
                batch = [SimpleNamespace(feats=rng.normal(size=(200, 40)).astype(np.float32)) for _ in range(rows)]
                passes = _Passes(one, batch, groups=[range(rows)])
                passes.ablated(1, cut)
                per[rows] = _best(lambda: passes.ablated(1, cut)) / 200
            b = (per[64] - per[1]) / 63
            print(f"  H = {hidden}: a frame {1e6 * per[1]:.1f} us at 1 row, {1e6 * per[64]:.1f} us at 64: fixed "
                  f"{1e6 * (per[1] - b):.1f} us, {1e6 * b:.2f} us a row: fixed / row = {(per[1] - b) / b:.1f} rows "
                  f"(the analysis takes OVERHEAD_ROWS = {OVERHEAD_ROWS:g})")
    if a.corpus:
        from cluster.data.kaldi import read_corpus

        split = read_corpus(a.corpus).split(AblationParams().split)
        pick = np.random.default_rng(AblationParams().seed).permutation(len(split.utt_ids))[:a.utterances]
        lengths = [len(split.load(split.utt_ids[i]).feats) for i in sorted(pick)]
        utts = [SimpleNamespace(feats=rng.normal(size=(n, 40)).astype(np.float32)) for n in lengths]
    lengths = [len(u.feats) for u in utts]
    cut_groups = length_groups(lengths)
    with torch.inference_mode():
        whole, grouped = _Passes(model, utts, groups=[range(len(utts))]), _Passes(model, utts)
        for p in (whole, grouped):
            p.ablated(1, iv)
        t_whole, t_grouped = (_best(lambda: p.ablated(1, iv), 3) for p in (whole, grouped))
    print(f"{a.cell} {a.layers}x{a.hidden}, {len(utts)} utterances ({sum(lengths)} frames, longest {max(lengths)}; "
          f"one batch pads to {max(lengths) * len(lengths) / sum(lengths):.2f}x the frames)")
    print(f"one ablation at layer 1 (layers 1..{a.layers} rerun): one batch {t_whole:.2f} s; {len(cut_groups)} "
          f"length groups of {[len(g) for g in cut_groups]} rows {t_grouped:.2f} s: {t_whole / t_grouped:.2f}x")


if __name__ == "__main__":
    main()
