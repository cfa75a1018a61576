"""The cells' per-frame gate arithmetic as compiled kernels (numba), for CPU float32 / float64.

Why: the time loop of a cell does, per frame, one recurrent GEMM (two for the GRU and the lazy
LSTM) and the frame's elementwise gate arithmetic. As torch ops that arithmetic is ~17 calls
forward and ~20 backward, each a separate dispatch of a [B, H]-sized op: at the demo shape
(H=128, B=16) the dispatches, not the arithmetic, set the speed of a step (issue 15). Here each
stretch of elementwise work between two GEMMs is one compiled call that reads every value once.
The GEMMs stay with torch (MKL / oneDNN, torch's one thread pool), on the same buffers: the
numpy arrays the kernels write are views of the torch tensors (no copies).

Each cell keeps its equations in its own file: the module docstring, and beside its autograd
Function the kernels ``*_frame`` (forward) and ``*_frame_grad`` (backward), one loop over the
frame's [B, H] values per stretch between GEMMs. This module holds what they share:

  sigmoid, tanh   float32: exp by range reduction and a degree-5 polynomial (Cephes' expf, ~1
                  ulp), written so LLVM vectorises it (there is no vector libm in numba without
                  SVML); float64: math.exp (the reference tests compare to 1e-10). tanh(a) =
                  2 sigmoid(2a) - 1, as the torch path computes it (common.sigmoid_tanh_).
  to_bf16         round a float32 to the nearest bfloat16 (ties to even), kept in float32.
  set_units       an Intervention's "set these units to these values" on one row.
  output_row      m = o * tanh(c) on one row, intervened and rounded (both LSTMs).

numba's cache (cluster/jit.py) is keyed on the file of the compiled function only: after editing
a helper here, touch the cell files (or remove cluster/models/__pycache__), or the cells keep
loading machine code built from the old helper.

Precision on the kernel path (``kernel_mode``): fp32 and float64 are exact-dtype. bf16 is
emulated: every GEMM operand (weights, x, m or c, and the backward's dA) is rounded to bf16, the
GEMM runs in fp32 (products and sums in fp32), the gates and the cell state stay fp32. That is
the arithmetic of a bf16 GEMM with fp32 accumulation, and it is what nn.LSTM gets on the same
CPUs (fused.py emulates bf16 on CPUs without it). Where the CPU has native bf16 (nn.LSTM runs
under bf16 autocast), the torch path keeps its bf16 GEMMs; other devices (CUDA) and dtypes take
the torch path as well.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.core.extending import intrinsic, overload, register_jitable

from cluster.jit import compiled

from .common import matmul_dtype, project

ENABLED = True  # False: every cell runs its torch path (tests compare the two; see disabled())


@contextmanager
def disabled():
    """Run the cells' torch path (the reference for the kernels, and the path for other devices)."""
    global ENABLED
    before, ENABLED = ENABLED, False
    try:
        yield
    finally:
        ENABLED = before


def kernel_mode(device: torch.device, state_dtype: torch.dtype, mm_dtype: torch.dtype) -> str | None:
    """None (use the torch path), "exact" (GEMMs in the state dtype) or "bf16" (emulated, see above)."""
    if not ENABLED or device.type != "cpu" or state_dtype not in (torch.float32, torch.float64):
        return None
    if mm_dtype == state_dtype:
        return "exact"
    if mm_dtype == torch.bfloat16 and state_dtype == torch.float32:
        from .fused import native_bf16_lstm  # deferred: fused imports common (a cycle at import time)

        return None if native_bf16_lstm("cpu") else "bf16"
    return None


def arrays(*tensors: torch.Tensor):
    """numpy views of the tensors (shared memory), for the kernels."""
    return tuple(t.detach().numpy() for t in tensors)


# --- float32 bit casts (LLVM bitcast: free, and vectorisable) ------------------------------------
@intrinsic
def _f32_from_bits(typingctx, bits):
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@intrinsic
def _bits_from_f32(typingctx, x):
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(types.float32), codegen


