"""The hand-written cells on one device: correct against float64 on CPU, and fast against nn.LSTM.

One command a session with a GPU runs once; `--device cpu --smoke` is the same code at tiny
shapes, so the suite runs it on every machine (tests/bench/test_gpu_check.py).

Correctness, for lstm, gru and lstm_lazy (lazy in every layer), 1 and 3 layers, residual off
and on, fp32 and bf16, on a padded batch (lengths from T down to T/3): the model on the chosen
device against a float64 copy of the same weights on CPU, with the trainer's loss (frame
cross-entropy over valid frames). Compared, on valid frames only (padded ones hold whatever
the padding produced):
  forward   the logits and every value capture() returns (L{k}.c, m, i, f, o, g)
  grad      the gradient of every parameter
each as max |device - reference| / max |reference| over the tensor, so gates, cell states,
logits and gradients of any scale share one tolerance per precision (TOLERANCE below).
  capture   the top layer's captured output (with the residual sums redone) fed to the output
            layer must give the training pass's logits bit for bit: capture runs the same
            Function as training, so anything but 0 means it does not.
The worst error per case is printed; any case over tolerance makes the exit status 1, and the
failing cases are named on stderr and in the last line.

Speed, at each shape H,L,B,T (default the paper's H=512, L=4, T=300 with B=64, then B=32; the
last line quotes the first shape), for each cell and nn.LSTM (lstm_fused) in fp32 and bf16, the
whole acoustic model as bench/cells.py times it: train (forward + backward), fwd (no_grad) and capture (every value to float16). Rounds are
interleaved and each configuration's fastest round is kept (cells.py's rule). Unlike cells.py,
"x nn.LSTM" is against nn.LSTM at the same precision: on a GPU, bf16 cuDNN is the competitor a
bf16 cell has to be measured against. CUDA times come from CUDA events around each call after a
warm-up round; CPU times from time.perf_counter. "step MiB" is the CUDA allocator's peak during
one training step above what was allocated before it (every configuration stays resident so
that rounds can interleave, so the absolute peak would count the others' weights); on CPU
only the process's peak RSS is printed, once. Timed rounds stop early, and later shapes are
skipped, once the run's --budget-s would be exceeded, and the JSON is rewritten after each
section, so a run in a 5-minute slot ends with results rather than being killed without any.

    .venv/bin/python bench/gpu_check.py --device cpu --smoke
    python bench/gpu_check.py --out gpu_check.json          # on a machine with CUDA
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

# Run as `python bench/gpu_check.py` on a machine where gatelens is not installed (the GPU
# machine gets a bare copy of the tree): the repository root must come first on sys.path, and
# before bench/, whose service.py would shadow the service package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cells import make_case  # noqa: E402  (bench/cells.py: the same cases, timed the same way)
from cluster.models import ModelConfig, build_model  # noqa: E402

CELLS = ("lstm", "gru", "lstm_lazy")
PRECISIONS = ("fp32", "bf16")
LAYERS = (1, 3)
IGNORE = -100                      # the trainer's padding target
NUM_TARGETS = 120
OUTPUT_VALUE = {"lstm": "m", "gru": "c", "lstm_lazy": "m"}   # what a layer hands upward
HEAVY = ("ray", "duckdb", "polars", "kaldiio")                # absent on the GPU machine

# Scaled max error allowed (see the module docstring). Measured on CPU (AVX2, torch 2.13), the
# worst case over all 24 was fp32 forward 2.0e-6 / grad 1.9e-6 (at H=512) and bf16 forward 1.9e-2
# / grad 2.7e-2 (at the smoke shape; 5e-3 / 9e-3 at H=512). The bounds leave 10x or more for fp32
# and about 2x at the smoke shape (5x at H=512) for bf16, where the error is the rounding of the
# GEMM operands, the same on any device; one weight moved by 1.0 (--plant-error) gives 0.2-2.
TOLERANCE = {"fp32": {"forward": 2e-5, "grad": 5e-5}, "bf16": {"forward": 5e-2, "grad": 5e-2}}

PAPER_SHAPES = ("512,4,64,300", "512,4,32,300")   # the target (B=64) first: the summary quotes it
SMOKE_SHAPE, SMOKE_CHECK = "16,2,3,12", "16,3,12"


# ---------------------------------------------------------------------------- correctness

def case_id(cell: str, layers: int, residual: bool, precision: str) -> str:
    return f"{cell}-L{layers}-{'res' if residual else 'plain'}-{precision}"


def case_ids() -> list[str]:
    return [case_id(c, n, r, p) for c in CELLS for n in LAYERS for r in (False, True) for p in PRECISIONS]


def padded_batch(batch: int, frames: int, seed: int):
    """feats [B, T, 40], lengths from T down to about T/3, targets with IGNORE on padding."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([frames - (2 * frames // 3) * b // max(batch - 1, 1) for b in range(batch)])
    feats = torch.randn(batch, frames, 40, generator=g)
    y = torch.randint(0, NUM_TARGETS, (batch, frames), generator=g)
    mask = torch.arange(frames)[None, :] < lengths[:, None]
    return feats, lengths, y.masked_fill(~mask, IGNORE), mask


