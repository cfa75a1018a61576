"""Each hand-written cell against a plain reference step written here from the paper's equations.

The references are deliberately naive (one frame at a time, float64, autograd for gradients,
torch.tanh, no buffers), so that agreement to 1e-10 means the fast path computes the paper's
equations, and not merely something self-consistent.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.models import GRU, FusedLSTM, LazyLSTM, PeepholeLSTM, kernels
from cluster.models.common import FrameMatmul

sig, tanh = torch.sigmoid, torch.tanh
F64 = torch.float64
TOL = 1e-10


def lin(p, gate, x, src, h):
    """W_{gate}x x + W_{gate}{src} h + b_gate, in the paper's names."""
    return x @ p[f"W_{gate}x"].T + h @ p[f"W_{gate}{src}"].T + p[f"b_{gate}"]


# --- reference steps: the equations of Sec. 3.1, Eq. (1) and Sec. 5.1, verbatim ---------------
def ref_lstm(p, x, m, c):
    i = sig(lin(p, "i", x, "m", m) + p["V_ic"] * c)
    f = sig(lin(p, "f", x, "m", m) + p["V_fc"] * c)
    g = tanh(lin(p, "c", x, "m", m))
    c_new = f * c + i * g
    o = sig(lin(p, "o", x, "m", m) + p["V_oc"] * c_new)
    m_new = o * tanh(c_new)
    return dict(c=c_new, m=m_new, i=i, f=f, o=o, g=g), (m_new, c_new)


def ref_gru(p, x, c):
    i = sig(lin(p, "i", x, "c", c))
    f = 1 - i
    o = sig(lin(p, "o", x, "c", c))
    m = o * c
    g = tanh(lin(p, "c", x, "m", m))
    c_new = f * c + i * g
    return dict(c=c_new, m=m, i=i, f=f, o=o, g=g), (c_new,)


def ref_lazy(p, x, m, c, candidate="m_t"):
    i = sig(lin(p, "i", x, "m", m) + p["V_ic"] * c)
    f = sig(lin(p, "f", x, "m", m) + p["V_fc"] * c)
    o = sig(lin(p, "o", x, "m", m) + p["V_oc"] * c)
    m_new = o * tanh(c)
    g = tanh(lin(p, "c", x, "m", m_new if candidate == "m_t" else m))
    c_new = f * c + i * g
    return dict(c=c_new, m=m_new, i=i, f=f, o=o, g=g), (m_new, c_new)


def run_ref(layer, x, state):
    """Reference over a whole [T, B, D] sequence: (output, final state, values stacked over t)."""
    p = dict(layer.named_parameters())
    if isinstance(layer, PeepholeLSTM):
        step = ref_lstm
    elif isinstance(layer, GRU):
        step = ref_gru
    else:
        step = lambda p, x, m, c: ref_lazy(p, x, m, c, layer.candidate_input)  # noqa: E731
    frames = []
    for t in range(x.shape[0]):
        vals, state = step(p, x[t], *state)
        frames.append(vals)
    values = {k: torch.stack([v[k] for v in frames]) for k in frames[0]}
    out = values["c"] if isinstance(layer, GRU) else values["m"]
    return out, state, values


CELLS = {
    "lstm": lambda d, h, prec="fp32": PeepholeLSTM(d, h, prec),
    "gru": lambda d, h, prec="fp32": GRU(d, h, prec),
    "lstm_lazy": lambda d, h, prec="fp32": LazyLSTM(d, h, prec, "m_t"),
    "lstm_lazy_m_prev": lambda d, h, prec="fp32": LazyLSTM(d, h, prec, "m_prev"),
}


def make(cell, D=5, H=4, seed=0, dtype=F64, prec="fp32"):
    """A layer with random weights, larger than the default init so every gate does something."""
    torch.manual_seed(seed)
    layer = CELLS[cell](D, H, prec).to(dtype)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.7)
    return layer


