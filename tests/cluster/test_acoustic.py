"""The acoustic model around the cells: splice + CMVN, residual shortcuts, capture, checkpoints."""

from __future__ import annotations

import re

import dataclasses
import os

import numpy as np
import pytest
import torch

from cluster.models import (
    CELLS, AcousticModel, CheckpointError, GRU, LazyLSTM, ModelConfig, PeepholeLSTM,
    build_model, code_version, load_checkpoint, save_checkpoint,
)

F64 = torch.float64
CUSTOM = ("lstm", "gru", "lstm_lazy")


def model_for(cell="lstm", layers=3, hidden=6, feat_dim=4, context=2, residual=False, seed=0, dtype=F64, **kw):
    torch.manual_seed(seed)
    cfg = ModelConfig(cell=cell, layers=layers, hidden=hidden, feat_dim=feat_dim, context=context,
                      num_targets=5, residual=residual, **kw)
    mean, std = torch.randn(feat_dim), torch.rand(feat_dim) + 0.5
    return build_model(cfg, mean, std).to(dtype)


def padded(lengths, feat_dim=4, seed=1, dtype=F64, pad=1e3):
    g = torch.Generator().manual_seed(seed)
    utts = [torch.randn(n, feat_dim, generator=g, dtype=dtype) for n in lengths]
    x = torch.full((len(lengths), max(lengths), feat_dim), pad, dtype=dtype)
    for b, u in enumerate(utts):
        x[b, : len(u)] = u
    return utts, x


# --- splice and CMVN ---------------------------------------------------------------------------
def test_splice_applies_cmvn_and_replicates_edge_frames():
    model = model_for(feat_dim=3, context=2)
    feats = torch.randn(5, 3, dtype=F64)
    out = model.splice(feats[None])[:, 0]                              # [T, 15]
    norm = (feats - model.cmvn_mean) / model.cmvn_std
    for t in range(5):
        want = torch.cat([norm[min(max(t + k, 0), 4)] for k in range(-2, 3)])
        torch.testing.assert_close(out[t], want, rtol=0, atol=0)


def test_padded_splice_replicates_each_utterance_own_last_frame():
    model = model_for(feat_dim=3, context=2)
    utts, x = padded([6, 2, 4], feat_dim=3)
    out = model.splice(x, torch.tensor([6, 2, 4]))
    for b, u in enumerate(utts):
        torch.testing.assert_close(out[: len(u), b], model.splice(u[None])[:, 0], rtol=0, atol=0)
    assert out.abs().max() < 100                                       # the 1e3 padding never got in


def test_context_zero_is_plain_cmvn():
    model = model_for(feat_dim=3, context=0)
    feats = torch.randn(4, 3, dtype=F64)
    torch.testing.assert_close(model.splice(feats[None])[:, 0], (feats - model.cmvn_mean) / model.cmvn_std)


# --- whole model: padding, residual, lazy layers -------------------------------------------------
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("cell", CELLS)
def test_padded_batch_logits_equal_per_utterance(cell, residual):
    model = model_for(cell, residual=residual)
    lengths = [7, 3, 5]
    utts, x = padded(lengths)
    logits = model(x, torch.tensor(lengths))
    assert logits.shape == (3, 7, 5)
    for b, u in enumerate(utts):
        alone = model(u)                                               # [T, K]: one utterance
        torch.testing.assert_close(logits[b, : len(u)], alone, rtol=0, atol=1e-12)


@pytest.mark.parametrize("cell", CUSTOM)
def test_model_gradcheck(cell):
    """Through splice, residual sums and the output layer, in float64."""
    model = model_for(cell, layers=2, hidden=3, feat_dim=2, context=1, residual=True)
    x = torch.randn(2, 4, 2, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: model(x, torch.tensor([4, 3])), (x,), eps=1e-6, atol=1e-7)


def test_residual_shortcuts_sum_layer_outputs_from_the_second_layer_up():
    """y1 = m1, y2 = m2 + y1, y3 = m3 + y2: the output layer sees m1 + m2 + m3."""
    model = model_for("lstm", layers=3, residual=True)
    x = torch.randn(2, 6, 4, dtype=F64)
    logits, v = model(x, capture=True, capture_dtype=F64)
    torch.testing.assert_close(logits, model.output(v["L1.m"] + v["L2.m"] + v["L3.m"]), rtol=0, atol=1e-12)
    plain = model_for("lstm", layers=3, residual=False)
    plain.load_state_dict(model.state_dict())
    lp, vp = plain(x, capture=True, capture_dtype=F64)
    torch.testing.assert_close(lp, plain.output(vp["L3.m"]), rtol=0, atol=1e-12)
    assert (lp - logits).abs().max() > 1e-3