@register_jitable(inline="always")
def _expf(x):
    """e**x for float32 (Cephes' expf): x = k ln2 + r, |r| <= ln2 / 2, e**r by a degree-5
    polynomial, 2**k from the exponent bits. Clamped so that 2**k stays a normal float; NaN passes
    through (the comparisons are false for NaN, and NaN propagates through r)."""
    lo, hi = np.float32(-87.0), np.float32(88.0)
    x = lo if x < lo else x
    x = hi if x > hi else x
    k = np.floor(x * np.float32(1.44269504088896341) + np.float32(0.5))
    r = x - k * np.float32(0.693359375) + k * np.float32(2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    e = p * r * r + r + np.float32(1.0)
    return e * _f32_from_bits((np.int32(k) + np.int32(127)) << np.int32(23))


def sigmoid(a):
    """1 / (1 + e**-a), in a's float type (a bare 1 would widen float32 to float64 in numba)."""
    return 1 / (1 + math.exp(-a))


def tanh(a):
    """2 sigmoid(2a) - 1: an exact identity, rounding ~1 ulp of 1 (as common.sigmoid_tanh_)."""
    return 2 * sigmoid(a + a) - 1


@overload(sigmoid, inline="always")
def _sigmoid_impl(a):
    if a == types.float32:
        one = np.float32(1)
        return lambda a: one / (one + _expf(-a))
    if a == types.float64:
        return lambda a: 1.0 / (1.0 + math.exp(-a))
    return None


@overload(tanh, inline="always")
def _tanh_impl(a):
    if a in (types.float32, types.float64):
        one = np.float32(1) if a == types.float32 else np.float64(1)
        two = one + one
        return lambda a: two * sigmoid(a + a) - one
    return None


@register_jitable(inline="always")
def to_bf16(x):
    """float32 x rounded to the nearest bfloat16 (ties to even), as float32; NaN stays NaN."""
    u = np.int64(_bits_from_f32(x)) & 0xFFFFFFFF
    if (u & 0x7FFFFFFF) > 0x7F800000:
        u = u | 0x00400000                              # quiet NaN, payload in the kept bits
    else:
        u = u + 0x7FFF + ((u >> 16) & 1)
    return _f32_from_bits(np.int32(np.uint32(u & 0xFFFF0000)))


@register_jitable(inline="always")
def round_row(src, dst):
    """dst[:] = src rounded to bf16 (float32 rows)."""
    for j in range(src.shape[0]):
        dst[j] = to_bf16(src[j])


@register_jitable(inline="always")
def set_units(row, units, to):
    """row[units[k]] = to[k]: an Intervention on one [H] row (units empty: nothing)."""
    for k in range(units.shape[0]):
        row[units[k]] = to[k]


@register_jitable(inline="always")
def output_row(o, c, tc, m, m_units, m_to, mm, bf16):
    """The LSTMs' output on one row: tc = tanh(c) (kept for the backward), m = o * tc, then an
    intervention's m_units, then (bf16) m rounded into mm, the next GEMM's operand."""
    for j in range(m.shape[0]):
        tc[j] = tanh(c[j])
    for j in range(m.shape[0]):
        m[j] = o[j] * tc[j]
    set_units(m, m_units, m_to)
    if bf16:
        round_row(m, mm)


class Setter:
    """What an Intervention sets at frame t, as the two arrays a kernel takes (units empty: nothing)."""

    def __init__(self, iv, dtype: torch.dtype):
        self.value, self.start = (iv.value, iv.start) if iv is not None else ("", 0)
        units = iv.units if iv is not None else torch.zeros(0, dtype=torch.long)
        to = iv.to.to(dtype) if iv is not None else torch.zeros(0, dtype=dtype)
        self.units = units.numpy().astype(np.int64)
        self.to = to.expand(self.units.shape[0]).contiguous().numpy() if to.numel() == 1 else to.numpy()
        self.none = self.units[:0]

    def at(self, value: str, t: int):
        """(units, values) that act on ``value`` ("c" or "m") at frame t."""
        return (self.units if self.value == value and t >= self.start else self.none), self.to


def operands(mode: str | None, mm_dtype: torch.dtype, *tensors: torch.Tensor):
    """The GEMM operands: on the kernel path in the state dtype (bf16 mode: rounded to bf16 first),
    on the torch path in mm_dtype."""
    if mode == "bf16":
        return tuple(t.to(torch.bfloat16).to(t.dtype) for t in tensors)
    return tuple(t if mode else t.to(mm_dtype) for t in tensors)


def project_input(layer, x: torch.Tensor) -> torch.Tensor:
    """W_*x x_t + b_* of a cell layer (``common.GatedLayer``) for every frame of x [T, B, D],
    exactly as its forward computes it first: passed back as ``layer(x, projected=...)`` it
    spares that GEMM, for inference that runs one layer's input many times with different
    interventions (the unit ablation)."""
    mm_dtype = matmul_dtype(layer.precision, x.dtype)
    W_x, b = layer.operands()[:2]
    mode = kernel_mode(x.device, x.dtype, mm_dtype)
    xm, Wxm = operands(mode, mm_dtype, x, W_x)
    return project(xm, Wxm, b, x.dtype)


def kernel(fn):
    """A cell's frame kernel: compiled by numba (cache, nogil), numpy's error model (a float
    division is not checked for zero, so the loops vectorise)."""
    return compiled(fn, error_model="numpy")