def rand_state(layer, B, scale=1.0, dtype=F64):
    n = len(layer.state_names)
    if isinstance(layer, GRU):  # a GRU state is a previous output: inside (-1, 1)
        return tuple(torch.rand(B, layer.hidden_size, dtype=dtype) * 1.8 - 0.9 for _ in range(n))
    return tuple(torch.randn(B, layer.hidden_size, dtype=dtype) * scale for _ in range(n))


# --- forward values -------------------------------------------------------------------------
@pytest.mark.parametrize("cell", CELLS)
def test_outputs_and_every_captured_value_match_reference(cell):
    layer = make(cell)
    x = torch.randn(7, 3, 5, dtype=F64) * 2
    state = rand_state(layer, 3)
    y, final, values = layer(x, state, capture=True)
    ry, rfinal, rvalues = run_ref(layer, x, state)
    assert set(values) == set(rvalues) == {"c", "m", "i", "f", "o", "g"}
    torch.testing.assert_close(y, ry, rtol=0, atol=TOL)
    for name in rvalues:
        torch.testing.assert_close(values[name], rvalues[name], rtol=0, atol=TOL, msg=name)
    for a, b in zip(final, rfinal):
        torch.testing.assert_close(a, b, rtol=0, atol=TOL)


@pytest.mark.parametrize("cell", CELLS)
def test_zero_state_is_the_default(cell):
    layer = make(cell)
    x = torch.randn(4, 2, 5, dtype=F64)
    zeros = tuple(torch.zeros(2, 4, dtype=F64) for _ in layer.state_names)
    torch.testing.assert_close(layer(x)[0], layer(x, zeros)[0], rtol=0, atol=0)


