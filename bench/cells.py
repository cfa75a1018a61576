"""Speed of the recurrent cells, against torch.nn.LSTM (fp32) measured in the same run.

For each cell (lstm, gru, lstm_lazy on every layer, and the nn.LSTM reference lstm_fused) and
precision (fp32, bf16), with H=512, B=32, T=100 and L in {1, 4} layers, it times the whole
acoustic model (splice, L layers, output layer, frame cross-entropy), and prints:

  train fr/s   forward + backward frames per second, and its ratio to lstm_fused at the same
               precision (nn.LSTM bf16 is emulated in fp32 on CPUs without native bf16, as the
               cells' kernels emulate it: see cluster/models/kernels.py)
  fwd fr/s     inference forward (no_grad), no capture
  capture fr/s forward with capture of every value (c, m, i, f, o, g) to float16, and its ratio
               to the forward without capture
  --profile    also the GEMM share of one training step of each cell (torch.profiler: the self
               time of the matmul ops over the step's wall time; the rest is the frame kernels,
               Python and the other ops), the distance to a GEMM-bound step
  --stack      instead: seeds side by side (cluster/models/stack.py). For lstm and gru, H=128, 2
               layers, S = 3 and 5 seeds, the training step (forward, frame cross-entropy summed
               over the seeds, backward) of one SeedStack against the S models stepped one after
               the other, in the same rounds: carried-state streams (B=16 x T=40 per seed, from a
               carried state) and whole utterances (B=16 x T=260 per seed); scored frames per
               second (all seeds' frames) and the ratio stack / solo. 1 thread unless --threads.

These machines are shared and noisy: configurations are interleaved round by round, each
one's fastest round is reported (timeit's rule: noise only ever adds time), and the load
average is printed before and after; compare ratios, which come from the same rounds.

    .venv/bin/python bench/cells.py [--quick] [--layers 1 4] [--threads N] [--profile]
    .venv/bin/python bench/cells.py --stack [--quick] [--seeds 3 5]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from cluster.models import ModelConfig, SeedStack, build_model
from cluster.runtime import machine

CELLS = ("lstm_fused", "lstm", "gru", "lstm_lazy")
PRECISIONS = ("fp32", "bf16")


def make_case(cell, precision, layers, hidden, batch, frames, seed=0, device="cpu"):
    """(model, {"train", "fwd", "capture": calls}) at the given shape, on ``device``."""
    torch.manual_seed(seed)
    cfg = ModelConfig(cell=cell, layers=layers, hidden=hidden, num_targets=120, precision=precision,
                      lazy_layers="all")
    model = build_model(cfg, torch.zeros(40), torch.ones(40)).to(device)
    x = torch.randn(batch, frames, 40, device=device)
    y = torch.randint(0, 120, (batch, frames), device=device)
    lengths = torch.full((batch,), frames, device=device)

    def train():
        logits = model(x, lengths)
        loss = F.cross_entropy(logits.reshape(-1, 120), y.reshape(-1))
        model.zero_grad(set_to_none=True)
        loss.backward()

    def forward():
        with torch.no_grad():
            model(x, lengths)

    def capture():
        model.capture(x, lengths, dtype=torch.float16)

    return model, {"train": train, "fwd": forward, "capture": None if cell == "lstm_fused" else capture}


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench(layers, args):
    cases = {(c, p): make_case(c, p, layers, args.hidden, args.batch, args.frames)[1]
             for c in CELLS for p in PRECISIONS}
    times = {(key, kind): [] for key in cases for kind in ("train", "fwd", "capture")}
    for rnd in range(args.warmup + args.reps):
        for key, fns in cases.items():
            for kind, fn in fns.items():
                if fn is not None:
                    t = timed(fn)
                    if rnd >= args.warmup:
                        times[key, kind].append(t)
    n = args.batch * args.frames
    rate = {k: n / min(v) for k, v in times.items() if v}
    refs = {p: rate[("lstm_fused", p), "train"] for p in PRECISIONS}
    print(f"\nL={layers}  H={args.hidden}  B={args.batch}  T={args.frames}  (ratios against lstm_fused training "
          f"at the same precision: " + ", ".join(f"{p} {r:,.0f} frames/s" for p, r in refs.items()) + ")")
    print(f"{'cell':11s} {'prec':5s} {'train fr/s':>11s} {'x nn.LSTM':>9s} {'fwd fr/s':>10s} "
          f"{'capture fr/s':>12s} {'capt/fwd':>8s}")
    for (cell, prec) in cases:
        tr, fw, ref = rate[(cell, prec), "train"], rate[(cell, prec), "fwd"], refs[prec]
        cap = rate.get(((cell, prec), "capture"))
        cap_s = f"{cap:12,.0f} {cap / fw:8.2f}" if cap else f"{'-':>12s} {'-':>8s}"
        print(f"{cell:11s} {prec:5s} {tr:11,.0f} {tr / ref:9.2f} {fw:10,.0f} {cap_s}")


GEMM_OPS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "mkldnn::_linear_pointwise")


def gemm_share(layers, args):
    """Share of one training step's wall time spent in GEMMs, per cell and precision."""
    from torch.profiler import ProfilerActivity, profile

    print(f"\nGEMM share of a training step (L={layers}, torch.profiler, after a warm-up):")
    for cell in CELLS[1:]:
        for prec in PRECISIONS:
            train = make_case(cell, prec, layers, args.hidden, args.batch, args.frames)[1]["train"]
            train()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                wall = timed(train)
            gemm = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in GEMM_OPS) / 1e6
            print(f"  {cell:10s} {prec}: {gemm / wall:5.1%} of {wall * 1e3:7.1f} ms")