def run_case(model, feats, lengths, y, mask, dtype):
    """One training pass and one capture of `model` on its own device, everything moved to CPU.

    Returns (values, grads, capture_gap): values are the logits and every captured value on
    valid frames, grads every parameter's gradient, capture_gap the largest difference between
    the training pass's logits and the output layer applied to the captured top-layer outputs.
    """
    dev = next(model.parameters()).device
    feats, lengths, y = feats.to(dev, dtype), lengths.to(dev), y.to(dev)
    model.zero_grad(set_to_none=True)
    logits = model(feats, lengths)
    F.cross_entropy(logits.reshape(-1, NUM_TARGETS), y.reshape(-1), ignore_index=IGNORE).backward()
    grads = {n: p.grad.detach().cpu() for n, p in model.named_parameters()}
    values = model.capture(feats, lengths, dtype=dtype)
    cfg = model.config
    top = None
    for k, cell in enumerate(cfg.layer_cells(), 1):
        y_k = values[f"L{k}.{OUTPUT_VALUE[cell]}"]
        top = y_k + top if (cfg.residual and k > 1) else y_k
    top = top.transpose(0, 1).contiguous()              # time-major, the layout forward fed the output layer
    bf16 = cfg.precision == "bf16" and top.dtype == torch.float32
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
        from_capture = model.output(top).to(dtype).transpose(0, 1)
    gap = (from_capture - logits.detach()).abs().max().item()
    m = mask.to(dev)
    out = {"logits": logits.detach()[m].cpu(), **{k: v[m].cpu() for k, v in values.items()}}
    return out, grads, gap


def scaled_errors(got: dict, ref: dict) -> dict[str, float]:
    """max |got - ref| / max |ref| per tensor, in float64."""
    out = {}
    for name, r in ref.items():
        scale = r.abs().max().clamp_min(1e-30)
        out[name] = ((got[name].double() - r).abs().max() / scale).item()
    return out