# --- gradients ------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck_fast_path(cell):
    """Numerical vs hand-written Jacobian, for x, every parameter and the initial state."""
    layer = make(cell, D=3, H=3, seed=1)
    x = torch.randn(4, 2, 3, dtype=F64, requires_grad=True)
    state = tuple(s.requires_grad_() for s in rand_state(layer, 2))
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]

    def f(x, *flat):
        ps, st_ = flat[: len(names)], flat[len(names):]
        out = torch.func.functional_call(layer, dict(zip(names, ps)), (x, st_))
        return (out[0],) + tuple(out[1])   # outputs for every frame and the final state

    assert torch.autograd.gradcheck(f, (x, *params, *state), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("cell", CELLS)
def test_gradients_equal_autograd_of_reference(cell):
    layer = make(cell, seed=2)
    x = torch.randn(6, 3, 5, dtype=F64, requires_grad=True)
    state = tuple(s.requires_grad_() for s in rand_state(layer, 3))
    w = torch.randn(6, 3, 4, dtype=F64)
    wf = [torch.randn(3, 4, dtype=F64) for _ in state]
    inputs = [x, *state, *layer.parameters()]

    def loss(out, final):
        return (out * w).sum() + sum((s * v).sum() for s, v in zip(final, wf))

    y, final, _ = layer(x, state)
    fast = torch.autograd.grad(loss(y, final), inputs)
    ry, rfinal, _ = run_ref(layer, x, state)
    ref = torch.autograd.grad(loss(ry, rfinal), inputs)
    labels = ["x"] + [f"state{k}" for k in range(len(state))] + [n for n, _ in layer.named_parameters()]
    for name, a, b in zip(labels, fast, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=TOL, msg=name)


# --- sequence structure ---------------------------------------------------------------------
@pytest.mark.parametrize("cell", [*CELLS, "fused"])
def test_frame_by_frame_stepping_equals_sequence_pass(cell):
    layer = FusedLSTM(5, 4).double() if cell == "fused" else make(cell)
    x = torch.randn(6, 2, 5, dtype=F64)
    y, final, _ = layer(x)
    state, ys = None, []
    for t in range(6):
        yt, state, _ = layer(x[t : t + 1], state)
        ys.append(yt)
    torch.testing.assert_close(torch.cat(ys), y, rtol=0, atol=1e-12)
    for a, b in zip(state, final):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("cell", [*CELLS, "fused"])
def test_padded_batch_equals_per_utterance_runs(cell):
    """Valid frames, final states and gradients of a padded batch equal per-utterance runs,
    with garbage (large, finite) in the padding."""
    layer = FusedLSTM(5, 4).double() if cell == "fused" else make(cell, seed=3)
    lengths = [6, 2, 4]
    T, B = max(lengths), len(lengths)
    utts = [torch.randn(n, 1, 5, dtype=F64) for n in lengths]
    x = torch.randn(T, B, 5, dtype=F64) * 1e3
    for b, u in enumerate(utts):
        x[: lengths[b], b] = u[:, 0]
    ws = [torch.randn(n, 1, 4, dtype=F64) for n in lengths]

    y, final, _ = layer(x, lengths=torch.tensor(lengths))
    loss = sum((y[: n, b : b + 1] * ws[b]).sum() for b, n in enumerate(lengths))
    grads = torch.autograd.grad(loss, list(layer.parameters()))

    sep_grads = [torch.zeros_like(p) for p in layer.parameters()]
    for b, u in enumerate(utts):
        yb, fb, _ = layer(u)
        torch.testing.assert_close(y[: lengths[b], b : b + 1], yb, rtol=0, atol=1e-12)
        for a, s in zip(final, fb):
            torch.testing.assert_close(a[b : b + 1], s, rtol=0, atol=1e-12)
        for acc, g in zip(sep_grads, torch.autograd.grad((yb * ws[b]).sum(), list(layer.parameters()))):
            acc += g
    for g, s in zip(grads, sep_grads):
        torch.testing.assert_close(g, s, rtol=0, atol=1e-10)


# --- the GRU keeps its state bounded ---------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    x_scale=st.floats(1e-3, 1e4),
    w_scale=st.floats(1e-2, 1e2),
    dtype=st.sampled_from([torch.float32, F64]),
    prec=st.sampled_from(["fp32", "bf16"]),
)
def test_gru_cell_stays_in_unit_interval(seed, x_scale, w_scale, dtype, prec):
    """c_t is a convex combination of c_{t-1} and tanh(.): any input keeps it in [-1, 1].
    (Open (-1, 1) in exact arithmetic; a saturated tanh or sigmoid in floating point reaches +-1.)"""
    g = torch.Generator().manual_seed(seed)
    layer = GRU(3, 5, prec).to(dtype)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * w_scale)
    x = torch.randn(8, 2, 3, generator=g, dtype=dtype) * x_scale
    c0 = torch.rand(2, 5, generator=g, dtype=dtype) * 2 - 1
    c, _, values = layer(x, (c0,), capture=True)
    assert torch.isfinite(c).all()
    assert (c.abs() <= 1).all(), c.abs().max()
    assert (values["m"].abs() <= 1).all()


def test_gru_cell_strictly_inside_for_moderate_inputs():
    layer = make("gru", seed=4)
    c, _, _ = layer(torch.randn(50, 4, 5, dtype=F64))
    assert (c.abs() < 1).all()
    assert c.abs().max() > 0.5      # and it does move


# --- lazy update: differs from the LSTM exactly where the order differs --------------------------
def _lazy_and_lstm(candidate, seed=5):
    lstm = make("lstm", seed=seed)
    lazy = LazyLSTM(5, 4, candidate_input=candidate).double()
    lazy.load_state_dict(lstm.state_dict())        # same names, same shapes
    return lstm, lazy


