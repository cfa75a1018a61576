"""Lazy cell update (Sec. 5.1): the peephole LSTM computed in GRU order, the cell updated last.

The paper gives the reordering only as a figure (Fig. 9a). Our reading (notes.md, "The
paper, and how we read it"): every gate sees the old cell c_{t-1}, the output is formed
from c_{t-1}, and, as in the GRU, the candidate reads the *new* output m_t:

    i_t = sigma(W_ix x_t + W_im m_{t-1} + V_ic * c_{t-1} + b_i)
    f_t = sigma(W_fx x_t + W_fm m_{t-1} + V_fc * c_{t-1} + b_f)
    o_t = sigma(W_ox x_t + W_om m_{t-1} + V_oc * c_{t-1} + b_o)      (peeks at c_{t-1}, not c_t)
    m_t = o_t * tanh(c_{t-1})                                        (the layer's output)
    g_t = tanh (W_cx x_t + W_cm m_t + b_c)                           (GRU-like: reads m_t)
    c_t = f_t * c_{t-1} + i_t * g_t                                  (updated last)

The alternative reading, `candidate_input="m_prev"`, keeps the LSTM's candidate input m_{t-1}
(g_t = tanh(W_cx x_t + W_cm m_{t-1} + b_c)): only the output moves before the cell update.
Both readings share parameters (same names and shapes as PeepholeLSTM), so one checkpoint
can be evaluated under either. Values exposed per frame: c, m, i, f, o, g.
"""

from __future__ import annotations

import torch

from . import kernels
from .common import (FrameMatmul, GatedLayer, last_valid, n_seeds, per_row, project, seed_major, seed_sum,
                     sigmoid_tanh_, tanh_into, time_major)
from .kernels import kernel, output_row, round_row, set_units, sigmoid, tanh
from .lstm import add_peephole_parameters

CANDIDATE_INPUTS = ("m_t", "m_prev")