def check_case(cell, layers, residual, shape, device, plant, seed=0) -> list[dict]:
    """Both precisions of one (cell, layers, residual) against one float64 CPU reference."""
    hidden, batch, frames = shape
    torch.manual_seed(seed)
    cfg = ModelConfig(cell=cell, layers=layers, hidden=hidden, num_targets=NUM_TARGETS, residual=residual,
                      lazy_layers="all")
    base = build_model(cfg, torch.zeros(40), torch.ones(40))
    feats, lengths, y, mask = padded_batch(batch, frames, seed)
    ref_vals, ref_grads, _ = run_case(copy.deepcopy(base).double(), feats, lengths, y, mask, torch.float64)
    rows = []
    for prec in PRECISIONS:
        cid = case_id(cell, layers, residual, prec)
        model = copy.deepcopy(base).set_precision(prec).to(device)
        if plant == cid:
            with torch.no_grad():
                model.layers[-1].W_cm.view(-1)[0] += 1.0     # several times the init bound at any H here
        vals, grads, gap = run_case(model, feats, lengths, y, mask, torch.float32)
        fwd, grd = scaled_errors(vals, ref_vals), scaled_errors(grads, ref_grads)
        tol = TOLERANCE[prec]
        worst_f, worst_g = max(fwd, key=fwd.get), max(grd, key=grd.get)
        why = []
        if not fwd[worst_f] <= tol["forward"]:           # written so that NaN fails
            why.append(f"forward {worst_f} {fwd[worst_f]:.2e} > {tol['forward']:.0e}")
        if not grd[worst_g] <= tol["grad"]:
            why.append(f"grad {worst_g} {grd[worst_g]:.2e} > {tol['grad']:.0e}")
        if gap != 0.0:
            why.append(f"capture differs from the training pass by {gap:.2e}")
        rows.append({"case": cid, "cell": cell, "layers": layers, "residual": residual, "precision": prec,
                     "forward_error": fwd[worst_f], "forward_worst": worst_f, "grad_error": grd[worst_g],
                     "grad_worst": worst_g, "capture_gap": gap, "tolerance": tol, "ok": not why,
                     "why": "; ".join(why), "forward_errors": fwd, "grad_errors": grd})
    return rows


def check_all(shape, device, plant) -> list[dict]:
    """Every case, each printed as it finishes, so that a run cut short shows how far it got."""
    hidden, batch, frames = shape
    print(f"\ncorrectness on {device} against float64 on CPU: H={hidden}  B={batch}  T={frames}  "
          f"(lengths {frames}..{frames - 2 * frames // 3}), scaled max error, tolerances "
          + ", ".join(f"{p} {t['forward']:.0e} / {t['grad']:.0e}" for p, t in TOLERANCE.items()), flush=True)
    print(f"{'case':24s} {'forward':>9s} {'worst':8s} {'grad':>9s} {'worst':22s} {'capture':>7s}  ok")
    rows = []
    for cell in CELLS:
        for layers in LAYERS:
            for residual in (False, True):
                for r in check_case(cell, layers, residual, shape, device, plant):
                    print(f"{r['case']:24s} {r['forward_error']:9.2e} {r['forward_worst']:8s} {r['grad_error']:9.2e} "
                          f"{r['grad_worst']:22s} {r['capture_gap']:7.0e}  {'ok' if r['ok'] else 'FAIL'}", flush=True)
                    rows.append(r)
    return rows


# ---------------------------------------------------------------------------------- speed

SPEED_CELLS = ("lstm_fused",) + CELLS


def speed_case(cell, precision, shape, device, seed=0):
    """bench/cells.py's case on `device`: the model, and its train / fwd / capture calls."""
    hidden, layers, batch, frames = shape
    return make_case(cell, precision, layers, hidden, batch, frames, seed=seed, device=device)


def clock(device: torch.device, fn) -> float:
    """Seconds of one call: on CUDA between two events on the stream, once the queue has drained."""
    if device.type != "cuda":
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(device)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def step_mib(device: torch.device, model, train) -> float | None:
    """CUDA allocator peak of one training step above what was allocated before it (None on CPU)."""
    if device.type != "cuda":
        return None
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    train()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def bench_shape(shape, device, reps: int, deadline: float) -> tuple[list[dict], int]:
    """One warm-up round, then up to `reps` timed rounds while `deadline` (perf_counter) allows."""
    cases = {(c, p): speed_case(c, p, shape, device) for c in SPEED_CELLS for p in PRECISIONS}
    times = {(key, kind): [] for key in cases for kind in ("train", "fwd", "capture")}
    done = 0
    for rnd in range(1 + reps):
        t0 = time.perf_counter()
        for key, (_, fns) in cases.items():
            for kind, fn in fns.items():
                if fn is not None:
                    t = clock(device, fn)
                    if rnd > 0:
                        times[key, kind].append(t)
        done = rnd
        if rnd > 0 and time.perf_counter() + (time.perf_counter() - t0) > deadline:
            break
    hidden, layers, batch, frames = shape
    n = batch * frames
    rate = {k: n / min(v) for k, v in times.items() if v}
    rows = []
    for (cell, prec), (model, fns) in cases.items():
        ref = rate[("lstm_fused", prec), "train"]
        tr, fw = rate[(cell, prec), "train"], rate[(cell, prec), "fwd"]
        cap = rate.get(((cell, prec), "capture"))
        rows.append({"cell": cell, "precision": prec, "H": hidden, "L": layers, "B": batch, "T": frames,
                     "train_fps": tr, "x_nn_lstm": tr / ref, "fwd_fps": fw, "capture_fps": cap,
                     "capture_over_fwd": cap / fw if cap else None, "step_mib": step_mib(device, model, fns["train"]),
                     "rounds": done})
    del cases
    return rows, done