@pytest.mark.parametrize("candidate", ["m_t", "m_prev"])
def test_lazy_equals_lstm_with_output_read_before_the_update(candidate):
    """Without recurrence through m and without o's peephole, the order of the cell update is
    the only difference: c and every gate agree, and lazy m_t = o_t tanh(c_{t-1})."""
    lstm, lazy = _lazy_and_lstm(candidate)
    with torch.no_grad():
        for layer in (lstm, lazy):
            for name in ("W_im", "W_fm", "W_cm", "W_om", "V_oc"):
                getattr(layer, name).zero_()
    x = torch.randn(6, 2, 5, dtype=F64)
    _, _, a = lstm(x, capture=True)
    _, _, b = lazy(x, capture=True)
    for name in ("c", "i", "f", "o", "g"):
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=TOL, msg=name)
    c_prev = torch.cat([torch.zeros_like(a["c"][:1]), a["c"][:-1]])
    torch.testing.assert_close(b["m"], a["o"] * torch.tanh(c_prev), rtol=0, atol=TOL)
    assert (b["m"] - a["m"]).abs().max() > 1e-2


@pytest.mark.parametrize("candidate", ["m_t", "m_prev"])
def test_lazy_first_frame_differs_only_in_output_side(candidate):
    """From a zero state, frame 0's i, f, g and c coincide (m_{-1} = 0 and, in the lazy cell,
    m_0 = o_0 tanh(0) = 0); o (peeks at c_0 vs c_{-1}) and m differ; later frames all differ."""
    lstm, lazy = _lazy_and_lstm(candidate)
    x = torch.randn(5, 3, 5, dtype=F64)
    _, _, a = lstm(x, capture=True)
    _, _, b = lazy(x, capture=True)
    for name in ("c", "i", "f", "g"):
        torch.testing.assert_close(b[name][0], a[name][0], rtol=0, atol=TOL, msg=name)
    assert torch.equal(b["m"][0], torch.zeros_like(b["m"][0]))
    for name in ("o", "m"):
        assert (b[name][0] - a[name][0]).abs().max() > 1e-3, name
    for name in ("c", "i", "f", "o", "g", "m"):
        assert (b[name][1:] - a[name][1:]).abs().min() > 0, name


def test_lazy_readings_differ_only_through_W_cm():
    x = torch.randn(5, 2, 5, dtype=F64)
    lazy_t, lazy_prev = make("lstm_lazy", seed=6), make("lstm_lazy_m_prev", seed=6)
    assert (lazy_t(x)[0] - lazy_prev(x)[0]).abs().max() > 1e-3
    with torch.no_grad():
        lazy_t.W_cm.zero_()
        lazy_prev.W_cm.zero_()
    torch.testing.assert_close(lazy_t(x)[0], lazy_prev(x)[0], rtol=0, atol=TOL)


# --- parameters, precision ------------------------------------------------------------------
def test_parameter_names_follow_the_paper():
    def names(layer):
        return {n for n, _ in layer.named_parameters()}
    lstm = ({f"W_{g}x" for g in "ifco"} | {f"W_{g}m" for g in "ifco"} | {f"b_{g}" for g in "ifco"}
            | {"V_ic", "V_fc", "V_oc"})
    assert names(PeepholeLSTM(3, 2)) == lstm
    assert names(LazyLSTM(3, 2)) == lstm
    assert names(GRU(3, 2)) == {"W_ix", "W_ox", "W_cx", "W_ic", "W_oc", "W_cm", "b_i", "b_o", "b_c"}
    layer = PeepholeLSTM(3, 2)
    assert layer.W_ix.shape == (2, 3) and layer.W_im.shape == (2, 2) and layer.V_ic.shape == (2,)


def test_initialisation_is_uniform_in_one_over_sqrt_h():
    torch.manual_seed(0)
    layer = PeepholeLSTM(300, 400)
    bound = 1 / math.sqrt(400)
    for name, p in layer.named_parameters():
        assert p.abs().max() <= bound, name
        assert p.abs().max() > 0.9 * bound, name


