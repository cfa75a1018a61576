"""Peephole LSTM of Sec. 3.1 (Chung et al. 2014), the paper's `LSTM`.

    i_t = sigma(W_ix x_t + W_im m_{t-1} + V_ic * c_{t-1} + b_i)
    f_t = sigma(W_fx x_t + W_fm m_{t-1} + V_fc * c_{t-1} + b_f)
    g_t = tanh (W_cx x_t + W_cm m_{t-1}                  + b_c)      (the candidate)
    c_t = f_t * c_{t-1} + i_t * g_t
    o_t = sigma(W_ox x_t + W_om m_{t-1} + V_oc * c_t     + b_o)      (peeks at the new c_t)
    m_t = o_t * tanh(c_t)                                           (the layer's output)

V are diagonal (stored as vectors). The paper omits biases "for simplification"; we keep
them (b_i, b_f, b_c, b_o). Values exposed per frame: c, m, i, f, o, g.
"""

from __future__ import annotations

import torch
from torch import nn

from . import kernels
from .common import (FrameMatmul, GatedLayer, last_valid, n_seeds, per_row, project, seed_major, seed_sum,
                     sigmoid_tanh_, tanh_into, time_major, uniform_init_)
from .kernels import kernel, output_row, round_row, set_units, sigmoid, tanh


