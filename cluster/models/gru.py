"""GRU of Eq. (1) (Cho et al. 2014), the paper's `GRU`, written in the paper's LSTM-like names.

    i_t = sigma(W_ix x_t + W_ic c_{t-1} + b_i)          update gate
    f_t = 1 - i_t                                        (no parameters of its own)
    o_t = sigma(W_ox x_t + W_oc c_{t-1} + b_o)          reset gate
    m_t = o_t * c_{t-1}                                  reset applied BEFORE the recurrent matmul
    g_t = tanh(W_cx x_t + W_cm m_t + b_c)                the candidate
    c_t = f_t * c_{t-1} + i_t * g_t                      the cell, which is also the layer's output

torch.nn.GRU applies the reset after the matmul (r * (W h + b)), so it is a different model.
W_ic, W_oc, W_cm are full [H, H] matrices (c_{t-1} is the previous output here). Biases are
ours (the paper omits them). Values exposed per frame: c, m, i, f, o, g. c_t stays in
[-1, 1] whenever c_0 does: it is a convex combination of c_{t-1} and g_t (computed as one
torch.lerp; tests/cluster/test_cells.py checks the bound in floating point, for any input).
"""

from __future__ import annotations

import torch
from torch import nn

from . import kernels
from .common import (FrameMatmul, GatedLayer, last_valid, n_seeds, project, seed_major, seed_sum, sigmoid_tanh_,
                     time_major, uniform_init_)
from .kernels import kernel, round_row, set_units, sigmoid, tanh


# The frame arithmetic of the equations above, in the two stretches between the frame's GEMMs;
# one loop per equation over a row's H units (see lstm.py for why).
@kernel
def gru_frame_gates(t, A, C, M, Mm, m_units, m_to, bf16):
    """Frame t, once A[t, :, :2H] holds W_ox x_t + b_o + W_oc c_{t-1} and the same for i: o_t and
    i_t into A[t] (in place), m_t = o_t c_{t-1} into M[t] (bf16-rounded into Mm[t]); an
    intervention sets m_units of m_t."""
    B, H = C.shape[1], C.shape[2]
    for b in range(B):
        a, c_prev, m = A[t, b], C[t, b], M[t, b]
        oi, o = a[: 2 * H], a[:H]
        for j in range(2 * H):
            oi[j] = sigmoid(oi[j])
        for j in range(H):
            m[j] = o[j] * c_prev[j]
        set_units(m, m_units, m_to)
        if bf16:
            round_row(m, Mm[t, b])


@kernel
def gru_frame_cell(t, A, C, Cm, c_units, c_to, bf16):
    """Frame t, once A[t, :, 2H:] holds W_cx x_t + b_c + W_cm m_t: g_t into A[t] (in place), c_t
    = (1 - i_t) c_{t-1} + i_t g_t into C[t+1] (bf16-rounded into Cm[t+1]), as torch.lerp computes
    it (so c_t stays in [-1, 1]); an intervention sets c_units of c_t."""
    B, H = C.shape[1], C.shape[2]
    half, one = A.dtype.type(0.5), A.dtype.type(1)
    for b in range(B):
        a, c_prev, c = A[t, b], C[t, b], C[t + 1, b]
        i, g = a[H : 2 * H], a[2 * H :]
        for j in range(H):
            g[j] = tanh(g[j])
        for j in range(H):
            w = i[j]
            c[j] = c_prev[j] + w * (g[j] - c_prev[j]) if w < half else g[j] - (g[j] - c_prev[j]) * (one - w)
        set_units(c, c_units, c_to)
        if bf16:
            round_row(c, Cm[t + 1, b])


@kernel
def gru_frame_grad_cand(t, A, C, dc, dA, da, bf16):
    """BPTT frame t, first stretch: with dc = dL/dc_t, da_i and da_g into dA[t] (bf16: fp32 in
    da, da_g rounded into dA[t], the operand of dm = da_g W_cm)."""
    B, H = C.shape[1], C.shape[2]
    one = A.dtype.type(1)
    for b in range(B):
        a, c_prev, dc_ = A[t, b], C[t, b], dc[b]
        i, g = a[H : 2 * H], a[2 * H :]
        d = da[b] if bf16 else dA[t, b]
        da_i, da_g = d[H : 2 * H], d[2 * H :]
        for j in range(H):
            da_i[j] = (i[j] - i[j] * i[j]) * (g[j] - c_prev[j]) * dc_[j]
        for j in range(H):
            da_g[j] = (one - g[j] * g[j]) * i[j] * dc_[j]
        if bf16:
            round_row(da_g, dA[t, b, 2 * H :])