@pytest.mark.parametrize("cell", CELLS)
def test_bf16_matmuls_stay_close_to_fp32(cell):
    layer32 = make(cell, D=16, H=32, seed=7, dtype=torch.float32)
    with torch.no_grad():
        for p in layer32.parameters():
            p.mul_(0.3)
    layer16 = CELLS[cell](16, 32, "bf16")
    layer16.load_state_dict(layer32.state_dict())
    x = torch.randn(20, 4, 16, requires_grad=True)
    y32, _, v32 = layer32(x, capture=True)
    y16, _, v16 = layer16(x, capture=True)
    assert v16["c"].dtype == torch.float32            # the cell state stays fp32
    err = (y16 - y32).abs().max().item()
    assert 0 < err < 3e-2                             # bf16 was really used, and it is close
    g32 = torch.autograd.grad(y32.sum(), [x, *layer32.parameters()])
    g16 = torch.autograd.grad(y16.sum(), [x, *layer16.parameters()])
    for a, b in zip(g32, g16):
        assert (a - b).norm() <= 0.05 * a.norm() + 1e-6


def test_packed_frame_matmul_is_bit_identical_to_mm():
    a = torch.randn(8, 64).bfloat16()
    w = torch.randn(96, 64).bfloat16()
    fm = FrameMatmul(w, 8)
    assert torch.equal(fm(a), a @ w.t())
    out = torch.randn(8, 96)
    torch.testing.assert_close(fm.acc_(out.clone(), a), out + (a @ w.t()).float(), rtol=0, atol=0)


def test_bad_input_shape_is_rejected():
    with pytest.raises(ValueError, match=r"\[T, B, 5\]"):
        make("lstm")(torch.randn(3, 5, dtype=F64))


# --- interventions: units set inside the recurrence --------------------------------------------
def _ref_with(layer, x, state, value, units, to, start):
    """The reference steps with ``value`` (c or m) of ``units`` set to ``to`` from frame ``start``
    on, where the paper's equations make it (so the rest of the frame and the next frame see it)."""
    p = dict(layer.named_parameters())

    def hook(name, v, t):
        if name == value and t >= start:
            v = v.clone()
            v[:, units] = torch.as_tensor(to, dtype=v.dtype)
        return v

    frames = []
    for t in range(x.shape[0]):
        xt = x[t]
        if isinstance(layer, PeepholeLSTM):
            m, c = state
            i = sig(lin(p, "i", xt, "m", m) + p["V_ic"] * c)
            f = sig(lin(p, "f", xt, "m", m) + p["V_fc"] * c)
            g = tanh(lin(p, "c", xt, "m", m))
            c_new = hook("c", f * c + i * g, t)
            o = sig(lin(p, "o", xt, "m", m) + p["V_oc"] * c_new)
            m_new = hook("m", o * tanh(c_new), t)
            state = (m_new, c_new)
        elif isinstance(layer, GRU):
            (c,) = state
            i = sig(lin(p, "i", xt, "c", c))
            o = sig(lin(p, "o", xt, "c", c))
            m_new = hook("m", o * c, t)
            g = tanh(lin(p, "c", xt, "m", m_new))
            c_new = hook("c", (1 - i) * c + i * g, t)
            state = (c_new,)
        else:
            m, c = state
            i = sig(lin(p, "i", xt, "m", m) + p["V_ic"] * c)
            f = sig(lin(p, "f", xt, "m", m) + p["V_fc"] * c)
            o = sig(lin(p, "o", xt, "m", m) + p["V_oc"] * c)
            m_new = hook("m", o * tanh(c), t)
            g = tanh(lin(p, "c", xt, "m", m_new if layer.candidate_input == "m_t" else m))
            c_new = hook("c", f * c + i * g, t)
            state = (m_new, c_new)
        frames.append({"c": c_new, "m": m_new})
    return {k: torch.stack([fr[k] for fr in frames]) for k in ("c", "m")}


