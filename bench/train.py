"""Training throughput per worker (frames/s) at the demo and paper shapes.

One worker's step as the trainer runs it (splice + CMVN, L layers, output layer, frame
cross-entropy, backward, clipping, Adam) on a padded batch of whole-utterance length, for each
cell; the baseline is the fused ``nn.LSTM`` model (``lstm_fused``) measured in the same run.

    .venv/bin/python bench/train.py [--quick] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from cluster.models import ModelConfig, build_model

SHAPES = {"demo": dict(hidden=128, layers=2, batch=16), "paper": dict(hidden=512, layers=4, batch=32)}


def frames_per_s(cell: str, hidden: int, layers: int, batch: int, frames: int, steps: int, precision: str) -> float:
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

    step()  # warm-up
    best = float("inf")
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t0)
    return batch * frames / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer steps, shorter utterances")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a worker's CPUs)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    frames, steps = (100, 2) if args.quick else (260, 4)
    for name, shape in SHAPES.items():
        base = frames_per_s("lstm_fused", shape["hidden"], shape["layers"], shape["batch"], frames, steps, "fp32")
        print(f"{name} shape (H={shape['hidden']}, L={shape['layers']}, B={shape['batch']}, T={frames}), "
              f"{args.threads} thread(s): baseline nn.LSTM fp32 {base:8.0f} frames/s")
        for cell in ("lstm", "gru", "lstm_lazy"):
            for precision in ("fp32", "bf16"):
                fps = frames_per_s(cell, shape["hidden"], shape["layers"], shape["batch"], frames, steps, precision)
                print(f"  {cell:10s} {precision}: {fps:8.0f} frames/s  ratio {fps / base:5.2f}")


if __name__ == "__main__":
    main()