def test_residual_needs_no_projection_layer():
    model = model_for("gru", layers=4, hidden=6, residual=True)
    assert [type(l) for l in model.layers] == [GRU] * 4
    assert [l.input_size for l in model.layers] == [20, 6, 6, 6]       # 4 * (2*2+1), then H
    assert model(torch.randn(2, 5, 4, dtype=F64)).shape == (2, 5, 5)


@pytest.mark.parametrize("lazy_layers,expect", [("last", [PeepholeLSTM, PeepholeLSTM, LazyLSTM]),
                                                ("all", [LazyLSTM] * 3)])
def test_lazy_layers_configuration(lazy_layers, expect):
    model = model_for("lstm_lazy", lazy_layers=lazy_layers)
    assert [type(l) for l in model.layers] == expect
    other = model_for("lstm", lazy_layers=lazy_layers)                 # ignored for other cells
    assert [type(l) for l in other.layers] == [PeepholeLSTM] * 3


def test_lazy_candidate_reaches_the_lazy_layers():
    model = model_for("lstm_lazy", lazy_layers="all", lazy_candidate="m_prev")
    assert {l.candidate_input for l in model.layers} == {"m_prev"}


@pytest.mark.parametrize("bad", [dict(cell="lstmx"), dict(layers=0), dict(precision="fp16"),
                                 dict(lazy_layers="first"), dict(lazy_candidate="c"), dict(context=-1)])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="ModelConfig"):
        ModelConfig(**bad)


def test_cmvn_must_match_feat_dim():
    with pytest.raises(ValueError, match="CMVN"):
        build_model(ModelConfig(feat_dim=40), np.zeros(39, np.float32), np.ones(39, np.float32))


# --- capture ---------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", CUSTOM)
def test_capture_names_shapes_and_dtypes(cell):
    model = model_for(cell, layers=2, hidden=6)
    _, x = padded([5, 3])
    v = model.capture(x, torch.tensor([5, 3]), dtype=torch.float16)
    expect = [f"L{k}.{n}" for k in (1, 2) for n in ("c", "m", "i", "f", "o", "g")]
    assert sorted(v) == sorted(expect) == sorted(model.value_names())
    for name, t in v.items():
        assert t.shape == (2, 5, 6) and t.dtype == torch.float16, name
    one = model.capture(x[0], dtype=torch.float32)
    assert one["L2.o"].shape == (5, 6) and one["L2.o"].dtype == torch.float32


@pytest.mark.parametrize("cell", CUSTOM)
def test_capture_comes_from_the_pass_that_made_the_logits(cell):
    """The captured top-layer output, through the output layer, gives the model's logits, and
    the captured values satisfy the cell equations among themselves."""
    model = model_for(cell, layers=2)
    x = torch.randn(2, 6, 4, dtype=F64)
    logits, v = model(x, capture=True, capture_dtype=F64)
    top = v["L2.c"] if cell == "gru" else v["L2.m"]
    torch.testing.assert_close(logits, model.output(top), rtol=0, atol=1e-12)
    torch.testing.assert_close(logits, model(x), rtol=0, atol=0)
    c_prev = torch.cat([torch.zeros_like(v["L1.c"][:, :1]), v["L1.c"][:, :-1]], 1)
    torch.testing.assert_close(v["L1.c"], v["L1.f"] * c_prev + v["L1.i"] * v["L1.g"], rtol=0, atol=1e-12)
    if cell == "lstm":
        torch.testing.assert_close(v["L1.m"], v["L1.o"] * torch.tanh(v["L1.c"]), rtol=0, atol=1e-12)
    if cell == "gru":
        torch.testing.assert_close(v["L1.f"], 1 - v["L1.i"], rtol=0, atol=0)
        torch.testing.assert_close(v["L1.m"], v["L1.o"] * c_prev, rtol=0, atol=1e-12)


def test_capture_float16_is_the_float32_capture_rounded():
    model = model_for("lstm", dtype=torch.float32)
    x = torch.randn(2, 6, 4)
    v32, v16 = model.capture(x, dtype=torch.float32), model.capture(x, dtype=torch.float16)
    for name in v32:
        assert torch.equal(v16[name], v32[name].half()), name


def test_capture_subset_and_padded_batch_match_single_utterances():
    model = model_for("gru")
    utts, x = padded([6, 4])
    v = model.capture(x, [6, 4], dtype=F64, values=("c", "o"))
    assert sorted(v) == ["L1.c", "L1.o", "L2.c", "L2.o", "L3.c", "L3.o"]
    for b, u in enumerate(utts):
        alone = model.capture(u, dtype=F64, values="c")
        torch.testing.assert_close(v["L3.c"][b, : len(u)], alone["L3.c"], rtol=0, atol=1e-12)