def print_speed(rows: list[dict], rounds: int) -> None:
    r0 = rows[0]
    print(f"\nH={r0['H']}  L={r0['L']}  B={r0['B']}  T={r0['T']}  ({rounds} timed round(s); x nn.LSTM: against "
          f"lstm_fused training at the same precision)")
    print(f"{'cell':11s} {'prec':5s} {'train fr/s':>11s} {'x nn.LSTM':>9s} {'fwd fr/s':>10s} "
          f"{'capture fr/s':>12s} {'capt/fwd':>8s} {'step MiB':>9s}")
    for r in rows:
        cap = f"{r['capture_fps']:12,.0f} {r['capture_over_fwd']:8.2f}" if r["capture_fps"] else f"{'-':>12s} {'-':>8s}"
        mib = f"{r['step_mib']:9,.0f}" if r["step_mib"] is not None else f"{'-':>9s}"
        print(f"{r['cell']:11s} {r['precision']:5s} {r['train_fps']:11,.0f} {r['x_nn_lstm']:9.2f} "
              f"{r['fwd_fps']:10,.0f} {cap} {mib}", flush=True)


# ----------------------------------------------------------------------------------- main

def parse_shape(text: str, n: int) -> tuple[int, ...]:
    parts = text.split(",")
    if len(parts) != n or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected {n} positive integers separated by commas, got {text!r}")
    return tuple(int(p) for p in parts)


def pick_device(name: str | None) -> torch.device:
    """The device asked for; a GPU by default, and a clear refusal where there is none."""
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        print(f"gpu_check: no CUDA device here (torch {torch.__version__}, {build}). This check is meant for a "
              f"GPU; run it with --device cpu (add --smoke for the quick version) to check the CPU instead.",
              file=sys.stderr)
        sys.exit(2)                                      # 2 as for a usage error; 1 means a check failed
    return torch.device("cuda")


