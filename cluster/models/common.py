"""Plumbing shared by the hand-written recurrent layers (lstm, gru, lstm_lazy).

Each layer file holds one cell: its parameters under the paper's symbols, and a
`torch.autograd.Function` whose forward is the only implementation of the cell's
equations (training, inference and capture all run it) and whose backward is
backpropagation through time written out by hand. This module holds what the
three have in common: precision, initialisation, the matmul helpers that let
the recurrent GEMM run in bf16 while the cell state stays fp32, and the layer
interface.

Layer interface (all cells, `fused` included):

    y, state, values = layer(x, state=None, lengths=None, capture=False)

x is time-major [T, B, D]; y is [T, B, H]; state is a tuple of [B, H] tensors (the cell's
recurrent state after the last valid frame of each sequence, so a later call can continue
where this one stopped; zeros when None); values is None, or with capture=True a dict from
value name ("c", "m", "i", "f", "o", "g") to the [T, B, H] tensor of that value at every
frame. values are the Function's own buffers (the tensors its backward needs), so capturing
costs a dtype conversion and nothing else: there is no second implementation of any cell.

The three hand-written cells also have ``operands()`` (the tensors their forward passes to their
Function) and take ``operands=`` in forward: S models' operands stacked along a leading seed axis,
with x [T, S*B, D] grouped by seed, run the S models as one (stack.py; "stacked seeds" below).
"""

from __future__ import annotations

import math

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16")


def matmul_dtype(precision: str, state_dtype: torch.dtype) -> torch.dtype:
    """dtype of the GEMM operands. bf16 only replaces fp32; float64 (tests) stays float64."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16" and state_dtype == torch.float32:
        return torch.bfloat16
    return state_dtype


_HAVE_PACKED_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


# An fp32 weight at least this large is packed too: measured on a 2-core AVX2 EPYC (torch 2.13),
# the packed product of a [32, 512] frame by a [512, 2048] weight runs at 100 GFLOP/s on 2 threads
# against 53 for torch.mm (67 vs 55 on 1 thread), and at [256, 1024] 62 vs 58; at the demo's
# [128, 512] it is slower (35 vs 41-68).
_PACK_FP32_NUMEL = 1 << 18


def _can_pack(w: torch.Tensor) -> bool:
    if not (_HAVE_PACKED_LINEAR and w.device.type == "cpu"):
        return False
    return w.dtype == torch.bfloat16 or (w.dtype == torch.float32 and w.numel() >= _PACK_FP32_NUMEL)


class FrameMatmul:
    """a -> a @ w.T for the per-frame recurrent GEMM, with w prepared once per sequence.

    Why: for the bf16 [B x H] @ [H x 4H] frame GEMM, torch.mm has oneDNN re-lay-out w on
    every call, 20-30% of the call at B=32, H=512 on this CPU. Packing w once per sequence
    (torch.ops.mkldnn._reorder_linear_weight + _linear_pointwise, the pair Inductor uses for
    frozen linears) removes that; results are bit-identical to torch.mm. Large fp32 weights
    are packed as well (see _PACK_FP32_NUMEL: up to 2x faster than torch.mm there). Other
    dtypes, small fp32 weights and other devices (CUDA) use torch.mm / addmm.

    Stacked seeds (w [S, G, K], see seed_major): a frame's rows [S*B, K] are S blocks of B, and
    the product is one bmm / baddbmm over the seed axis (not packed).
    """

    def __init__(self, w: torch.Tensor, batch: int):
        self.w_t = w.transpose(-2, -1)
        self.seeds = n_seeds(w)
        self.packed = None
        if not self.seeds and _can_pack(w):
            try:
                self.packed = torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), batch)
            except RuntimeError:  # an oneDNN build without the op: plain mm is correct, only slower
                self.packed = None

    def _s(self, a: torch.Tensor) -> torch.Tensor:
        """[S*B, K] -> [S, B, K] (a view: rows are grouped by seed)."""
        return a.view(self.seeds, a.shape[0] // self.seeds, a.shape[1])

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        if self.seeds:
            return torch.bmm(self._s(a), self.w_t).view(a.shape[0], -1)
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(a, self.packed, None, "none", [], "")
        return torch.mm(a, self.w_t)

    def acc_(self, out: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """out += a @ w.T in place; the product in a's dtype, the sum in out's.

        CPU addmm cannot mix dtypes (no out_dtype on CPU in torch 2.13), so in bf16 mode the
        product comes back in bf16 and is added to the fp32 pre-activation: the gate
        nonlinearities and the cell state never see bf16 rounding beyond the product's.
        """
        if a.dtype == out.dtype and self.packed is None:
            if self.seeds:
                self._s(out).baddbmm_(self._s(a), self.w_t)
                return out
            return out.addmm_(a, self.w_t)
        return out.add_(self(a))

    def plus(self, base: torch.Tensor | None, a: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """base + a @ w.T as a new tensor of `dtype` (base None means zero)."""
        if base is None:
            return self(a).to(dtype)
        if a.dtype == base.dtype and self.packed is None:
            if self.seeds:
                return torch.baddbmm(self._s(base), self._s(a), self.w_t).view(a.shape[0], -1)
            return torch.addmm(base, a, self.w_t)
        return torch.add(base, self(a))

    def into(self, out: torch.Tensor, a: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
        """out = base + a @ w.T (base None means zero), written into out (all of one dtype)."""
        if self.seeds:
            o, a = self._s(out), self._s(a)
            torch.bmm(a, self.w_t, out=o) if base is None else torch.baddbmm(self._s(base), a, self.w_t, out=o)
            return out
        if self.packed is not None:
            return out.copy_(self(a)) if base is None else torch.add(base, self(a), out=out)
        return torch.mm(a, self.w_t, out=out) if base is None else torch.addmm(base, a, self.w_t, out=out)


# --- stacked seeds (SeedStack, stack.py) ------------------------------------------------------------
# A cell's Function takes either one model's weights (W [G, D], b [G], V [3, H]) or S models'
# stacked along a leading seed axis (W [S, G, D], b [S, G], V [S, 3, H]); then the batch rows are
# S blocks of B, block s belonging to seed s. The helpers below are the only places that differ:
# per-seed GEMMs are bmm over the seed axis, per-row elementwise weights are repeated per block,
# per-row gradient sums are summed per block. S = 0 means "not stacked" (the ordinary layer).

def n_seeds(w: torch.Tensor) -> int:
    """S of stacked weights ([S, G, D]), 0 for one model's ([G, D])."""
    return w.shape[0] if w.dim() == 3 else 0