# The frame arithmetic of the equations above, in the two stretches around the candidate's GEMM
# (reading "m_t"; reading "m_prev" runs both back to back); one loop per equation over a row's H
# units (see lstm.py for why). V [S, 3, H] (S stacked seeds, 1 for one model): row b belongs to seed
# b // (B / S).
@kernel
def lazy_frame_gates(t, A, C, M, Mm, TC, V, m_units, m_to, bf16):
    """Frame t, once A[t, :, :3H] holds W_*x x_t + b_* + W_*m m_{t-1} (* in i, f, o): the gates
    into A[t] (in place), tanh(c_{t-1}) into TC[t], m_t into M[t+1] (bf16-rounded into Mm[t+1]);
    an intervention sets m_units of m_t."""
    B, H = C.shape[1], C.shape[2]
    rows = B // V.shape[0]
    for b in range(B):
        a, c_prev, m, tc, Vs = A[t, b], C[t, b], M[t + 1, b], TC[t, b], V[b // rows]
        for k in range(3):                                  # i, f, o all peek at c_{t-1}
            gate, V_kc = a[k * H : (k + 1) * H], Vs[k]
            for j in range(H):
                gate[j] = sigmoid(gate[j] + V_kc[j] * c_prev[j])
        output_row(a[2 * H : 3 * H], c_prev, tc, m, m_units, m_to, Mm[t + 1, b], bf16)  # m_t = o_t tanh(c_{t-1})


@kernel
def lazy_frame_cell(t, A, C, c_units, c_to):
    """Frame t, once A[t, :, 3H:] holds the candidate's pre-activation: g_t into A[t], c_t into
    C[t+1]; an intervention sets c_units of c_t."""
    B, H = C.shape[1], C.shape[2]
    for b in range(B):
        a, c_prev, c = A[t, b], C[t, b], C[t + 1, b]
        i, f, g = a[:H], a[H : 2 * H], a[3 * H :]
        for j in range(H):
            g[j] = tanh(g[j])
        for j in range(H):
            c[j] = f[j] * c_prev[j] + i[j] * g[j]
        set_units(c, c_units, c_to)


@kernel
def lazy_frame_grad_cand(t, A, dC, dc, dA, da, bf16):
    """BPTT frame t, first stretch: dc (dL/dc_t through frame t+1) gains dC[t] when dC has T
    frames; da_g into dA[t] (bf16: fp32 in da, rounded into dA[t])."""
    B, H = dc.shape
    one = A.dtype.type(1)
    for b in range(B):
        a, dc_ = A[t, b], dc[b]
        i, g = a[:H], a[3 * H :]
        d = da[b] if bf16 else dA[t, b]
        da_g = d[3 * H :]
        if dC.shape[0] > 0:
            dC_ = dC[t, b]
            for j in range(H):
                dc_[j] += dC_[j]
        for j in range(H):
            da_g[j] = (one - g[j] * g[j]) * i[j] * dc_[j]
        if bf16:
            round_row(da_g, dA[t, b, 3 * H :])


@kernel
def lazy_frame_grad_gates(t, A, C, TC, V, dm, dc, dA, da, db, dV, bf16):
    """BPTT frame t, second stretch: with dm = dL/dm_t, da_i, da_f, da_o into dA[t] (bf16:
    rounded); dc becomes dL/dc_{t-1}; db [S, 4H], dV [S, 3, H] accumulate, each row into its seed's."""
    B, H = dc.shape
    one = A.dtype.type(1)
    rows = B // V.shape[0]
    for b in range(B):
        s = b // rows
        V_ic, V_fc, V_oc, dV_s, db_ = V[s, 0], V[s, 1], V[s, 2], dV[s], db[s]
        a, c_prev, tc, dm_, dc_ = A[t, b], C[t, b], TC[t, b], dm[b], dc[b]
        i, f, o, g = a[:H], a[H : 2 * H], a[2 * H : 3 * H], a[3 * H :]
        d = da[b] if bf16 else dA[t, b]
        da_i, da_f, da_o = d[:H], d[H : 2 * H], d[2 * H : 3 * H]
        for j in range(H):
            da_i[j] = (i[j] - i[j] * i[j]) * g[j] * dc_[j]
        for j in range(H):
            da_f[j] = (f[j] - f[j] * f[j]) * c_prev[j] * dc_[j]
        for j in range(H):
            da_o[j] = dm_[j] * tc[j] * (o[j] - o[j] * o[j])
        for j in range(H):
            dc_[j] = (dc_[j] * f[j] + dm_[j] * ((one - tc[j] * tc[j]) * o[j])
                      + da_i[j] * V_ic[j] + da_f[j] * V_fc[j] + da_o[j] * V_oc[j])
        for k in range(3):                                  # all three peek at c_{t-1}
            dV_k, da_k = dV_s[k], d[k * H : (k + 1) * H]
            for j in range(H):
                dV_k[j] += da_k[j] * c_prev[j]
        for j in range(4 * H):
            db_[j] += d[j]
        if bf16:
            round_row(d[: 3 * H], dA[t, b, : 3 * H])


class LazyLSTMFunction(torch.autograd.Function):
    """One lazy-LSTM layer over a sequence: forward loop, hand-written BPTT backward.

    Why hand-written: see PeepholeLSTMFunction. Reading "m_t" needs two GEMMs per frame
    (m_t sits between them), reading "m_prev" one.

    Gate buffer A[t] = [i | f | o | g]: the three sigmoid gates side by side (one peephole
    op, one sigmoid). Inputs: x [T,B,D], W_x [4H,D] (rows i, f, o, c), b [4H], W_r [3H,H]
    = (W_im; W_fm; W_om), W_cm [H,H], V [3,H] = (V_ic, V_fc, V_oc), m0, c0 [B,H], mm_dtype,
    new_m (True: reading "m_t"). Returns m [T,B,H], c [T,B,H], A [T,B,4H] (not differentiable).

    Stacked seeds (SeedStack): the weights with a leading seed axis, W_x [S,4H,D], b [S,4H],
    W_r [S,3H,H], W_cm [S,H,H], V [S,3,H], and B = S blocks of rows, one per seed (common.py).
    """

    @staticmethod
    def forward(ctx, x, W_x, b, W_r, W_cm, V, m0, c0, mm_dtype, new_m, iv=None, projected=None):
        T, B, _ = x.shape
        H, S = W_cm.shape[-1], n_seeds(W_cm)
        sd = c0.dtype
        mode = kernels.kernel_mode(x.device, sd, mm_dtype)   # None: the torch loop below
        xm, Wxm, Wrm, Wcm = kernels.operands(mode, mm_dtype, x, W_x, W_r, W_cm)
        A = project(xm, Wxm, b, sd) if projected is None else projected.clone()  # W_*x x_t + b_*, all t
        C = A.new_empty(T + 1, B, H)                      # C[t+1] = c_t, C[0] = c0
        M = A.new_empty(T + 1, B, H)                      # M[t+1] = m_t, M[0] = m0
        Mm = M if Wrm.dtype == sd and mode != "bf16" else torch.empty_like(M, dtype=Wrm.dtype)
        TC = A.new_empty(T, B, H)                         # tanh(c_{t-1}), kept for backward
        C[0], M[0], Mm[0] = c0, m0, kernels.operands(mode, mm_dtype, m0)[0]
        if new_m:
            gates, cand = FrameMatmul(Wrm, B), FrameMatmul(Wcm, B)
            rec_part = A[..., : 3 * H].unbind(0)
        else:
            gates, cand = FrameMatmul(torch.cat((Wrm, Wcm), -2), B), None
            rec_part = A.unbind(0)
        g_, Mm_ = A[..., 3 * H :].unbind(0), Mm.unbind(0)
        if mode:
            bf16, ivs = mode == "bf16", kernels.Setter(iv, sd)
            aA, aC, aM, aMm, aTC, aV = kernels.arrays(A, C, M, Mm, TC, V if S else V.unsqueeze(0))
            for t in range(T):
                gates.acc_(rec_part[t], Mm_[t])                       # + W_*m m_{t-1}
                lazy_frame_gates(t, aA, aC, aM, aMm, aTC, aV, *ivs.at("m", t), bf16)
                if new_m:
                    cand.acc_(g_[t], Mm_[t + 1])                      # + W_cm m_t
                lazy_frame_cell(t, aA, aC, *ivs.at("c", t))
        else:
            one, V3 = A.new_ones(B, H), per_row(V, B)
            A_ifo, A_ifo3 = A[..., : 3 * H].unbind(0), A[..., : 3 * H].unflatten(2, (3, H)).unbind(0)
            i_, f_, o_ = (u.unbind(0) for u in A[..., : 3 * H].split(H, 2))
            C_, Cu_, M_, TC_ = C.unbind(0), C.unsqueeze(2).unbind(0), M.unbind(0), TC.unbind(0)
            for t in range(T):
                gates.acc_(rec_part[t], Mm_[t])                           # + W_*m m_{t-1}
                A_ifo3[t].addcmul_(Cu_[t], V3)                            # + V_*c c_{t-1}, all three gates
                A_ifo[t].sigmoid_()
                torch.mul(o_[t], tanh_into(TC_[t], C_[t], one), out=M_[t + 1])      # m_t = o_t tanh(c_{t-1})
                if iv is not None:
                    iv.apply_("m", t, M_[t + 1])
                if Mm is not M:
                    Mm_[t + 1].copy_(M_[t + 1])
                if new_m:
                    cand.acc_(g_[t], Mm_[t + 1])                          # + W_cm m_t
                sigmoid_tanh_(g_[t].add_(g_[t]).sigmoid_(), one)          # g_t = tanh(.)
                torch.mul(f_[t], C_[t], out=C_[t + 1]).addcmul_(i_[t], g_[t])      # c_t, last
                if iv is not None:
                    iv.apply_("c", t, C_[t + 1])
        ctx.save_for_backward(seed_major(xm, S), Wxm, Wrm, Wcm, V, A, C, Mm, TC)
        ctx.mark_non_differentiable(A)
        ctx.set_materialize_grads(False)
        ctx.x_dtype, ctx.w_dtype, ctx.new_m, ctx.mode = x.dtype, W_x.dtype, new_m, mode
        return M[1:], C[1:], A

    @staticmethod
    def backward(ctx, dM, dC, _dA):
        """BPTT. With dm = dL/dm_t (output plus recurrence), dc = dL/dc_t from frame t+1, and
        tc = tanh(c_{t-1}):

            da_g = dc i (1-g^2)
            dm  += da_g @ W_cm                      (reading "m_t" only: g_t reads m_t)
            da_i = dc g i(1-i);   da_f = dc c_{t-1} f(1-f);   da_o = dm tc o(1-o)
            dc_{t-1} = dc f + dm o (1-tc^2) + V_ic da_i + V_fc da_f + V_oc da_o
            dm_{t-1} = [da_i, da_f, da_o] @ W_r     ("m_prev": [da_i, da_f, da_o, da_g] @ [W_r; W_cm])
        """
        xs, Wxm, Wrm, Wcm, V, A, C, Mm, TC = ctx.saved_tensors
        new_m = ctx.new_m
        T, B, H = TC.shape
        S = n_seeds(Wcm)
        sd, md = C.dtype, Wrm.dtype
        dM = dM.contiguous() if dM is not None else None
        bf16 = ctx.mode == "bf16"
        dA = torch.empty(T, B, 4 * H, dtype=md, device=A.device)
        da = A.new_empty(B, 4 * H) if md != sd or bf16 else None
        if new_m:
            gates, cand, n_rec = FrameMatmul(Wrm.transpose(-2, -1), B), FrameMatmul(Wcm.transpose(-2, -1), B), 3 * H
        else:
            gates, cand, n_rec = FrameMatmul(torch.cat((Wrm, Wcm), -2).transpose(-2, -1), B), None, 4 * H
        dA_ = dA.unbind(0)
        dM_ = dM.unbind(0) if dM is not None else None
        dC_ = dC.unbind(0) if dC is not None else None
        dm = dM_[T - 1].clone() if dM is not None else A.new_zeros(B, H)
        dc = A.new_zeros(B, H)
        if ctx.mode:
            db, dV = A.new_zeros(max(S, 1), 4 * H), A.new_zeros(max(S, 1), 3, H)
            dC_arr = dC.contiguous() if dC is not None else A.new_empty(0, B, H)
            aA, aC, aTC, aV, adm, adc, adC, adA, ada, adb, adV = kernels.arrays(
                A, C, TC, V if S else V.unsqueeze(0), dm, dc, dC_arr, dA, da if bf16 else dA[0], db, dV)
            for t in range(T - 1, -1, -1):
                lazy_frame_grad_cand(t, aA, adC, adc, adA, ada, bf16)
                if new_m:
                    cand.acc_(dm, dA_[t][:, 3 * H :])                         # g_t reads m_t
                lazy_frame_grad_gates(t, aA, aC, aTC, aV, adm, adc, adA, ada, adb, adV, bf16)
                gates.into(dm, dA_[t][:, :n_rec], dM_[t - 1] if (dM_ is not None and t > 0) else None)
            if not S:
                db, dV = db[0], dV[0]
        else:
            one = A.new_ones(B, H)
            db, dV = A.new_zeros(B, 4 * H), A.new_zeros(B, 3, H)
            V_ic, V_fc, V_oc = per_row(V, B).unbind(1)
            A_if, i_, f_, o_, g_ = A[..., : 2 * H].unbind(0), *(u.unbind(0) for u in A.split(H, 2))
            C_, Cu_, TC_ = C.unbind(0), C.unsqueeze(2).unbind(0), TC.unbind(0)
            for t in range(T - 1, -1, -1):
                i, f, o, g, tc, c_prev = i_[t], f_[t], o_[t], g_[t], TC_[t], C_[t]
                if dC_ is not None:
                    dc = dc + dC_[t]
                da_t = dA_[t] if da is None else da
                da_i, da_f, da_o, da_g = da_t.split(H, 1)
                da_if = da_t[:, : 2 * H]
                torch.addcmul(one, g, g, value=-1, out=da_g).mul_(i).mul_(dc)     # da_g
                if new_m:
                    dm = cand.plus(dm, da_g if da is None else dA_[t][:, 3 * H :].copy_(da_g), sd)
                torch.addcmul(A_if[t], A_if[t], A_if[t], value=-1, out=da_if)     # i(1-i), f(1-f)
                da_i.mul_(g)
                da_f.mul_(c_prev)
                da_if.unflatten(1, (2, H)).mul_(dc.unsqueeze(1))
                torch.mul(dm, tc, out=da_o).mul_(torch.addcmul(o, o, o, value=-1))
                dc = torch.mul(dc, f).addcmul_(dm, torch.addcmul(one, tc, tc, value=-1).mul_(o))
                dc.addcmul_(da_i, V_ic).addcmul_(da_f, V_fc).addcmul_(da_o, V_oc)   # dc_{t-1}
                dV.addcmul_(da_t[:, : 3 * H].unflatten(1, (3, H)), Cu_[t])        # all peek at c_{t-1}
                db.add_(da_t)
                if da is not None:
                    dA_[t][:, : n_rec].copy_(da_t[:, : n_rec])
                dm = gates.plus(dM_[t - 1] if (dM_ is not None and t > 0) else None, dA_[t][:, :n_rec], sd)
            db, dV = seed_sum(db, S), seed_sum(dV, S)
        dAs = seed_major(dA, S)                          # [T*B, 4H]; stacked: [S, T*B/S, 4H]
        dAs_t = dAs.transpose(-2, -1)
        need, wd = ctx.needs_input_grad, ctx.w_dtype
        dx = time_major(dAs @ Wxm, T, S).to(ctx.x_dtype) if need[0] else None
        dW_x = (dAs_t @ xs).to(wd) if need[1] else None
        db = db.to(wd) if need[2] else None
        m_prev = seed_major(Mm[:-1], S)
        dW_r = (dAs_t[..., : 3 * H, :] @ m_prev).to(wd) if need[3] else None
        m_cand = seed_major(Mm[1:], S) if new_m else m_prev        # what g_t read
        dW_cm = (dAs_t[..., 3 * H :, :] @ m_cand).to(wd) if need[4] else None
        dV = dV.to(V.dtype) if need[5] else None
        return dx, dW_x, db, dW_r, dW_cm, dV, dm, dc, None, None, None, None


class LazyLSTM(GatedLayer):
    """Layer of lazily updated peephole LSTM units (Sec. 5.1); same parameters as PeepholeLSTM.

    candidate_input: "m_t" (our reading, default) or "m_prev" (the alternative); see the
    module docstring. Initialisation: every parameter ~ U(-1/sqrt(H), 1/sqrt(H)).
    """

    state_names = ("m", "c")
    value_names = ("c", "m", "i", "f", "o", "g")

    def __init__(self, input_size: int, hidden_size: int, precision: str = "fp32",
                 candidate_input: str = "m_t"):
        super().__init__(input_size, hidden_size, precision)
        if candidate_input not in CANDIDATE_INPUTS:
            raise ValueError(f"candidate_input must be one of {CANDIDATE_INPUTS}, got {candidate_input!r}")
        self.candidate_input = candidate_input
        add_peephole_parameters(self, input_size, hidden_size)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", candidate_input={self.candidate_input!r}"

    def operands(self):
        """(W_x, b, W_r, W_cm, V) as LazyLSTMFunction takes them (SeedStack stacks S layers' of these)."""
        return (torch.cat((self.W_ix, self.W_fx, self.W_ox, self.W_cx)), torch.cat((self.b_i, self.b_f, self.b_o, self.b_c)),
                torch.cat((self.W_im, self.W_fm, self.W_om)), self.W_cm, torch.stack((self.V_ic, self.V_fc, self.V_oc)))

    def forward(self, x, state=None, lengths=None, capture=False, intervention=None, operands=None, projected=None):
        mm_dtype, (m0, c0) = self._start(x, state, intervention, projected)
        W_x, b, W_r, W_cm, V = self.operands() if operands is None else operands
        m, c, A = LazyLSTMFunction.apply(x, W_x, b, W_r, W_cm, V, m0, c0, mm_dtype,
                                         self.candidate_input == "m_t", intervention, projected)
        state = (last_valid(m, lengths), last_valid(c, lengths))
        if not capture:
            return m, state, None
        i, f, o, g = A.split(self.hidden_size, 2)
        return m, state, {"c": c, "m": m, "i": i, "f": f, "o": o, "g": g}