STACK_SHAPES = {"streams": (16, 40), "utterances": (16, 260)}   # per seed: B rows x T frames


def stack_case(cell, S, mode, seed=0):
    """(solo step, stacked step, scored frames per step) for S models of ``cell``: the same models,
    the same inputs (seed s's rows s*B..(s+1)*B-1), stepped alone one after the other or as one stack."""
    torch.manual_seed(seed)
    cfg = ModelConfig(cell=cell, layers=2, hidden=128, num_targets=120)
    models = [build_model(cfg, torch.zeros(40), torch.ones(40)) for _ in range(S)]
    stack = SeedStack(models)
    B, T = STACK_SHAPES[mode]
    y = torch.randint(0, 120, (S * B, T))
    if mode == "streams":   # a window of spliced frames continuing from a carried (detached) state
        x = torch.randn(T, S * B, cfg.input_dim)
        n_state = 1 if cell == "gru" else 2
        state = [tuple(0.1 * torch.randn(S * B, cfg.hidden) for _ in range(n_state)) for _ in range(cfg.layers)]
        def run(m, rows):
            return m.forward_spliced(x[:, rows], [tuple(t[rows] for t in layer) for layer in state])[0]
    else:
        feats = torch.randn(S * B, T, 40)
        def run(m, rows):
            return m(feats[rows])

    def loss(logits, rows):
        return F.cross_entropy(logits.reshape(-1, 120), y[rows].reshape(-1), reduction="sum")

    def solo():
        for s, m in enumerate(models):
            rows = slice(s * B, (s + 1) * B)
            m.zero_grad(set_to_none=True)
            loss(run(m, rows), rows).backward()

    def stacked():
        rows = slice(0, S * B)
        stack.zero_grad(set_to_none=True)
        loss(run(stack, rows), rows).backward()

    return solo, stacked, S * B * T


def cpu_name() -> str:
    return f"{machine()}, torch cpu capability {torch.backends.cpu.get_cpu_capability()}"


def stack_bench(args):
    cases = {(c, S, mode): stack_case(c, S, mode) for mode in STACK_SHAPES for c in ("lstm", "gru")
             for S in args.seeds}
    times = {(key, kind): [] for key in cases for kind in ("solo", "stacked")}
    cpu = {k: [] for k in times}
    for rnd in range(args.warmup + args.reps):
        for key, (solo, stacked, _) in cases.items():
            for kind, fn in (("solo", solo), ("stacked", stacked)):
                c0 = time.thread_time()
                t = timed(fn)
                if rnd >= args.warmup:
                    times[key, kind].append(t)
                    cpu[key, kind].append(time.thread_time() - c0)
    print(f"\nseeds side by side: training step, H=128, 2 layers, fp32, scored frames per second of all seeds "
          f"(fastest of {args.reps} rounds)")
    print("  wall: frames per wall second; cpu: per second of this thread's CPU time (on a shared, loaded machine\n"
          "  the time the thread waits for a core counts in wall but not in cpu)")
    print(f"{'mode':10s} {'B x T / seed':>12s} {'cell':5s} {'S':>2s} {'solo fr/s':>10s} {'stack fr/s':>10s} "
          f"{'stack/solo':>10s} {'cpu: solo':>10s} {'stack':>8s} {'ratio':>6s}")
    for (cell, S, mode), (_, _, frames) in cases.items():
        solo, stacked = (frames / min(times[(cell, S, mode), k]) for k in ("solo", "stacked"))
        c_solo, c_stacked = (frames / min(cpu[(cell, S, mode), k]) for k in ("solo", "stacked"))
        B, T = STACK_SHAPES[mode]
        print(f"{mode:10s} {f'{B} x {T}':>12s} {cell:5s} {S:2d} {solo:10,.0f} {stacked:10,.0f} {stacked / solo:10.2f} "
              f"{c_solo:10,.0f} {c_stacked:8,.0f} {c_stacked / c_solo:6.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 warm-up and 2 timed rounds instead of 2 and 7")
    ap.add_argument("--layers", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--profile", action="store_true", help="also the GEMM share of a training step")
    ap.add_argument("--stack", action="store_true", help="seeds side by side: one SeedStack against S solo models")
    ap.add_argument("--seeds", type=int, nargs="+", default=[3, 5], help="S for --stack")
    args = ap.parse_args()
    args.warmup, args.reps = (1, 2) if args.quick else (2, 7)
    if args.threads or args.stack:
        torch.set_num_threads(args.threads or 1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_name()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    if args.stack:
        stack_bench(args)
        print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
        return
    for layers in args.layers:
        bench(layers, args)
        if args.profile:
            gemm_share(layers, args)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
