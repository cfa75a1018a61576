"""SeedStack: S models of one config as one stacked model equal each model alone (HFTA's test).

Forward (logits and the carried states) and every model's own parameter gradients, against each
model run alone on its own rows, with some rows shorter than T and a carried initial state: on
the frame-kernel path and the torch path, in float64 (exact up to summation order) and bf16.
"""

from __future__ import annotations

import pytest
import torch

from cluster.models import GRU, LazyLSTM, ModelConfig, PeepholeLSTM, SeedStack, build_model, kernels

F64 = torch.float64
S, B, T, FEAT, H = 3, 2, 7, 4, 6
LENGTHS = torch.tensor([7, 4, 7, 7, 2, 5])          # rows s*B .. (s+1)*B-1 are seed s's
SHAPES = [("lstm", "last"), ("gru", "last"), ("lstm_lazy", "last"), ("lstm_lazy", "all")]
PATHS = ["kernel", "torch"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny shapes: a second torch thread only adds hand-offs (on the shared 2-core machine, with the
    other core busy, each parallel op waits for it: 10-20x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def config(cell, lazy_layers="last", residual=False, precision="fp32", layers=2):
    return ModelConfig(cell=cell, layers=layers, hidden=H, feat_dim=FEAT, context=1, num_targets=5,
                       residual=residual, lazy_layers=lazy_layers, precision=precision)


def models(cfg, n=S, dtype=F64):
    """n models of cfg, each its own initialisation and its own CMVN."""
    out = []
    for s in range(n):
        torch.manual_seed(100 + s)
        out.append(build_model(cfg, torch.randn(FEAT), torch.rand(FEAT) + 0.5).to(dtype))
    return out


def path(name):
    return kernels.disabled() if name == "torch" else torch.enable_grad()


def inputs(cfg, n, dtype, seed=0):
    """Spliced x [T, n*B, D], a carried initial state per layer, per-frame loss weights."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, n * B, cfg.input_dim, generator=g, dtype=dtype)
    n_state = 1 if cfg.cell == "gru" else 2
    state = [tuple(0.5 * torch.randn(n * B, H, generator=g, dtype=dtype) for _ in range(n_state))
             for _ in range(cfg.layers)]
    w = torch.randn(n * B, T, cfg.num_targets, generator=g, dtype=dtype)
    return x, state, w


def loss_of(logits, states, w):
    """A loss that reaches every logit and every returned state (so the states' gradients are checked too)."""
    return (logits * w).sum() + sum((t * t).sum() for layer in states for t in layer)


def alone(ms, x, state, lengths, w):
    """Each model on its own rows: (logits, states, each model's parameter gradients)."""
    logits, states, grads = [], [], []
    for s, m in enumerate(ms):
        rows = slice(s * B, (s + 1) * B)
        m.zero_grad()
        lo, st = m.forward_spliced(x[:, rows], [tuple(t[rows] for t in layer) for layer in state], lengths[rows])
        loss_of(lo, st, w[rows]).backward()
        logits.append(lo.detach())
        states.append([tuple(t.detach() for t in layer) for layer in st])
        grads.append({k: p.grad.clone() for k, p in m.named_parameters()})
    return logits, states, grads


def stacked(ms, x, state, lengths, w):
    for m in ms:
        m.zero_grad()
    stack = SeedStack(ms)
    lo, st = stack.forward_spliced(x, state, lengths)
    loss_of(lo, st, w).backward()                        # the sum of the seeds' own losses
    return lo.detach(), st, [{k: p.grad.clone() for k, p in m.named_parameters()} for m in ms]


def assert_same(ms, x, state, lengths, w, atol, rtol=0.0):
    lo, st, grads = stacked(ms, x, state, lengths, w)
    ref_lo, ref_st, ref_grads = alone(ms, x, state, lengths, w)
    for s in range(len(ms)):
        rows = slice(s * B, (s + 1) * B)
        torch.testing.assert_close(lo[rows], ref_lo[s], atol=atol, rtol=rtol, msg=f"seed {s} logits")
        for k, layer in enumerate(st):
            for t, ref in zip(layer, ref_st[s][k]):
                torch.testing.assert_close(t[rows].detach(), ref, atol=atol, rtol=rtol, msg=f"seed {s} L{k + 1} state")
        for name, g in grads[s].items():
            torch.testing.assert_close(g, ref_grads[s][name], atol=atol, rtol=rtol, msg=f"seed {s} grad {name}")


@pytest.mark.parametrize("which", PATHS)
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("cell,lazy_layers", SHAPES)
def test_a_stack_of_three_is_each_model_alone(cell, lazy_layers, residual, which):
    cfg = config(cell, lazy_layers, residual)
    ms = models(cfg)
    assert SeedStack(ms).stacked
    x, state, w = inputs(cfg, S, F64)
    with path(which):
        assert_same(ms, x, state, LENGTHS, w, atol=1e-12)


@pytest.mark.parametrize("which", PATHS)
@pytest.mark.parametrize("cell,lazy_layers", SHAPES)
def test_bf16_stack_is_each_model_alone_within_bf16(cell, lazy_layers, which):
    """bf16 GEMM operands: the stack's bmm sums in another order than each model's mm, and a sum that
    lands on the other side of a bf16 rounding boundary moves by one bf16 ulp (2^-8 relative)."""
    cfg = config(cell, lazy_layers, residual=True, precision="bf16")
    ms = models(cfg, dtype=torch.float32)
    x, state, w = inputs(cfg, S, torch.float32)
    with path(which):
        assert_same(ms, x, state, LENGTHS, w, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("which", PATHS)
@pytest.mark.parametrize("cell,lazy_layers", [("lstm", "last"), ("gru", "last")])
def test_fp32_stack_is_each_model_alone(cell, lazy_layers, which):
    cfg = config(cell, lazy_layers)
    ms = models(cfg, dtype=torch.float32)
    x, state, w = inputs(cfg, S, torch.float32)
    with path(which):
        assert_same(ms, x, state, LENGTHS, w, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cell,lazy_layers", SHAPES)
def test_a_subset_after_a_seed_stops_still_matches(cell, lazy_layers):
    """The trainer builds a new stack of the seeds still running; it is each of those models alone."""
    cfg = config(cell, lazy_layers)
    ms = models(cfg)
    x, state, w = inputs(cfg, 2, F64, seed=1)
    assert_same([ms[0], ms[2]], x, state, LENGTHS[:4], w, atol=1e-12)


@pytest.mark.parametrize("which", PATHS)
@pytest.mark.parametrize("layer_cls", [PeepholeLSTM, GRU, LazyLSTM])
def test_one_seed_stacked_is_the_ordinary_layer(layer_cls, which):
    """S = 1 through the stacked Function (operands with a leading seed axis of 1) equals the layer."""
    torch.manual_seed(0)
    layer = layer_cls(5, H).double()
    x = torch.randn(T, B, 5, dtype=F64)
    state = tuple(torch.randn(B, H, dtype=F64) for _ in layer.state_names)
    with path(which):
        y, st, _ = layer(x, state, LENGTHS[:B])
        (y.sum() + sum(t.sum() for t in st)).backward()
        ref = {k: p.grad.clone() for k, p in layer.named_parameters()}
        layer.zero_grad()
        ys, sts, _ = layer(x, state, LENGTHS[:B], operands=tuple(o.unsqueeze(0) for o in layer.operands()))
        (ys.sum() + sum(t.sum() for t in sts)).backward()
    torch.testing.assert_close(ys, y, atol=1e-13, rtol=0)
    for a, b in zip(sts, st):
        torch.testing.assert_close(a, b, atol=1e-13, rtol=0)
    for k, p in layer.named_parameters():
        torch.testing.assert_close(p.grad, ref[k], atol=1e-12, rtol=0, msg=k)


def test_a_stack_of_one_is_the_model():
    cfg = config("lstm")
    (m,) = models(cfg, 1)
    feats, lengths = torch.randn(B, T, FEAT, dtype=F64), LENGTHS[:B]
    torch.testing.assert_close(SeedStack([m])(feats, lengths), m(feats, lengths), atol=0, rtol=0)


@pytest.mark.parametrize("cell", ["lstm", "gru", "lstm_fused"])
def test_forward_splices_each_seed_by_its_own_model(cell):
    """forward(feats): each seed's rows CMVN'd and spliced by its own model (their CMVN differ)."""
    cfg = config(cell)
    ms = models(cfg, dtype=torch.float32)
    feats = torch.randn(S * B, T, FEAT)
    stack = SeedStack(ms)
    assert stack.stacked == (cell != "lstm_fused")     # nn.LSTM has no stacked form: run one by one
    out = stack(feats, LENGTHS)
    for s, m in enumerate(ms):
        rows = slice(s * B, (s + 1) * B)
        torch.testing.assert_close(out[rows], m(feats[rows], LENGTHS[rows]), atol=1e-5, rtol=1e-5)


def test_bad_stacks_and_inputs_are_refused():
    ms = models(config("lstm"), 2)
    with pytest.raises(ValueError, match="at least one model"):
        SeedStack([])
    with pytest.raises(ValueError, match="model 1 has config"):
        SeedStack([ms[0], models(config("lstm", residual=True), 1)[0]])
    stack = SeedStack(ms)
    with pytest.raises(ValueError, match="5 rows is not a multiple of 2"):
        stack.forward_spliced(torch.zeros(T, 5, config("lstm").input_dim, dtype=F64))
    with pytest.raises(ValueError, match="spliced input must be"):
        stack.forward_spliced(torch.zeros(T, 4, 3, dtype=F64))
    with pytest.raises(ValueError, match="1 initial states for 2 layers"):
        stack.forward_spliced(torch.zeros(T, 4, config("lstm").input_dim, dtype=F64), [()])