@pytest.mark.parametrize("value", ["c", "m"])
@pytest.mark.parametrize("cell", CELLS)
def test_an_intervention_matches_the_reference_with_the_same_clamp(cell, value):
    from cluster.models import Intervention

    layer = make(cell)
    x = torch.randn(9, 3, 5, dtype=F64) * 2
    state = rand_state(layer, 3)
    units, to, start = [0, 2], [0.5, -0.25], 3
    with torch.no_grad():
        _, _, got = layer(x, state, capture=True, intervention=Intervention(value, units, to, start))
        _, _, plain = layer(x, state, capture=True)
        want = _ref_with(layer, x, state, value, units, to, start)
    for name in ("c", "m"):
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=TOL, msg=name)
    set_ = got[value][start:, :, units]
    torch.testing.assert_close(set_, torch.tensor(to, dtype=F64).expand_as(set_), rtol=0, atol=0)
    torch.testing.assert_close(got[value][:start], plain[value][:start], rtol=0, atol=0)  # untouched before
    later = got["c"][start + 1:, :, [1, 3]] - plain["c"][start + 1:, :, [1, 3]]
    assert later.abs().max() > 1e-6  # the other units see the set values through the recurrence


def test_interventions_are_refused_where_they_would_be_wrong():
    from cluster.models import Intervention

    layer = make("lstm")
    x = torch.randn(4, 2, 5, dtype=F64)
    with pytest.raises(RuntimeError, match="inference"):
        layer(x, intervention=Intervention("c", [0]))  # gradients on: the backward knows nothing of it
    with torch.no_grad():
        with pytest.raises(ValueError, match="units outside"):
            layer(x, intervention=Intervention("c", [4]))
        with pytest.raises(ValueError, match="cannot be intervened"):
            FusedLSTM(5, 4)(x.float(), intervention=Intervention("m", [0]))
    with pytest.raises(ValueError, match="c or m"):
        Intervention("g", [0])
    with pytest.raises(ValueError, match="2 units but 3 values"):
        Intervention("c", [0, 1], [1.0, 2.0, 3.0])


def test_a_model_applies_interventions_per_layer():
    from cluster.models import Intervention, ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(cell="gru", layers=2, hidden=6, num_targets=7), torch.zeros(40), torch.ones(40))
    feats = torch.randn(30, 40)
    plain = model.capture(feats, dtype=torch.float32, values=("c",))
    mean = plain["L1.c"].mean(0)[[1, 4]]  # replace two units by their means over the utterance
    got = model.capture(feats, dtype=torch.float32, values=("c",), interventions={1: Intervention("c", [1, 4], mean)})
    torch.testing.assert_close(got["L1.c"][:, [1, 4]], mean.expand(30, 2))
    assert (got["L2.c"] - plain["L2.c"]).abs().max() > 1e-6  # the next layer sees them
    with pytest.raises(ValueError, match="layers 1..2"):
        model.capture(feats, interventions={3: Intervention("c", [0])})


# --- the compiled frame kernels (kernels.py) against the torch loop they replace -----------------
def test_the_kernel_path_is_taken_on_cpu():
    cpu = torch.device("cpu")
    assert kernels.kernel_mode(cpu, torch.float32, torch.float32) == "exact"
    assert kernels.kernel_mode(cpu, F64, F64) == "exact"
    assert kernels.kernel_mode(cpu, torch.float16, torch.float16) is None
    from cluster.models.fused import native_bf16_lstm
    assert kernels.kernel_mode(cpu, torch.float32, torch.bfloat16) == (None if native_bf16_lstm("cpu") else "bf16")
    with kernels.disabled():
        assert kernels.kernel_mode(cpu, torch.float32, torch.float32) is None
    assert kernels.ENABLED