@kernel
def gru_frame_grad_gates(t, A, C, dC, dm, dc, dA, da, db, bf16):
    """BPTT frame t, second stretch: with dm = dL/dm_t, da_o into dA[t] (bf16: rounded, with da_i);
    dc becomes dL/dc_{t-1} less the term [da_o, da_i] W_r (the GEMM that follows), plus dC[t-1]; db
    [S, 3H] (S stacked seeds, 1 for one model) accumulates, row b into seed b // (B / S)'s."""
    B, H = C.shape[1], C.shape[2]
    one = A.dtype.type(1)
    rows = B // db.shape[0]
    for b in range(B):
        a, c_prev, dc_, dm_, db_ = A[t, b], C[t, b], dc[b], dm[b], db[b // rows]
        o, i = a[:H], a[H : 2 * H]
        d = da[b] if bf16 else dA[t, b]
        da_o = d[:H]
        for j in range(H):
            da_o[j] = dm_[j] * c_prev[j] * (o[j] - o[j] * o[j])
        for j in range(H):
            dc_[j] = dc_[j] * (one - i[j]) + dm_[j] * o[j]
        if t > 0:
            dC_ = dC[t - 1, b]
            for j in range(H):
                dc_[j] += dC_[j]
        for j in range(3 * H):
            db_[j] += d[j]
        if bf16:
            round_row(d[: 2 * H], dA[t, b, : 2 * H])




class GRUFunction(torch.autograd.Function):
    """One GRU layer over a sequence: forward loop, hand-written BPTT backward.

    Why hand-written: see PeepholeLSTMFunction. The GRU needs two GEMMs per frame (the
    reset gate sits between them); both use pre-packed weights in bf16 mode.

    Gate buffer A[t] = [o | i | g]: o and i share one sigmoid, i and g sit side by side in
    the backward's da so one op scales both by dc. Inputs: x [T,B,D], W_x [3H,D] (rows o, i,
    c), b [3H], W_r [2H,H] = (W_oc; W_ic), W_cm [H,H], c0 [B,H], mm_dtype.
    Returns c [T,B,H], m [T,B,H] (not differentiable), A [T,B,3H] (not differentiable).

    Stacked seeds (SeedStack): the weights with a leading seed axis, W_x [S,3H,D], b [S,3H],
    W_r [S,2H,H], W_cm [S,H,H], and B = S blocks of rows, one per seed (common.py, "stacked seeds").
    """

    @staticmethod
    def forward(ctx, x, W_x, b, W_r, W_cm, c0, mm_dtype, iv=None, projected=None):
        T, B, _ = x.shape
        H, S = W_cm.shape[-1], n_seeds(W_cm)
        sd = c0.dtype
        mode = kernels.kernel_mode(x.device, sd, mm_dtype)   # None: the torch loop below
        xm, Wxm, Wrm, Wcm = kernels.operands(mode, mm_dtype, x, W_x, W_r, W_cm)
        A = project(xm, Wxm, b, sd) if projected is None else projected.clone()  # W_*x x_t + b_*, all t
        C = A.new_empty(T + 1, B, H)                      # C[t+1] = c_t, C[0] = c0
        M = A.new_empty(T, B, H)                          # m_t = o_t c_{t-1}
        own = Wrm.dtype != sd or mode == "bf16"           # the GEMM operands need buffers of their own
        Cm = torch.empty_like(C, dtype=Wrm.dtype) if own else C
        Mm = torch.empty_like(M, dtype=Wrm.dtype) if own else M
        C[0], Cm[0] = c0, kernels.operands(mode, mm_dtype, c0)[0]
        gates, cand = FrameMatmul(Wrm, B), FrameMatmul(Wcm, B)
        A_oi, g_ = A[..., : 2 * H].unbind(0), A[..., 2 * H :].unbind(0)
        Cm_, Mm_ = Cm.unbind(0), Mm.unbind(0)
        if mode:
            bf16, ivs = mode == "bf16", kernels.Setter(iv, sd)
            aA, aC, aM, aCm, aMm = kernels.arrays(A, C, M, Cm, Mm)
            for t in range(T):
                gates.acc_(A_oi[t], Cm_[t])                           # + W_oc, W_ic c_{t-1}
                gru_frame_gates(t, aA, aC, aM, aMm, *ivs.at("m", t), bf16)
                cand.acc_(g_[t], Mm_[t])                              # + W_cm m_t
                gru_frame_cell(t, aA, aC, aCm, *ivs.at("c", t), bf16)
        else:
            one = A.new_ones(B, H)
            o_, i_ = A[..., :H].unbind(0), A[..., H : 2 * H].unbind(0)
            C_, M_ = C.unbind(0), M.unbind(0)
            for t in range(T):
                gates.acc_(A_oi[t], Cm_[t])                               # + W_oc, W_ic c_{t-1}
                A_oi[t].sigmoid_()
                torch.mul(o_[t], C_[t], out=M_[t])                        # m_t = o_t c_{t-1}
                if iv is not None:
                    iv.apply_("m", t, M_[t])
                if Mm is not M:
                    Mm_[t].copy_(M_[t])
                cand.acc_(g_[t], Mm_[t])                                  # + W_cm m_t
                sigmoid_tanh_(g_[t].add_(g_[t]).sigmoid_(), one)          # g_t = tanh(.)
                torch.lerp(C_[t], g_[t], i_[t], out=C_[t + 1])            # c_t = (1-i) c_{t-1} + i g
                if iv is not None:
                    iv.apply_("c", t, C_[t + 1])
                if Cm is not C:
                    Cm_[t + 1].copy_(C_[t + 1])
        ctx.save_for_backward(seed_major(xm, S), Wxm, Wrm, Wcm, A, C, Cm, Mm)
        ctx.mark_non_differentiable(M, A)
        ctx.set_materialize_grads(False)
        ctx.x_dtype, ctx.w_dtype, ctx.mode = x.dtype, W_x.dtype, mode
        return C[1:], M, A

    @staticmethod
    def backward(ctx, dC, _dM, _dA):
        """BPTT. With dc = dL/dc_t (output plus recurrence):

            da_i = dc (g - c_{t-1}) i(1-i);   da_g = dc i (1-g^2)
            dm   = da_g @ W_cm
            da_o = dm c_{t-1} o(1-o)
            dc_{t-1} = dc (1-i) + dm o + [da_o, da_i] @ [W_oc; W_ic]  (+ the output's gradient at t-1)
        """
        xs, Wxm, Wrm, Wcm, A, C, Cm, Mm = ctx.saved_tensors
        T, B, H = Mm.shape
        S = n_seeds(Wcm)
        sd, md = C.dtype, Wrm.dtype
        if dC is None:
            dC = A.new_zeros(T, B, H)
        dC = dC.contiguous()
        bf16 = ctx.mode == "bf16"
        dA = torch.empty(T, B, 3 * H, dtype=md, device=A.device)
        da = A.new_empty(B, 3 * H) if md != sd or bf16 else None
        gates, cand = FrameMatmul(Wrm.transpose(-2, -1), B), FrameMatmul(Wcm.transpose(-2, -1), B)
        dA_, dC_ = dA.unbind(0), dC.unbind(0)
        if ctx.mode:
            db, dc, dm = A.new_zeros(max(S, 1), 3 * H), dC_[T - 1].clone(), A.new_empty(B, H)
            aA, aC, adC, adm, adc, adA, ada, adb = kernels.arrays(A, C, dC, dm, dc, dA, da if bf16 else dA[0], db)
            for t in range(T - 1, -1, -1):
                gru_frame_grad_cand(t, aA, aC, adc, adA, ada, bf16)
                cand.into(dm, dA_[t][:, 2 * H :])                             # dL/dm_t = da_g W_cm
                gru_frame_grad_gates(t, aA, aC, adC, adm, adc, adA, ada, adb, bf16)
                gates.acc_(dc, dA_[t][:, : 2 * H])                            # dL/dc_{t-1}
            db = db if S else db[0]
        else:
            one = A.new_ones(B, H)
            db = A.new_zeros(B, 3 * H)
            o_, i_, g_ = (u.unbind(0) for u in A.split(H, 2))
            C_ = C.unbind(0)
            dc = dC_[T - 1]
            for t in range(T - 1, -1, -1):
                o, i, g, c_prev = o_[t], i_[t], g_[t], C_[t]
                da_t = dA_[t] if da is None else da
                da_o, da_i, da_g = da_t.split(H, 1)
                torch.addcmul(i, i, i, value=-1, out=da_i).mul_(g - c_prev)        # (g - c_{t-1}) i(1-i)
                torch.addcmul(one, g, g, value=-1, out=da_g).mul_(i)              # i(1-g^2)
                da_t[:, H:].unflatten(1, (2, H)).mul_(dc.unsqueeze(1))            # times dc
                da_g_mm = da_g if da is None else dA_[t][:, 2 * H :].copy_(da_g)
                dm = cand.plus(None, da_g_mm, sd)                                 # dL/dm_t
                torch.mul(dm, c_prev, out=da_o).mul_(torch.addcmul(o, o, o, value=-1))
                base = torch.addcmul(dC_[t - 1], dc, one - i) if t > 0 else dc * (one - i)
                base.addcmul_(dm, o)
                db.add_(da_t)
                if da is not None:
                    dA_[t][:, : 2 * H].copy_(da_t[:, : 2 * H])
                dc = gates.plus(base, dA_[t][:, : 2 * H], sd)                     # dL/dc_{t-1}
            db = seed_sum(db, S)
        dAs = seed_major(dA, S)                          # [T*B, 3H]; stacked: [S, T*B/S, 3H]
        dAs_t = dAs.transpose(-2, -1)
        need, wd = ctx.needs_input_grad, ctx.w_dtype
        dx = time_major(dAs @ Wxm, T, S).to(ctx.x_dtype) if need[0] else None
        dW_x = (dAs_t @ xs).to(wd) if need[1] else None
        db = db.to(wd) if need[2] else None
        dW_r = (dAs_t[..., : 2 * H, :] @ seed_major(Cm[:-1], S)).to(wd) if need[3] else None
        dW_cm = (dAs_t[..., 2 * H :, :] @ seed_major(Mm, S)).to(wd) if need[4] else None
        return dx, dW_x, db, dW_r, dW_cm, dc, None, None, None


class GRU(GatedLayer):
    """Layer of GRU units, Eq. (1); parameters named after the paper's symbols.

    W_ix, W_ox, W_cx: [H, D]; W_ic, W_oc, W_cm: [H, H]; b_i, b_o, b_c: [H].
    Initialisation: every parameter ~ U(-1/sqrt(H), 1/sqrt(H)), as torch.nn.GRU.
    State: (c,). The layer's output is c_t.
    """

    state_names = ("c",)
    value_names = ("c", "m", "i", "f", "o", "g")

    def __init__(self, input_size: int, hidden_size: int, precision: str = "fp32"):
        super().__init__(input_size, hidden_size, precision)
        D, H = input_size, hidden_size
        for gate in "ioc":
            setattr(self, f"W_{gate}x", nn.Parameter(torch.empty(H, D)))
            setattr(self, f"b_{gate}", nn.Parameter(torch.empty(H)))
        self.W_ic = nn.Parameter(torch.empty(H, H))
        self.W_oc = nn.Parameter(torch.empty(H, H))
        self.W_cm = nn.Parameter(torch.empty(H, H))
        uniform_init_(self, H)

    def operands(self):
        """(W_x, b, W_r, W_cm) as GRUFunction takes them (SeedStack stacks S layers' of these)."""
        return (torch.cat((self.W_ox, self.W_ix, self.W_cx)), torch.cat((self.b_o, self.b_i, self.b_c)),
                torch.cat((self.W_oc, self.W_ic)), self.W_cm)

    def forward(self, x, state=None, lengths=None, capture=False, intervention=None, operands=None, projected=None):
        mm_dtype, (c0,) = self._start(x, state, intervention, projected)
        W_x, b, W_r, W_cm = self.operands() if operands is None else operands
        c, m, A = GRUFunction.apply(x, W_x, b, W_r, W_cm, c0, mm_dtype, intervention, projected)
        state = (last_valid(c, lengths),)
        if not capture:
            return c, state, None
        o, i, g = A.split(self.hidden_size, 2)
        return c, state, {"c": c, "m": m, "i": i, "f": 1 - i, "o": o, "g": g}