def describe(device: torch.device) -> dict:
    meta = {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "heavy_modules": sorted(m for m in HEAVY if m in sys.modules)}
    if device.type == "cuda":
        meta.update(name=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    else:
        meta.update(name=f"cpu {torch.backends.cpu.get_cpu_capability()}", load_average=os.getloadavg()[0])
    return meta


def summary(checks: list[dict], speed: list[dict]) -> str:
    """The last line: pass or fail, the worst error per precision, and the ratios at the first shape."""
    failed = [r["case"] for r in checks if not r["ok"]]
    head = "PASS" if not failed else f"FAIL ({len(failed)} case(s): {', '.join(failed)})"

    def worst(p, kind):
        return f"{max(r[kind + '_error'] for r in checks if r['precision'] == p):.1e}/{TOLERANCE[p][kind]:.0e}"

    errs = ", ".join(f"{p} forward {worst(p, 'forward')} grad {worst(p, 'grad')}" for p in PRECISIONS)
    line = f"gpu_check: {head} | worst error/tolerance {errs}"
    if speed:
        shape = {k: speed[0][k] for k in "HLBT"}
        ratios = ", ".join(f"{r['cell']} {r['precision']} {r['x_nn_lstm']:.2f}x" for r in speed
                           if r["cell"] in ("lstm", "gru") and all(r[k] == v for k, v in shape.items()))
        line += f" | train x nn.LSTM at {' '.join(f'{k}={v}' for k, v in shape.items())}: {ratios}"
    return line


def write_json(path, report) -> None:
    if path:
        Path(path).write_text(json.dumps(report, indent=1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda (refused where absent)")
    ap.add_argument("--smoke", action="store_true", help=f"tiny shapes (speed {SMOKE_SHAPE}, check {SMOKE_CHECK}), "
                                                         "one timed round: seconds on a CPU")
    ap.add_argument("--shapes", nargs="+", type=lambda s: parse_shape(s, 4), default=None, metavar="H,L,B,T",
                    help=f"speed shapes (default {' '.join(PAPER_SHAPES)})")
    ap.add_argument("--check-shape", type=lambda s: parse_shape(s, 3), default=None, metavar="H,B,T",
                    help="correctness shape (default 512,8,100; layers are 1 and 3)")
    ap.add_argument("--reps", type=int, default=None, help="timed rounds after the warm-up (default 3; smoke 1)")
    ap.add_argument("--budget-s", type=float, default=270.0,
                    help="seconds for the whole run, after which timing stops early (default 270: a 5-minute slot)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default torch's choice; smoke 1)")
    ap.add_argument("--no-speed", action="store_true", help="correctness only")
    ap.add_argument("--out", default=None, help="also write the results to this JSON file")
    ap.add_argument("--plant-error", default=None, metavar="CASE",
                    help="test of the check itself: perturb one weight of CASE's device model (e.g. gru-L3-res-fp32)")
    args = ap.parse_args(argv)
    if args.plant_error is not None and args.plant_error not in case_ids():
        ap.error(f"--plant-error must name a case: {', '.join(case_ids())}")
    t_start = time.perf_counter()
    device = pick_device(args.device)
    shapes = args.shapes or [parse_shape(s, 4) for s in ((SMOKE_SHAPE,) if args.smoke else PAPER_SHAPES)]
    check_shape = args.check_shape or parse_shape(SMOKE_CHECK if args.smoke else "512,8,100", 3)
    reps = args.reps if args.reps is not None else (1 if args.smoke else 3)
    threads = args.threads or (1 if args.smoke else None)
    if threads:     # smoke: a tiny op split over two threads stalls whenever the other core is busy (25x here)
        torch.set_num_threads(threads)

    meta = describe(device)
    print(", ".join(f"{k} {v}" for k, v in meta.items()), flush=True)
    report = {"meta": meta, "args": vars(args) | {"shapes": shapes, "check_shape": check_shape, "reps": reps},
              "tolerance": TOLERANCE, "checks": check_all(check_shape, device, args.plant_error), "speed": []}
    failed = [r for r in report["checks"] if not r["ok"]]
    report["ok"] = not failed
    write_json(args.out, report)                         # the correctness half survives a timeout in speed
    for i, shape in enumerate([] if args.no_speed else shapes):
        now = time.perf_counter()
        if now > t_start + args.budget_s:
            print(f"\nH,L,B,T={','.join(map(str, shape))} skipped: the {args.budget_s:.0f} s budget is spent")
            continue
        deadline = now + (t_start + args.budget_s - now) / (len(shapes) - i)
        rows, rounds = bench_shape(shape, device, reps, deadline)
        print_speed(rows, rounds)
        report["speed"] += rows
        write_json(args.out, report)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report["meta"].update(peak_rss_mib=rss, elapsed_s=time.perf_counter() - t_start)
    print(f"\npeak RSS of the process {rss:,.0f} MiB, {report['meta']['elapsed_s']:.0f} s in all")
    for r in failed:
        print(f"gpu_check: {r['case']} FAILED: {r['why']}", file=sys.stderr)
    report["summary"] = summary(report["checks"], report["speed"])
    write_json(args.out, report)
    print(report["summary"], flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