def _run_both(cell, prec, x, state, lengths=None, intervention=None, seed=11):
    """(kernel path, torch path) of one float32 layer: outputs, final state, every captured value
    and, without an intervention, the gradients of x, the state and every parameter."""
    layer = make(cell, D=6, H=8, seed=seed, dtype=torch.float32, prec=prec)
    with torch.no_grad():
        for p in layer.parameters():
            p.mul_(0.5)
    w = torch.randn(x.shape[0], x.shape[1], 8, generator=torch.Generator().manual_seed(seed))
    got = []
    for path in ("kernel", "torch"):
        with (kernels.disabled() if path == "torch" else torch.enable_grad()):
            xs = x.clone().requires_grad_(intervention is None)
            st_ = tuple(s.clone().requires_grad_(intervention is None) for s in state)
            if intervention is not None:
                with torch.no_grad():
                    y, final, values = layer(xs, st_, lengths=lengths, capture=True, intervention=intervention)
                grads = ()
            else:
                y, final, values = layer(xs, st_, lengths=lengths, capture=True)
                loss = (y * w).sum() + sum((s * s).sum() for s in final)
                grads = torch.autograd.grad(loss, [xs, *st_, *layer.parameters()])
        got.append((y, final, values, grads))
    return got


def _assert_paths_agree(fast, slow, tol):
    (y, final, values, grads), (ry, rfinal, rvalues, rgrads) = fast, slow
    torch.testing.assert_close(y, ry, rtol=tol, atol=tol)
    for a, b in zip(final, rfinal):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    assert set(values) == set(rvalues)
    for name in values:
        torch.testing.assert_close(values[name], rvalues[name], rtol=tol, atol=tol, msg=name)
    for k, (a, b) in enumerate(zip(grads, rgrads)):
        torch.testing.assert_close(a, b, rtol=10 * tol, atol=10 * tol * (1 + b.abs().max().item()), msg=f"grad {k}")


@pytest.mark.parametrize("prec", ["fp32", "bf16"])
@pytest.mark.parametrize("cell", CELLS)
def test_kernel_path_equals_torch_path_in_float32(cell, prec):
    """Outputs, captured values and gradients of the kernels equal the torch loop's. fp32: to
    float32 rounding. bf16: the two differ only in where they round the recurrent product (the
    torch path rounds it to bf16, the kernel path keeps it fp32; both round every operand)."""
    x = torch.randn(12, 3, 6)
    state = tuple(s.float() * 0.5 for s in rand_state(make(cell, D=6, H=8, dtype=torch.float32), 3, dtype=F64))
    fast, slow = _run_both(cell, prec, x, state)
    _assert_paths_agree(fast, slow, 2e-6 if prec == "fp32" else 3e-2)


@pytest.mark.parametrize("cell", CELLS)
def test_kernel_path_bf16_rounds_every_gemm_operand(cell):
    """bf16 on the kernel path is fp32 arithmetic on bf16-rounded GEMM operands: with weights and
    input already bf16 values and no recurrence through the GEMMs (recurrent weights zero), it
    equals fp32 exactly up to the cell's own float32 rounding."""
    layer32 = make(cell, D=6, H=8, seed=12, dtype=torch.float32)
    with torch.no_grad():
        for p in layer32.parameters():
            p.copy_(p.bfloat16().float())
    layer16 = CELLS[cell](6, 8, "bf16")
    layer16.load_state_dict(layer32.state_dict())
    x = torch.randn(5, 2, 6).bfloat16().float()
    y32, y16 = layer32(x)[0], layer16(x)[0]
    if kernels.kernel_mode(x.device, torch.float32, torch.bfloat16) == "bf16":
        with torch.no_grad():  # m_{t-1} enters through W_*m: rounded in bf16, so it may differ
            first = (y16[0] - y32[0]).abs().max()
        assert first <= 1e-6
    assert (y16 - y32).abs().max() < 3e-2