def seed_major(a: torch.Tensor, S: int) -> torch.Tensor:
    """[T, S*B, X] -> [S, T*B, X] (a copy), seed s's frames together for its GEMMs; S = 0: [T*B, X], a view."""
    T, R, X = a.shape
    if not S:
        return a.reshape(T * R, X)
    return a.reshape(T, S, R // S, X).transpose(0, 1).reshape(S, T * (R // S), X)


def time_major(a: torch.Tensor, T: int, S: int) -> torch.Tensor:
    """seed_major's inverse: [S, T*B, X] (S = 0: [T*B, X]) -> [T, S*B, X]."""
    if not S:
        return a.view(T, a.shape[0] // T, a.shape[1])
    B = a.shape[1] // T
    return a.view(S, T, B, a.shape[2]).transpose(0, 1).reshape(T, S * B, a.shape[2])


def per_row(v: torch.Tensor, rows: int) -> torch.Tensor:
    """Elementwise weights for every row: [k, H] -> [1, k, H] (broadcast); stacked [S, k, H] ->
    [rows, k, H], seed s's block of rows / S rows all seeing v[s]."""
    if v.dim() == 2:
        return v.unsqueeze(0)
    return v.repeat_interleave(rows // v.shape[0], dim=0)


def seed_sum(g: torch.Tensor, S: int) -> torch.Tensor:
    """Per-row gradients [rows, ...] summed over the rows of each seed: [S, ...] (S = 0: over all rows)."""
    if not S:
        return g.sum(0)
    return g.view(S, g.shape[0] // S, *g.shape[1:]).sum(1)


def project(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, state_dtype: torch.dtype) -> torch.Tensor:
    """W x_t + b for every frame in one GEMM: [T, B, D] -> [T, B, G] in state_dtype.

    Taking the input terms out of the time loop leaves the loop with the recurrent GEMM
    only. x and w already carry the matmul dtype; the bias is added in state_dtype (a
    bf16 result is first widened by copy_: a mixed-dtype add is 3x slower here). Stacked
    weights (w [S, G, D], b [S, G]): one bmm over the seeds, written back time-major.
    """
    T, B, D = x.shape
    S = n_seeds(w)
    if S:
        xw = torch.bmm(seed_major(x, S), w.transpose(1, 2))                      # [S, T*B/S, G]
        A = torch.empty(T, S, B // S, w.shape[1], dtype=state_dtype, device=x.device)
        xw, b = xw.view(S, T, B // S, -1).transpose(0, 1), b.view(1, S, 1, -1)
        if xw.dtype == state_dtype:
            torch.add(xw, b, out=A)                      # the transpose and the bias in one pass
        else:
            A.copy_(xw).add_(b)
        return A.view(T, B, -1)
    xw = torch.mm(x.reshape(T * B, D), w.t())
    if xw.dtype != state_dtype:
        xw = torch.empty(xw.shape, dtype=state_dtype, device=xw.device).copy_(xw)
    return xw.add_(b).view(T, B, -1)


def sigmoid_tanh_(x: torch.Tensor, one: torch.Tensor) -> torch.Tensor:
    """Finish tanh(a) = 2 sigmoid(2a) - 1 on x = sigmoid(2a), in place.

    Why not torch.tanh: on this CPU (torch 2.13, AVX-512) tanh costs ~1.7 ns per element,
    3-5x sigmoid, and at one frame's size it is split across both cores, so in the time loop
    it stalls whenever the other core is busy. Doubling the candidate's pre-activation lets
    one sigmoid serve i, f and g. The identity is exact; its rounding is absolute (~1 ulp of
    1), which is what the cell equations consume. Tensor operands (x + x, - one) rather than
    Python scalars: a scalar is wrapped into a tensor on every call, doubling the op's cost.
    """
    return x.add_(x).sub_(one)


def tanh_into(out: torch.Tensor, x: torch.Tensor, one: torch.Tensor) -> torch.Tensor:
    """out = tanh(x), computed as in sigmoid_tanh_."""
    return sigmoid_tanh_(torch.add(x, x, out=out).sigmoid_(), one)


def uniform_init_(module: nn.Module, hidden: int) -> None:
    """Every parameter (W, V and b) ~ U(-1/sqrt(H), 1/sqrt(H)).

    The same rule torch.nn.LSTM and nn.GRU use, so the paper's cells and the fused
    reference start from the same distribution; peepholes V get it too.
    """
    bound = 1.0 / math.sqrt(hidden)
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-bound, bound)


def last_valid(seq: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """seq[len_b - 1, b] for every b: the state after each sequence's last valid frame."""
    if lengths is None:
        return seq[-1]
    idx = (torch.as_tensor(lengths, device=seq.device).long() - 1).clamp_min(0)
    return seq[idx, torch.arange(seq.shape[1], device=seq.device)]


class Intervention:
    """Set units of one layer's c or m to given values inside the recurrence: zeroed, clamped to
    a value, or replaced by their corpus means, at every frame or from frame ``start`` on. The
    cell Functions apply it where the value is made, so the next frame (and, for c, the output
    gate's peephole and m) sees the set value: an ablation, not an edit of stored activations.

    ``to`` is one value for all the units or one per unit. Inference only: the hand-written
    backward knows nothing of it, so a layer refuses it while gradients are being recorded.
    """

    VALUES = ("c", "m")

    def __init__(self, value: str, units, to=0.0, start: int = 0):
        if value not in self.VALUES:
            raise ValueError(f"an intervention sets c or m, not {value!r}")
        self.value, self.start = value, int(start)
        self.units = torch.as_tensor(units, dtype=torch.long).reshape(-1)
        self.to = torch.as_tensor(to, dtype=torch.float64).reshape(-1)
        if self.to.numel() not in (1, self.units.numel()):
            raise ValueError(f"{self.units.numel()} units but {self.to.numel()} values")
        self._ready = None

    def __repr__(self) -> str:
        return f"Intervention({self.value!r}, units={self.units.tolist()}, to={self.to.tolist()}, start={self.start})"

    def check(self, hidden: int) -> "Intervention":
        if self.units.numel() and (int(self.units.min()) < 0 or int(self.units.max()) >= hidden):
            raise ValueError(f"{self!r}: units outside 0..{hidden - 1}")
        if torch.is_grad_enabled():
            raise RuntimeError("interventions are for inference: run under torch.no_grad() or inference_mode()")
        return self

    def apply_(self, value: str, t: int, out: torch.Tensor) -> None:
        """Set the units of frame t's ``out`` [B, H] in place (if this intervention acts on it then)."""
        if value != self.value or t < self.start:
            return
        if self._ready is None or self._ready[1].dtype != out.dtype or self._ready[1].device != out.device:
            self._ready = (self.units.to(out.device), self.to.to(out.dtype, copy=True).to(out.device))
        idx, to = self._ready
        out.index_copy_(1, idx, to.expand(out.shape[0], idx.numel()))


def zeros_state(x: torch.Tensor, hidden: int, n: int) -> tuple[torch.Tensor, ...]:
    return tuple(x.new_zeros(x.shape[1], hidden) for _ in range(n))


class GatedLayer(nn.Module):
    """Base of the three hand-written cells: holds precision and the state convention."""

    state_names: tuple[str, ...] = ()
    value_names: tuple[str, ...] = ()

    def __init__(self, input_size: int, hidden_size: int, precision: str = "fp32"):
        super().__init__()
        matmul_dtype(precision, torch.float32)  # validates
        self.input_size, self.hidden_size, self.precision = input_size, hidden_size, precision

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, precision={self.precision!r}"

    def _start(self, x: torch.Tensor, state, intervention: Intervention | None = None,
               projected: torch.Tensor | None = None):
        if x.dim() != 3 or x.shape[2] != self.input_size:
            raise ValueError(f"{type(self).__name__} expects [T, B, {self.input_size}], got {tuple(x.shape)}")
        if intervention is not None:
            intervention.check(self.hidden_size)
        if projected is not None:
            if torch.is_grad_enabled():
                raise RuntimeError("a kept input projection is for inference: run under torch.no_grad() or "
                                   "inference_mode()")
            if projected.shape[:2] != x.shape[:2] or projected.dtype != x.dtype:
                raise ValueError(f"{type(self).__name__}: projection {tuple(projected.shape)} {projected.dtype} "
                                 f"does not fit input {tuple(x.shape)} {x.dtype}")
        if state is None:
            state = zeros_state(x, self.hidden_size, len(self.state_names))
        return matmul_dtype(self.precision, x.dtype), state