# The kernels below are the frame arithmetic of the equations above, one loop per equation over
# a row's H units: a loop that writes one array vectorises (LLVM checks its few overlaps at run
# time); one loop writing every gate does not. V [S, 3, H] (S stacked seeds, 1 for one model): row
# b belongs to seed b // (B / S).
@kernel
def lstm_frame(t, A, C, M, Mm, TC, V, c_units, c_to, m_units, m_to, bf16):
    """Frame t, once A[t] holds W_*x x_t + b_* + W_*m m_{t-1}: the gates into A[t] (in place),
    c_t into C[t+1], tanh(c_t) into TC[t], m_t into M[t+1] (and, bf16-rounded, into Mm[t+1]).
    Interventions set c_units of c_t (before o_t peeks at it) and m_units of m_t."""
    B, H = C.shape[1], C.shape[2]
    rows = B // V.shape[0]
    for b in range(B):
        V_ic, V_fc, V_oc = V[b // rows, 0], V[b // rows, 1], V[b // rows, 2]
        a, c_prev, c, m, tc = A[t, b], C[t, b], C[t + 1, b], M[t + 1, b], TC[t, b]
        i, f, g, o = a[:H], a[H : 2 * H], a[2 * H : 3 * H], a[3 * H :]
        for j in range(H):
            i[j] = sigmoid(i[j] + V_ic[j] * c_prev[j])
        for j in range(H):
            f[j] = sigmoid(f[j] + V_fc[j] * c_prev[j])
        for j in range(H):
            g[j] = tanh(g[j])
        for j in range(H):
            c[j] = f[j] * c_prev[j] + i[j] * g[j]
        set_units(c, c_units, c_to)
        for j in range(H):
            o[j] = sigmoid(o[j] + V_oc[j] * c[j])
        output_row(o, c, tc, m, m_units, m_to, Mm[t + 1, b], bf16)         # m_t = o_t tanh(c_t)


@kernel
def lstm_frame_grad(t, A, C, TC, V, dm, dc, dC, dA, da, db, dV, bf16):
    """BPTT frame t (the equations in PeepholeLSTMFunction.backward): from dm = dL/dm_t and dc =
    dL/dc_t through frame t+1 (plus dC[t], the gradient of the output c_t, when dC has T frames)
    to frame t's pre-activation gradients, written to dA[t] (bf16: rounded, from the fp32 row in
    da); dc becomes dL/dc_{t-1}; db [S, 4H], dV [S, 3, H] accumulate, each row into its seed's."""
    B, H = C.shape[1], C.shape[2]
    one = A.dtype.type(1)
    rows = B // V.shape[0]
    for b in range(B):
        s = b // rows
        V_ic, V_fc, V_oc, dV_ic, dV_fc, dV_oc, db_ = V[s, 0], V[s, 1], V[s, 2], dV[s, 0], dV[s, 1], dV[s, 2], db[s]
        a, c_prev, c, tc, dm_, dc_ = A[t, b], C[t, b], C[t + 1, b], TC[t, b], dm[b], dc[b]
        i, f, g, o = a[:H], a[H : 2 * H], a[2 * H : 3 * H], a[3 * H :]
        d = da[b] if bf16 else dA[t, b]
        da_i, da_f, da_g, da_o = d[:H], d[H : 2 * H], d[2 * H : 3 * H], d[3 * H :]
        for j in range(H):
            da_o[j] = dm_[j] * tc[j] * (o[j] - o[j] * o[j])
        for j in range(H):
            dc_[j] += dm_[j] * ((one - tc[j] * tc[j]) * o[j]) + da_o[j] * V_oc[j]
        if dC.shape[0] > 0:
            dC_ = dC[t, b]
            for j in range(H):
                dc_[j] += dC_[j]
        for j in range(H):
            da_i[j] = (i[j] - i[j] * i[j]) * g[j] * dc_[j]
        for j in range(H):
            da_f[j] = (f[j] - f[j] * f[j]) * c_prev[j] * dc_[j]
        for j in range(H):
            da_g[j] = (one - g[j] * g[j]) * i[j] * dc_[j]
        for j in range(H):
            dc_[j] = dc_[j] * f[j] + da_i[j] * V_ic[j] + da_f[j] * V_fc[j]
        for j in range(H):
            dV_ic[j] += da_i[j] * c_prev[j]
        for j in range(H):
            dV_fc[j] += da_f[j] * c_prev[j]
        for j in range(H):
            dV_oc[j] += da_o[j] * c[j]
        for j in range(4 * H):
            db_[j] += d[j]
        if bf16:
            round_row(d, dA[t, b])


class PeepholeLSTMFunction(torch.autograd.Function):
    """One layer over a whole sequence: forward loop, hand-written BPTT backward.

    Why hand-written: autograd through a Python time loop records ~15 small ops per frame
    and replays them one by one (measured 0.45-0.56x nn.LSTM on this CPU). Here the input
    terms W_*x x_t of all frames are one GEMM before the loop, the loop does one GEMM and
    ~17 small in-place ops per frame, the backward ~20 per frame, and the weight gradients
    are one GEMM each after it. Per-frame views are built before the loops (unbind) so the
    loops only compute.

    Gate buffer A[t] = [i | f | g | o] (each H wide): pre-activations, then, in place, the
    gate values. Inputs: x [T,B,D], W_x [4H,D], b [4H], W_m [4H,H] (rows in gate order),
    V [3,H] = (V_ic, V_fc, V_oc), m0, c0 [B,H], mm_dtype (GEMM operand dtype).
    Returns m [T,B,H], c [T,B,H], A [T,B,4H] (A is not differentiable).

    Stacked seeds (SeedStack): the weights with a leading seed axis, W_x [S,4H,D], b [S,4H],
    W_m [S,4H,H], V [S,3,H], and B = S blocks of rows, one per seed (common.py, "stacked seeds").
    """

    @staticmethod
    def forward(ctx, x, W_x, b, W_m, V, m0, c0, mm_dtype, iv=None, projected=None):
        T, B, _ = x.shape
        H = W_m.shape[-1]
        sd = c0.dtype
        mode = kernels.kernel_mode(x.device, sd, mm_dtype)   # None: the torch loop below
        xm, Wxm, Wmm = kernels.operands(mode, mm_dtype, x, W_x, W_m)
        S = n_seeds(W_x)                                  # 0: one model's weights
        A = project(xm, Wxm, b, sd) if projected is None else projected.clone()  # W_*x x_t + b_*, all t
        C = A.new_empty(T + 1, B, H)                      # C[t+1] = c_t, C[0] = c0
        M = A.new_empty(T + 1, B, H)                      # M[t+1] = m_t, M[0] = m0
        Mm = M if Wmm.dtype == sd and mode != "bf16" else torch.empty_like(M, dtype=Wmm.dtype)  # m as GEMM operand
        TC = A.new_empty(T, B, H)                         # tanh(c_t), kept for backward
        C[0], M[0], Mm[0] = c0, m0, kernels.operands(mode, mm_dtype, m0)[0]
        rec = FrameMatmul(Wmm, B)                         # a += m_{t-1} @ W_m^T
        A_, Mm_ = A.unbind(0), Mm.unbind(0)
        if mode:
            arr = kernels.arrays(A, C, M, Mm, TC, V if S else V.unsqueeze(0))
            ivs = kernels.Setter(iv, sd)
            for t in range(T):
                rec.acc_(A_[t], Mm_[t])                               # + W_*m m_{t-1}
                lstm_frame(t, *arr, *ivs.at("c", t), *ivs.at("m", t), mode == "bf16")
        else:
            Vr = per_row(V, B)
            one, V_if, V_oc = A.new_ones(B, H), Vr[:, :2], Vr[:, 2]
            A_if, A_ifg = A[..., : 2 * H].unflatten(2, (2, H)).unbind(0), A[..., : 3 * H].unbind(0)
            i_, f_, g_, o_ = (u.unbind(0) for u in A.split(H, 2))
            C_, Cu_, M_, TC_ = C.unbind(0), C.unsqueeze(2).unbind(0), M.unbind(0), TC.unbind(0)
            for t in range(T):
                rec.acc_(A_[t], Mm_[t])                                   # + W_*m m_{t-1}
                A_if[t].addcmul_(Cu_[t], V_if)                            # + V_ic c_{t-1}, V_fc c_{t-1}
                g_[t].add_(g_[t])                                         # tanh(a) = 2 sigmoid(2a) - 1:
                A_ifg[t].sigmoid_()                                       # one sigmoid for i, f, g
                sigmoid_tanh_(g_[t], one)
                c = torch.mul(f_[t], C_[t], out=C_[t + 1]).addcmul_(i_[t], g_[t])   # c_t
                if iv is not None:
                    iv.apply_("c", t, c)
                o_[t].addcmul_(c, V_oc).sigmoid_()                                  # o_t peeks at c_t
                torch.mul(o_[t], tanh_into(TC_[t], c, one), out=M_[t + 1])          # m_t
                if iv is not None:
                    iv.apply_("m", t, M_[t + 1])
                if Mm is not M:
                    Mm_[t + 1].copy_(M_[t + 1])
        ctx.save_for_backward(seed_major(xm, S), Wxm, Wmm, V, A, C, Mm, TC)
        ctx.mark_non_differentiable(A)
        ctx.set_materialize_grads(False)
        ctx.x_dtype, ctx.w_dtype, ctx.mode = x.dtype, W_x.dtype, mode
        return M[1:], C[1:], A

    @staticmethod
    def backward(ctx, dM, dC, _dA):
        """BPTT. With dm = dL/dm_t (output plus recurrence) and dc = dL/dc_t from frame t+1:

            da_o  = dm tanh(c_t) o(1-o)
            dc   += dm o (1 - tanh(c_t)^2) + V_oc da_o
            da_i  = dc g i(1-i);   da_f = dc c_{t-1} f(1-f);   da_g = dc i (1-g^2)
            dc_{t-1} = dc f + V_ic da_i + V_fc da_f
            dm_{t-1} = dA_t @ W_m  (+ the output's own gradient at t-1)
        """
        xs, Wxm, Wmm, V, A, C, Mm, TC = ctx.saved_tensors
        T, B, H = TC.shape
        S = n_seeds(Wmm)
        sd, md = C.dtype, Wmm.dtype
        dM = dM.contiguous() if dM is not None else None   # sum().backward() gives a stride-0 view
        # dA[t]: gradient of frame t's pre-activations, kept in the GEMM dtype for the weight
        # GEMMs; the per-frame arithmetic runs in the state dtype (in da, an fp32 scratch row
        # when the GEMMs are bf16).
        bf16 = ctx.mode == "bf16"
        dA = torch.empty(T, B, 4 * H, dtype=md, device=A.device)
        da = A.new_empty(B, 4 * H) if md != sd or bf16 else None
        rec = FrameMatmul(Wmm.transpose(-2, -1), B)                    # dm_{t-1} = dA_t @ W_m
        dA_ = dA.unbind(0)
        dM_ = dM.unbind(0) if dM is not None else None
        dC_ = dC.unbind(0) if dC is not None else None
        dm = dM_[T - 1].clone() if dM is not None else A.new_zeros(B, H)
        dc = A.new_zeros(B, H)
        if ctx.mode:
            db, dV = A.new_zeros(max(S, 1), 4 * H), A.new_zeros(max(S, 1), 3, H)
            dC_arr = dC.contiguous() if dC is not None else A.new_empty(0, B, H)
            arr = kernels.arrays(A, C, TC, V if S else V.unsqueeze(0), dm, dc, dC_arr, dA, da if bf16 else dA[0],
                                 db, dV)
            for t in range(T - 1, -1, -1):
                lstm_frame_grad(t, *arr, bf16)
                rec.into(dm, dA_[t], dM_[t - 1] if (dM_ is not None and t > 0) else None)
            if not S:
                db, dV = db[0], dV[0]
        else:
            one = A.new_ones(B, H)
            db, dV = A.new_zeros(B, 4 * H), A.new_zeros(B, 3, H)
            V_ic, V_fc, V_oc = per_row(V, B).unbind(1)
            A_if, i_, f_, g_, o_ = A[..., : 2 * H].unbind(0), *(u.unbind(0) for u in A.split(H, 2))
            C_, Cu_, TC_ = C.unbind(0), C.unsqueeze(2).unbind(0), TC.unbind(0)
            for t in range(T - 1, -1, -1):
                i, f, g, o, tc = i_[t], f_[t], g_[t], o_[t], TC_[t]
                da_t = dA_[t] if da is None else da
                da_i, da_f, da_g, da_o = da_t.split(H, 1)
                da_if = da_t[:, : 2 * H]
                torch.mul(dm, tc, out=da_o).mul_(torch.addcmul(o, o, o, value=-1))
                dc.addcmul_(dm, torch.addcmul(one, tc, tc, value=-1).mul_(o)).addcmul_(da_o, V_oc)
                if dC_ is not None:
                    dc.add_(dC_[t])
                torch.addcmul(A_if[t], A_if[t], A_if[t], value=-1, out=da_if)     # i(1-i), f(1-f)
                da_i.mul_(g)
                da_f.mul_(C_[t])
                torch.addcmul(one, g, g, value=-1, out=da_g).mul_(i)              # i(1-g^2)
                da_t[:, : 3 * H].unflatten(1, (3, H)).mul_(dc.unsqueeze(1))       # times dc
                dc = torch.mul(dc, f).addcmul_(da_i, V_ic).addcmul_(da_f, V_fc)   # dc_{t-1}
                dV[:, :2].addcmul_(da_if.unflatten(1, (2, H)), Cu_[t])           # V_ic, V_fc see c_{t-1}
                dV[:, 2].addcmul_(da_o, C_[t + 1])                                # V_oc sees c_t
                db.add_(da_t)
                if da is not None:
                    dA_[t].copy_(da)
                dm = rec.plus(dM_[t - 1] if (dM_ is not None and t > 0) else None, dA_[t], sd)
            db, dV = seed_sum(db, S), seed_sum(dV, S)
        dAs = seed_major(dA, S)                          # [T*B, 4H]; stacked: [S, T*B/S, 4H]
        need, wd = ctx.needs_input_grad, ctx.w_dtype
        dx = time_major(dAs @ Wxm, T, S).to(ctx.x_dtype) if need[0] else None
        dW_x = (dAs.transpose(-2, -1) @ xs).to(wd) if need[1] else None
        db = db.to(wd) if need[2] else None
        dW_m = (dAs.transpose(-2, -1) @ seed_major(Mm[:-1], S)).to(wd) if need[3] else None
        dV = dV.to(V.dtype) if need[4] else None
        return dx, dW_x, db, dW_m, dV, dm, dc, None, None, None


def add_peephole_parameters(layer: nn.Module, D: int, H: int) -> None:
    """W_gx [H, D], W_gm [H, H], b_g [H] for g in i, f, c, o, and the diagonal peepholes V_ic,
    V_fc, V_oc [H]; all ~ U(-1/sqrt(H), 1/sqrt(H)). Shared with the lazy LSTM (Sec. 5.1 reorders
    the computation, not the parameters)."""
    for gate in "ifco":
        setattr(layer, f"W_{gate}x", nn.Parameter(torch.empty(H, D)))
        setattr(layer, f"W_{gate}m", nn.Parameter(torch.empty(H, H)))
        setattr(layer, f"b_{gate}", nn.Parameter(torch.empty(H)))
    for gate in "ifo":
        setattr(layer, f"V_{gate}c", nn.Parameter(torch.empty(H)))
    uniform_init_(layer, H)


class PeepholeLSTM(GatedLayer):
    """Layer of peephole LSTM units (Sec. 3.1); parameters named after the paper's symbols.

    W_*x: [H, D], W_*m: [H, H], V_*c: [H] (diagonal peepholes), b_*: [H]; * in i, f, c, o.
    Initialisation: every parameter ~ U(-1/sqrt(H), 1/sqrt(H)), as torch.nn.LSTM.
    """

    state_names = ("m", "c")
    value_names = ("c", "m", "i", "f", "o", "g")

    def __init__(self, input_size: int, hidden_size: int, precision: str = "fp32"):
        super().__init__(input_size, hidden_size, precision)
        add_peephole_parameters(self, input_size, hidden_size)

    def operands(self):
        """(W_x, b, W_m, V) as PeepholeLSTMFunction takes them (SeedStack stacks S layers' of these)."""
        return (torch.cat((self.W_ix, self.W_fx, self.W_cx, self.W_ox)), torch.cat((self.b_i, self.b_f, self.b_c, self.b_o)),
                torch.cat((self.W_im, self.W_fm, self.W_cm, self.W_om)), torch.stack((self.V_ic, self.V_fc, self.V_oc)))

    def forward(self, x, state=None, lengths=None, capture=False, intervention=None, operands=None, projected=None):
        mm_dtype, (m0, c0) = self._start(x, state, intervention, projected)
        W_x, b, W_m, V = self.operands() if operands is None else operands
        m, c, A = PeepholeLSTMFunction.apply(x, W_x, b, W_m, V, m0, c0, mm_dtype, intervention, projected)
        state = (last_valid(m, lengths), last_valid(c, lengths))
        if not capture:
            return m, state, None
        i, f, g, o = A.split(self.hidden_size, 2)
        return m, state, {"c": c, "m": m, "i": i, "f": f, "o": o, "g": g}