@pytest.mark.parametrize("cell", CELLS)
def test_kernel_path_padded_and_stepped_equal_the_torch_path(cell):
    lengths = torch.tensor([9, 3, 6])
    x = torch.randn(9, 3, 6)
    x[3:, 1] = 1e3           # garbage in the padding
    state = tuple(torch.zeros(3, 8) for _ in CELLS[cell](6, 8).state_names)
    fast, slow = _run_both(cell, "fp32", x, state, lengths=lengths)
    _assert_paths_agree(fast, slow, 2e-6)
    layer = make(cell, D=6, H=8, seed=13, dtype=torch.float32)
    y, final, _ = layer(x)
    st_, ys = None, []
    for t in range(x.shape[0]):
        yt, st_, _ = layer(x[t : t + 1], st_)
        ys.append(yt)
    # the same arithmetic frame by frame, but for the input GEMM's blocking over T*B rows vs B
    torch.testing.assert_close(torch.cat(ys), y, rtol=0, atol=1e-6)
    for a, b in zip(st_, final):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("prec", ["fp32", "bf16"])
@pytest.mark.parametrize("value", ["c", "m"])
@pytest.mark.parametrize("cell", CELLS)
def test_kernel_path_interventions_equal_the_torch_path(cell, value, prec):
    from cluster.models import Intervention

    x = torch.randn(10, 3, 6)
    state = tuple(torch.zeros(3, 8) for _ in CELLS[cell](6, 8).state_names)
    iv = Intervention(value, [1, 5, 6], [0.25, -0.5, 0.0], start=4)
    fast, slow = _run_both(cell, prec, x, state, intervention=iv)
    _assert_paths_agree(fast, slow, 2e-6 if prec == "fp32" else 3e-2)
    got = fast[2][value][4:, :, [1, 5, 6]]
    torch.testing.assert_close(got, torch.tensor([0.25, -0.5, 0.0]).expand_as(got), rtol=0, atol=0)


def _elementwise(fn, dtype):
    import numba

    @numba.njit(error_model="numpy")
    def run(x, out):
        for j in range(x.shape[0]):
            out[j] = fn(x[j])
    return lambda x: (run(x, out := np.empty_like(x)), out)[1]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_sigmoid_and_tanh_are_accurate(dtype):
    x = np.concatenate([np.linspace(-100, 100, 20001), [0.0, -0.0, 1e-30, -1e-30, 88.5, -88.5, 1e30, -1e30]]).astype(dtype)
    with np.errstate(over="ignore"):
        exact = 1 / (1 + np.exp(-x.astype(np.float64)))
    sig = _elementwise(kernels.sigmoid, dtype)(x)
    th = _elementwise(kernels.tanh, dtype)(x)
    tol = 2e-7 if dtype == np.float32 else 1e-15
    assert np.abs(sig - exact).max() <= tol and np.all((sig >= 0) & (sig <= 1))
    assert np.abs(th - np.tanh(x.astype(np.float64))).max() <= 2 * tol and np.all(np.abs(th) <= 1)
    special = np.array([np.nan, np.inf, -np.inf], dtype)
    torch.testing.assert_close(torch.from_numpy(_elementwise(kernels.sigmoid, dtype)(special)),
                               torch.tensor([math.nan, 1.0, 0.0], dtype=torch.from_numpy(special).dtype), equal_nan=True)


def test_kernel_bf16_rounding_equals_torch():
    g = torch.Generator().manual_seed(14)
    x = torch.cat([torch.randn(10000, generator=g) * 10 ** torch.randint(-30, 30, (10000,), generator=g).float(),
                   torch.tensor([0.0, -0.0, math.inf, -math.inf, 3.4e38, -3.4e38, 1e-40, 1.00390625, 1.01171875]),
                   (torch.arange(1 << 16, dtype=torch.int32) << 16 | 0x8000).view(torch.float32)])  # every tie
    x = x[torch.isfinite(x) | torch.isinf(x)]
    got = torch.from_numpy(_elementwise(kernels.to_bf16, np.float32)(x.numpy()))
    assert torch.equal(got.view(torch.int32), x.bfloat16().float().view(torch.int32))
    nan = torch.from_numpy(_elementwise(kernels.to_bf16, np.float32)(np.array([np.nan], np.float32)))
    assert torch.isnan(nan).all()