def test_fused_reference_captures_its_output_only():
    model = model_for("lstm_fused", layers=2)
    x = torch.randn(2, 5, 4, dtype=F64)
    v = model.capture(x, dtype=torch.float32)
    assert sorted(v) == ["L1.m", "L2.m"]
    with pytest.raises(ValueError, match="nn.LSTM.*only the output m"):
        model.capture(x, values=("c", "m"))
    with pytest.raises(ValueError, match="exposes"):
        model_for("lstm").capture(x, values="h")


# --- precision --------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", CELLS)
def test_bf16_model_close_to_fp32(cell):
    m32 = model_for(cell, dtype=torch.float32, hidden=16)
    m16 = model_for(cell, dtype=torch.float32, hidden=16, precision="bf16")
    m16.load_state_dict(m32.state_dict())
    x = torch.randn(3, 20, 4)
    a, b = m32(x), m16(x)
    assert b.dtype == torch.float32
    assert 0 < (a - b).abs().max() < 0.05
    m32.set_precision("bf16")
    assert m32.config.precision == "bf16"
    torch.testing.assert_close(m32(x), b, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cell", CELLS)
def test_runs_on_cuda_like_on_cpu(cell):
    model = model_for(cell, dtype=torch.float32)
    x = torch.randn(2, 6, 4)
    cpu = model(x, [6, 4])
    gpu = model.cuda()(x.cuda(), torch.tensor([6, 4]).cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)


# --- checkpoints --------------------------------------------------------------------------------
IDENTITY = {"name": "tiny", "manifest_sha256": "ab" * 32, "num_targets": 5,
            "phones": ["SIL", "AA", "B"], "cmvn_mean": np.arange(4, dtype=np.float32),
            "targets": {"per_phone": 3}}


@pytest.mark.parametrize("cell", CELLS)
def test_checkpoint_round_trip_gives_identical_outputs(tmp_path, cell):
    model = model_for(cell, dtype=torch.float32, residual=True, precision="bf16")
    path = save_checkpoint(tmp_path / "ck" / "model.pt", model, IDENTITY, extra={"epoch": 3})
    loaded, meta = load_checkpoint(path)
    assert isinstance(loaded, AcousticModel) and meta.config == model.config
    x = torch.randn(2, 7, 4)
    assert torch.equal(loaded(x, [7, 5]), model(x, [7, 5]))
    assert torch.equal(loaded.cmvn_std, model.cmvn_std)
    assert meta.corpus["phones"] == ["SIL", "AA", "B"]
    assert meta.corpus["cmvn_mean"] == [0.0, 1.0, 2.0, 3.0]           # numpy stored as plain lists
    assert meta.extra == {"epoch": 3}
    assert set(meta.code_version) == {"package", "git"} and meta.code_version["package"]
    assert os.listdir(path.parent) == ["model.pt"]                      # no temp file left behind


def test_checkpoint_loads_without_this_codes_classes(tmp_path):
    """Plain data only: a bare weights_only torch.load reads it."""
    path = save_checkpoint(tmp_path / "m.pt", model_for(dtype=torch.float32), IDENTITY)
    raw = torch.load(path, weights_only=True)
    assert raw["config"]["cell"] == "lstm" and "layers.0.W_ix" in raw["state_dict"]


def test_truncated_checkpoint_gives_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", model_for(dtype=torch.float32), IDENTITY)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"m\.pt.*truncated"):
        load_checkpoint(path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"m\.pt"):
        load_checkpoint(path)
    torch.save({"something": "else"}, path)
    with pytest.raises(CheckpointError, match="not a gatelens checkpoint"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def test_failed_save_leaves_the_old_checkpoint_in_place(tmp_path, monkeypatch):
    model = model_for(dtype=torch.float32)
    path = save_checkpoint(tmp_path / "m.pt", model, IDENTITY)
    before = path.read_bytes()

    def dies_halfway(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, IDENTITY)
    monkeypatch.undo()
    assert path.read_bytes() == before                                  # the old file, whole
    assert os.listdir(tmp_path) == ["m.pt"]                             # and no temp file
    with pytest.raises(TypeError, match="object"):
        save_checkpoint(path, model, {**IDENTITY, "bad": object()})
    assert path.read_bytes() == before


def test_code_version_has_package_and_git():
    v = code_version()
    assert v["package"] == "0.1.0" or v["package"] == "unknown"
    assert v["git"] is None or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", v["git"])


def test_config_round_trips_through_dict():
    cfg = ModelConfig(cell="gru", layers=4, hidden=512, residual=True, precision="bf16")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({**cfg.to_dict(), "dropout": 0.1})
    assert dataclasses.replace(cfg, layers=2).input_dim == 200
