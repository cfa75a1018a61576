"""Per-unit memory: a cell whose forget gate is fixed at f remembers 1 / (1 - f) frames, both as
its gate implies and as measured after an inserted noise segment; a real capture is measured."""

import math

import numpy as np
import polars as pl
import pytest

from analyses import unit_memory as um

from analysis_helpers import FAST, capture_into, png_is_drawn, save_model

F = (0.8, 0.9, 0.95, 0.97)  # the forget gates planted, unit by unit (cycled over the 8 units)


def fixed_forget(layer) -> None:
    """LSTM with forget gate f_u constant per unit and gates that read only the current input (no
    recurrent weights, no peepholes): after the noise leaves the input, a unit's difference
    between noisy and clean decays exactly as f_u^k."""
    for g in "ifco":
        getattr(layer, f"W_{g}m").zero_()
    for g in "ifo":
        getattr(layer, f"V_{g}c").zero_()
    layer.W_fx.zero_()
    f = np.resize(F, layer.b_f.shape[0])
    layer.b_f.copy_(layer.b_f.new_tensor(np.log(f / (1 - f))))


def test_measured_frames_on_planted_decays():
    k = np.arange(200)[:, None]
    d = np.concatenate([np.zeros((10, 3)), np.array([0.9, 0.5, 0.97]) ** k * [1.0, 2.0, 1e-6]])
    frames, censored, peak = um.measured_frames(d, end=10, fraction=1 / math.e, floor=1e-4)
    assert frames[0] == math.floor(-1 / math.log(0.9)) + 1 and frames[1] == math.floor(-1 / math.log(0.5)) + 1
    assert math.isnan(frames[2]) and peak[1] == pytest.approx(2.0)  # unit 2 never carried the noise
    frames, censored, _ = um.measured_frames(np.ones((50, 1)), end=10, fraction=0.5, floor=1e-4)
    assert censored[0] and frames[0] == 40
    assert um.implied_tau(np.array([0.9, 1.0]))[0] == pytest.approx(10.0) and np.isinf(um.implied_tau([1.0])[0])


def test_measured_frames_is_the_unit_by_unit_rule():
    """All units at once equals the rule applied to each unit alone (random, rising and falling,
    with NaN frames and units below the floor)."""
    rng = np.random.default_rng(5)
    d = np.abs(rng.normal(size=(120, 64))) * rng.uniform(0, 1, 64) ** 4
    d[:7] = np.nan
    d[:, :4] = 1e-6
    end, fraction, floor = 5, 0.3, 1e-4
    frames, censored, peak = um.measured_frames(d, end, fraction, floor)
    after = np.nan_to_num(d[end:], nan=0.0)
    for u in range(d.shape[1]):
        top = after[:, u].argmax()
        assert peak[u] == after[top, u]
        if after[top, u] < floor:
            assert math.isnan(frames[u]) and not censored[u]
            continue
        below = np.flatnonzero(after[top:, u] < fraction * after[top, u])
        assert censored[u] == (below.size == 0)
        assert frames[u] == (len(after) - top if below.size == 0 else below[0])


@pytest.mark.slow
def test_a_fixed_forget_gate_remembers_one_over_one_minus_f(small_corpus, tmp_path):
    from service.store import Store

    store = Store(tmp_path / "s.duckdb")
    model = save_model(small_corpus, tmp_path / "m.pt", "lstm", layers=1, hidden=8, edit=fixed_forget)
    cid = capture_into(store, model, sample=0)
    params = um.UnitMemoryParams(**FAST["memory_robustness"])
    out = um.run(um.load(store, cid, params), params, tmp_path)
    t = out.tables["unit_memory"].sort("unit")
    f = np.resize(F, 8)
    np.testing.assert_allclose(t["mean_f"].to_numpy(), f, rtol=1e-5)
    np.testing.assert_allclose(t["implied_tau"].to_numpy(), 1 / (1 - f), rtol=1e-4)
    measured = t["measured_frames"].to_numpy()
    ok = ~t["censored"].to_numpy() & np.isfinite(measured)
    assert ok.sum() >= 6
    # e-folding of f^k: the first k with f^k < 1/e, i.e. floor(-1 / ln f) + 1, within a frame of 1 / (1 - f)
    np.testing.assert_array_equal(measured[ok], np.floor(-1 / np.log(f[ok])) + 1)
    assert np.all(np.abs(measured[ok] - 1 / (1 - f[ok])) <= 1.0)
    rho = out.summary.filter((pl.col("metric") == "spearman_implied_measured") & (pl.col("layer") == 1))["value"][0]
    assert rho > 0.9
    assert png_is_drawn(out.figures[0].path)


@pytest.mark.slow
def test_a_real_capture_is_measured(captured, tmp_path):
    params = um.UnitMemoryParams(**FAST["memory_robustness"])
    out = um.run(um.load(captured["store"], captured["gru"], params), params, tmp_path)
    t = out.tables["unit_memory"]
    assert t.height == 2 * 16 and set(t["layer"]) == {1, 2}
    assert (t["mean_f"].is_between(0, 1)).all() and (t["implied_tau"] >= 1).all()
