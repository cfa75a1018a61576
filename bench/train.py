"""Training throughput per worker (frames/s) at the demo and paper shapes.

One worker's step as the trainer runs it (splice + CMVN, L layers, output layer, frame
cross-entropy, backward, clipping, Adam) on a padded batch of whole-utterance length, for each
cell and precision; the baseline is the fused ``nn.LSTM`` model (``lstm_fused``) at the same
precision, measured in the same run. The machine is shared and noisy: the configurations are
interleaved step by step, each one's fastest step is reported (noise only ever adds time), and
the load average is printed before and after; compare the ratios.

    .venv/bin/python bench/train.py [--quick] [--threads 1] [--shapes demo paper]
    .venv/bin/python bench/train.py --streams 16x40,16x80,64x40    # stream steps against whole utterances
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from cluster.models import ModelConfig, build_model
from cluster.streams import carry

SHAPES = {"demo": dict(hidden=128, layers=2, batch=16), "paper": dict(hidden=512, layers=4, batch=32)}
CELLS = ("lstm_fused", "lstm", "gru", "lstm_lazy")
PRECISIONS = ("fp32", "bf16")


def make_step(cell: str, hidden: int, layers: int, batch: int, frames: int, precision: str):
    torch.manual_seed(0)
    model = build_model(ModelConfig(cell=cell, layers=layers, hidden=hidden, num_targets=120, precision=precision),
                        torch.zeros(40), torch.ones(40))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, frames, 40)
    lengths = torch.full((batch,), frames)
    y = torch.randint(0, 120, (batch, frames))

    def step():
        loss = F.cross_entropy(model(x, lengths).reshape(-1, 120).float(), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()

    return step


def make_stream_step(cell: str, hidden: int, layers: int, streams: int, width: int):
    """A carried-state stream step (``chunk_width`` training): a window of ``width`` spliced frames
    on ``streams`` rows from the previous window's states (detached, one row reset per step, as
    utterances end), then loss, backward, clipping and Adam as above."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(cell=cell, layers=layers, hidden=hidden, num_targets=120),
                        torch.zeros(40), torch.ones(40))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(width, streams, model.config.input_dim)
    lengths = torch.full((streams,), width)
    y = torch.randint(0, 120, (streams, width))
    held = {"states": None, "k": 0}

    def step():
        fresh = torch.arange(streams) == held["k"] % streams
        held["k"] += 1
        logits, held["states"] = model(x, lengths, spliced=True, state=carry(held["states"], fresh))
        loss = F.cross_entropy(logits.reshape(-1, 120).float(), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()

    return step


def bench_streams(shape: dict, frames: int, steps: int, windows: list[tuple[int, int]]) -> None:
    """Whole-utterance steps (B x frames) against stream steps (streams x width), interleaved,
    fastest of each: the throughput side of ``chunk_width`` (accuracy: bench/study.py --modes)."""
    runs = {}
    for cell in ("lstm", "gru"):
        runs[cell, "whole"] = (make_step(cell, shape["hidden"], shape["layers"], shape["batch"], frames, "fp32"),
                               shape["batch"] * frames)
        for b, w in windows:
            runs[cell, f"{b}x{w}"] = (make_stream_step(cell, shape["hidden"], shape["layers"], b, w), b * w)
    # a stream step is shorter: time as many of them as make one whole-utterance step's frames
    reps = {k: max(1, (shape["batch"] * frames) // n) for k, (_, n) in runs.items()}
    for step, _ in runs.values():
        step()
    best = {k: float("inf") for k in runs}
    for _ in range(steps):
        for key, (step, _) in runs.items():
            t0 = time.perf_counter()
            for _ in range(reps[key]):
                step()
            best[key] = min(best[key], (time.perf_counter() - t0) / reps[key])
    print(f"streams vs whole utterances (H={shape['hidden']}, L={shape['layers']}, whole: B={shape['batch']} x "
          f"T={frames}), fp32, load average {os.getloadavg()[0]:.2f}:")
    for cell in ("lstm", "gru"):
        base = runs[cell, "whole"][1] / best[cell, "whole"]
        print(f"  {cell:5s} whole utterances: {base:8.0f} frames/s")
        for b, w in windows:
            key = (cell, f"{b}x{w}")
            rate = runs[key][1] / best[key]
            print(f"  {cell:5s} streams {b:>3} x {w:<3}   : {rate:8.0f} frames/s  ratio {rate / base:5.2f}")


def bench_shape(name: str, shape: dict, frames: int, steps: int, threads: int) -> None:
    runs = {(c, p): make_step(c, shape["hidden"], shape["layers"], shape["batch"], frames, p)
            for p in PRECISIONS for c in CELLS}
    for step in runs.values():
        step()  # warm-up: first-touch allocations, numba's cache load
    best = {k: float("inf") for k in runs}
    for _ in range(steps):
        for key, step in runs.items():
            t0 = time.perf_counter()
            step()
            best[key] = min(best[key], time.perf_counter() - t0)
    rate = {k: shape["batch"] * frames / t for k, t in best.items()}
    print(f"{name} shape (H={shape['hidden']}, L={shape['layers']}, B={shape['batch']}, T={frames}), "
          f"{threads} thread(s), load average {os.getloadavg()[0]:.2f}:")
    for p in PRECISIONS:
        base = rate["lstm_fused", p]
        print(f"  baseline nn.LSTM {p}: {base:8.0f} frames/s")
        for cell in CELLS[1:]:
            print(f"  {cell:10s} {p}: {rate[cell, p]:8.0f} frames/s  ratio {rate[cell, p] / base:5.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer steps, shorter utterances")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a worker's CPUs)")
    ap.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    ap.add_argument("--streams", default=None,
                    help="compare carried-state stream steps at the demo shape instead, e.g. 16x40,16x80,64x40")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    frames, steps = (100, 2) if args.quick else (260, 4)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), cpu capability "
          f"{torch.backends.cpu.get_cpu_capability()}, load average {os.getloadavg()[0]:.2f}")
    if args.streams:
        windows = [tuple(int(v) for v in bw.split("x")) for bw in args.streams.split(",")]
        bench_streams(SHAPES["demo"], frames, steps, windows)
        return
    for name in args.shapes:
        bench_shape(name, SHAPES[name], frames, steps, args.threads)


if __name__ == "__main__":
    main()
