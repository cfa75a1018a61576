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

from .common import FrameMatmul, GatedLayer, last_valid, project, sigmoid_tanh_, uniform_init_


class GRUFunction(torch.autograd.Function):
    """One GRU layer over a sequence: forward loop, hand-written BPTT backward.

    Why hand-written: see PeepholeLSTMFunction. The GRU needs two GEMMs per frame (the
    reset gate sits between them); both use pre-packed weights in bf16 mode.

    Gate buffer A[t] = [o | i | g]: o and i share one sigmoid, i and g sit side by side in
    the backward's da so one op scales both by dc. Inputs: x [T,B,D], W_x [3H,D] (rows o, i,
    c), b [3H], W_r [2H,H] = (W_oc; W_ic), W_cm [H,H], c0 [B,H], mm_dtype.
    Returns c [T,B,H], m [T,B,H] (not differentiable), A [T,B,3H] (not differentiable).
    """

    @staticmethod
    def forward(ctx, x, W_x, b, W_r, W_cm, c0, mm_dtype, iv=None):
        T, B, _ = x.shape
        H = W_cm.shape[0]
        sd = c0.dtype
        xm, Wxm, Wrm, Wcm = x.to(mm_dtype), W_x.to(mm_dtype), W_r.to(mm_dtype), W_cm.to(mm_dtype)
        A = project(xm, Wxm, b, sd)                       # W_*x x_t + b_*, all t
        C = A.new_empty(T + 1, B, H)                      # C[t+1] = c_t, C[0] = c0
        M = A.new_empty(T, B, H)                          # m_t = o_t c_{t-1}
        Cm = C if mm_dtype == sd else torch.empty_like(C, dtype=mm_dtype)
        Mm = M if mm_dtype == sd else torch.empty_like(M, dtype=mm_dtype)
        C[0], Cm[0] = c0, c0
        one = A.new_ones(B, H)
        gates, cand = FrameMatmul(Wrm, B), FrameMatmul(Wcm, B)
        A_oi = A[..., : 2 * H].unbind(0)
        o_, i_, g_ = (u.unbind(0) for u in A.split(H, 2))
        C_, Cm_, M_, Mm_ = C.unbind(0), Cm.unbind(0), M.unbind(0), Mm.unbind(0)
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
        ctx.save_for_backward(xm, Wxm, Wrm, Wcm, A, C, Cm, Mm)
        ctx.mark_non_differentiable(M, A)
        ctx.set_materialize_grads(False)
        ctx.x_dtype, ctx.w_dtype = x.dtype, W_x.dtype
        return C[1:], M, A

    @staticmethod
    def backward(ctx, dC, _dM, _dA):
        """BPTT. With dc = dL/dc_t (output plus recurrence):

            da_i = dc (g - c_{t-1}) i(1-i);   da_g = dc i (1-g^2)
            dm   = da_g @ W_cm
            da_o = dm c_{t-1} o(1-o)
            dc_{t-1} = dc (1-i) + dm o + [da_o, da_i] @ [W_oc; W_ic]  (+ the output's gradient at t-1)
        """
        xm, Wxm, Wrm, Wcm, A, C, Cm, Mm = ctx.saved_tensors
        T, B, H = Mm.shape
        sd, md = C.dtype, Wrm.dtype
        if dC is None:
            dC = A.new_zeros(T, B, H)
        dC = dC.contiguous()
        dA = torch.empty(T, B, 3 * H, dtype=md, device=A.device)
        da = A.new_empty(B, 3 * H) if md != sd else None
        one = A.new_ones(B, H)
        db = A.new_zeros(B, 3 * H)
        gates, cand = FrameMatmul(Wrm.t(), B), FrameMatmul(Wcm.t(), B)
        o_, i_, g_ = (u.unbind(0) for u in A.split(H, 2))
        C_, dA_, dC_ = C.unbind(0), dA.unbind(0), dC.unbind(0)
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
        TB = T * B
        dA2 = dA.view(TB, 3 * H)
        need, wd = ctx.needs_input_grad, ctx.w_dtype
        dx = (dA2 @ Wxm).view(T, B, -1).to(ctx.x_dtype) if need[0] else None
        dW_x = (dA2.t() @ xm.reshape(TB, -1)).to(wd) if need[1] else None
        db = db.sum(0).to(wd) if need[2] else None
        dW_r = (dA2[:, : 2 * H].t() @ Cm[:-1].reshape(TB, H)).to(wd) if need[3] else None
        dW_cm = (dA2[:, 2 * H :].t() @ Mm.reshape(TB, H)).to(wd) if need[4] else None
        return dx, dW_x, db, dW_r, dW_cm, dc, None, None


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

    def forward(self, x, state=None, lengths=None, capture=False, intervention=None):
        mm_dtype, (c0,) = self._start(x, state, intervention)
        W_x = torch.cat((self.W_ox, self.W_ix, self.W_cx))
        b = torch.cat((self.b_o, self.b_i, self.b_c))
        W_r = torch.cat((self.W_oc, self.W_ic))
        c, m, A = GRUFunction.apply(x, W_x, b, W_r, self.W_cm, c0, mm_dtype, intervention)
        state = (last_valid(c, lengths),)
        if not capture:
            return c, state, None
        o, i, g = A.split(self.hidden_size, 2)
        return c, state, {"c": c, "m": m, "i": i, "f": 1 - i, "o": o, "g": g}
