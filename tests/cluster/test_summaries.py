"""Per-unit summaries: exact histograms and counts, merging across shards, the irregularity rules."""

import shutil

import numpy as np
import polars as pl
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.summaries import (QUANTITIES, HistogramSpec, IrregularityRule, UnitSummary,
                               default_histogram_specs, paper_rule)

PHONES = ["<eps>", "SIL", "AA", "B", "K", "S"]
KERNELS = ["c", "torch"] if shutil.which("cc") else ["torch"]


@pytest.fixture(autouse=True, params=KERNELS)
def kernel(request, monkeypatch):
    """Every test runs on the C kernel and on the torch fallback."""
    monkeypatch.setenv("GATELENS_SUMMARY_KERNEL", request.param)
    return request.param


def fake_values(rng, n, layers=(1, 2), hidden=6, dtype=np.float32, scale=4.0):
    """Values shaped like a capture's, with each quantity in its natural range plus edge cases."""
    out = {}
    for layer in layers:
        for q in QUANTITIES:
            if q == "c":
                x = rng.standard_normal((n, hidden)) * scale
            elif q in "ifo":
                x = 1 / (1 + np.exp(-rng.standard_normal((n, hidden)) * 6))
            else:
                x = np.tanh(rng.standard_normal((n, hidden)) * 2)
            out[f"L{layer}.{q}"] = x.astype(dtype)
    return out


def summarise_in_shards(values, phones, cuts, **kw):
    parts = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        s = UnitSummary("lstm", len(PHONES), **kw)
        s.update({k: v[a:b] for k, v in values.items()}, phones[a:b])
        parts.append(s)
    return UnitSummary.merge_all(parts)


def test_merged_shards_equal_a_one_shot_numpy_histogram():
    rng = np.random.default_rng(0)
    n = 900
    values = fake_values(rng, n)
    # values on edges, at the range ends, beyond them: where an off-by-one would show
    c = values["L1.c"]
    c[:8, 0] = [-10.0, 10.0, -2.0, 2.0, 0.0, -0.0, 10.125, -1e-30]
    c[8:12, 1] = [1e6, -1e6, np.inf, -np.inf]
    values["L1.i"][:4, 2] = [0.0, 1.0, 1.0, 0.5]
    phones = rng.integers(1, len(PHONES), n)
    merged = summarise_in_shards(values, phones, [0, 1, 250, 251, 600, 900])
    specs = default_histogram_specs("lstm")
    for name, x in values.items():
        layer, q = int(name[1]), name[3]
        spec = specs[q]
        got = merged.histogram(layer, q)
        for u in range(x.shape[1]):
            col = x[:, u].astype(np.float64)
            want, _ = np.histogram(col, bins=spec.edges())
            np.testing.assert_array_equal(got[u, 1:-1], want, err_msg=f"{name} unit {u}")
            assert got[u, 0] == (col < spec.lo).sum() and got[u, -1] == (col > spec.hi).sum()
        # numpy's own uniform-bin path gives the same counts
        want2, _ = np.histogram(x[:, 0], bins=spec.bins, range=(spec.lo, spec.hi))
        np.testing.assert_array_equal(got[0, 1:-1], want2)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_sharding_merges_exactly(data):
    """Counts, histograms, min and max do not depend on how frames are split; mean and variance
    agree to rounding."""
    n = data.draw(st.integers(1, 200))
    seed = data.draw(st.integers(0, 2 ** 16))
    cuts = sorted(set([0, n] + data.draw(st.lists(st.integers(0, n), max_size=6))))
    dtype = data.draw(st.sampled_from([np.float32, np.float16]))
    rng = np.random.default_rng(seed)
    values = fake_values(rng, n, layers=(1,), hidden=3, dtype=dtype, scale=data.draw(st.sampled_from([0.5, 4.0, 30.0])))
    phones = rng.integers(1, len(PHONES), n)
    rules = (IrregularityRule.parse("abs>2"), IrregularityRule.parse("abs<0.5"))
    one = summarise_in_shards(values, phones, [0, n], rules=rules)
    many = summarise_in_shards(values, phones, cuts, rules=rules)
    for key, a in one.state.items():
        b = many.state[key]
        np.testing.assert_array_equal(a.hist, b.hist)
        np.testing.assert_array_equal(a.count, b.count)
        np.testing.assert_array_equal(a.vmin, b.vmin)
        np.testing.assert_array_equal(a.vmax, b.vmax)
        x = values[f"L{key[0]}.{key[1]}"].astype(np.float64)
        np.testing.assert_allclose(b.mean, x.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b.m2 / b.count, x.var(0), rtol=1e-4, atol=1e-7)
    for key, counts in one.irregular.items():
        np.testing.assert_array_equal(counts, many.irregular[key])
    np.testing.assert_array_equal(one.phone_frames, many.phone_frames)


def test_stats_and_range_shares_match_numpy():
    rng = np.random.default_rng(1)
    values = fake_values(rng, 500)
    values["L2.c"][:3, 4] = [2.0, -2.0, 0.7]  # open intervals: +-2 is outside (-2, 2), 0.7 outside (-0.7, 0.7)
    phones = rng.integers(1, len(PHONES), 500)
    s = summarise_in_shards(values, phones, [0, 123, 500])
    df = s.stats_frame("ck")
    assert df.height == 2 * 6 * 6 and df["checkpoint_id"].unique().to_list() == ["ck"]
    row = df.filter((pl.col("layer") == 2) & (pl.col("unit") == 4) & (pl.col("quantity") == "c")).row(0, named=True)
    x = values["L2.c"][:, 4].astype(np.float64)
    assert row["count"] == 500 and row["n_nan"] == 0
    assert row["mean"] == pytest.approx(x.mean(), rel=1e-6)
    assert row["variance"] == pytest.approx(x.var(), rel=1e-5)
    assert (row["min"], row["max"]) == (x.min(), x.max())
    assert row["n_inside_2"] == ((x > -2) & (x < 2)).sum()
    assert row["n_outside_0_7"] == ((x <= -0.7) | (x >= 0.7)).sum()
    gates = df.filter(pl.col("quantity") == "i")
    assert gates["n_inside_2"].null_count() == gates.height  # range shares are for c only


def test_layer_stats_pool_every_unit_of_a_layer():
    rng = np.random.default_rng(8)
    values = fake_values(rng, 400, hidden=7)
    phones = rng.integers(1, len(PHONES), 400)
    s = summarise_in_shards(values, phones, [0, 150, 400])
    df = s.layer_stats_frame("ck")
    assert df.height == 2 * 6 and df["units"].unique().to_list() == [7]
    for r in df.iter_rows(named=True):
        x = values[f"L{r['layer']}.{r['quantity']}"].astype(np.float64).ravel()
        spec = default_histogram_specs("lstm")[r["quantity"]]
        assert r["count"] == x.size and (r["min"], r["max"]) == (x.min(), x.max())
        assert r["mean"] == pytest.approx(x.mean(), rel=1e-6, abs=1e-9)
        assert r["variance"] == pytest.approx(x.var(), rel=1e-5)
        assert r["counts"] == np.histogram(x, bins=spec.edges())[0].tolist()
        if r["quantity"] == "c":
            assert r["n_inside_2"] == (np.abs(x) < 2).sum() and r["n_outside_0_7"] == (np.abs(x) >= 0.7).sum()
        else:
            assert r["n_inside_2"] is None


def test_nans_are_counted_apart_and_left_out():
    rng = np.random.default_rng(2)
    values = fake_values(rng, 50, layers=(1,), hidden=3)
    values["L1.c"][[3, 7], 1] = np.nan
    phones = rng.integers(1, len(PHONES), 50)
    s = UnitSummary("lstm", len(PHONES), rules=(IrregularityRule.parse("abs>1"),))
    s.update(values, phones)
    st_ = s.state[(1, "c")]
    col = np.delete(values["L1.c"][:, 1], [3, 7]).astype(np.float64)
    assert st_.n_nan.tolist() == [0, 2, 0] and st_.count.tolist() == [50, 48, 50]
    assert st_.mean[1] == pytest.approx(col.mean(), rel=1e-6)
    np.testing.assert_array_equal(st_.hist[1, 1:-1], np.histogram(col, bins=st_.spec.edges())[0])
    assert s.irregular[("abs>1", 1)][1].sum() == (np.abs(col) > 1).sum()


def test_responsibility_of_a_unit_irregular_on_one_phone_only():
    """A hand-made unit: |c| = 20 on every frame of phone AA, small elsewhere. Under the paper's
    LSTM rule (|c| > 10) it is responsible for AA (100%) and for nothing else; every count equals
    a brute-force count."""
    rng = np.random.default_rng(3)
    n, aa = 700, PHONES.index("AA")
    phones = rng.integers(1, len(PHONES), n)
    values = fake_values(rng, n, layers=(1, 2), hidden=5, scale=3.0)
    special = np.where(phones == aa, 20.0 * rng.choice([-1, 1], n), rng.uniform(-1, 1, n))
    values["L2.c"][:, 3] = special
    rule = paper_rule("lstm")
    assert rule.name == "abs>10"
    s = summarise_in_shards(values, phones, [0, 300, n], rules=(rule,))
    df = s.responsibility_frame("ck", PHONES)
    unit = df.filter((pl.col("layer") == 2) & (pl.col("unit") == 3))
    assert unit.filter(pl.col("phone") == "AA")["responsibility"].to_list() == [1.0]
    assert unit.filter(pl.col("phone") != "AA")["irregular"].sum() == 0
    # brute force, every (layer, unit, phone)
    for r in df.iter_rows(named=True):
        x = values[f"L{r['layer']}.c"][:, r["unit"]]
        sel = phones == r["phone_id"]
        assert r["frames"] == sel.sum()
        assert r["irregular"] == (np.abs(x[sel]) > 10).sum()
        assert r["threshold"] == 10.0 and r["rule"] == "abs>10"
    assert set(df["phone"]) == set(PHONES[1:])  # phones that occur; <eps> never does


def test_gru_rule_and_bins():
    assert paper_rule("gru").name == "abs<0.5"
    specs = default_histogram_specs("gru")
    assert (specs["c"].lo, specs["c"].hi) == (-1.0, 1.0)
    assert (specs["i"].lo, specs["i"].hi) == (0.0, 1.0)
    assert (default_histogram_specs("lstm_lazy")["c"].lo) == -10.0


def test_percentile_rule_threshold_from_the_histogram():
    rng = np.random.default_rng(4)
    values = fake_values(rng, 4000, layers=(1,), hidden=8, scale=2.0)
    phones = rng.integers(1, len(PHONES), 4000)
    rule = IrregularityRule.parse("pct>95")
    first = summarise_in_shards(values, phones, [0, 4000], rules=(rule,))
    thr = first.percentile_thresholds()
    exact = np.percentile(np.abs(values["L1.c"]), 95)
    assert thr[("pct>95", 1)] == pytest.approx(exact, abs=1 / 8)  # one bin of LSTM c
    second = UnitSummary("lstm", len(PHONES), rules=(rule,), thresholds=thr, values=False)
    second.update(values, phones)
    df = second.frames_for_store("ck", PHONES)
    assert set(df) == {"phone_responsibility"}
    pr = df["phone_responsibility"]
    assert pr["threshold"].unique().to_list() == [thr[("pct>95", 1)]]
    share = pr.group_by("unit").agg(pl.col("irregular").sum() / pl.col("frames").sum())
    assert 0.03 < share[:, 1].mean() < 0.07


@pytest.mark.parametrize("spec", ["abs>10", "abs<0.5", "pct>99", "pct<5", " abs > 1e1 "])
def test_rule_specs_round_trip(spec):
    r = IrregularityRule.parse(spec)
    assert IrregularityRule.parse(r.name) == r


@pytest.mark.parametrize("bad", ["abs>", "abs=3", "pct>100", "top>3", "abs>-1"])
def test_bad_rule_specs_are_refused(bad):
    with pytest.raises(ValueError, match="rule"):
        IrregularityRule.parse(bad)


def test_inexact_bins_are_refused():
    with pytest.raises(ValueError, match="power of two"):
        HistogramSpec(-10.0, 10.0, 200)  # width 0.1 cannot be binned exactly
    with pytest.raises(ValueError, match="power of two"):
        HistogramSpec(-0.3, 0.7, 8)  # lo not a multiple of the width


def test_inconsistent_updates_and_merges_are_refused():
    rng = np.random.default_rng(5)
    s = UnitSummary("lstm", len(PHONES))
    s.update(fake_values(rng, 10, layers=(1,)), np.ones(10, int))
    with pytest.raises(ValueError, match="earlier updates"):
        s.update(fake_values(rng, 10, layers=(1, 2)), np.ones(10, int))
    with pytest.raises(ValueError, match="phone ids"):
        s.update(fake_values(rng, 10, layers=(1,)), np.full(10, 99))
    with pytest.raises(ValueError, match=r"expected \[10, H\]"):
        v = fake_values(rng, 10, layers=(1,))
        v["L1.c"] = v["L1.c"][:9]
        s.update(v, np.ones(10, int))
    with pytest.raises(ValueError, match="different rules"):
        s.merge(UnitSummary("lstm", len(PHONES), rules=(paper_rule("lstm"),)))


def test_torch_and_numpy_inputs_agree():
    rng = np.random.default_rng(6)
    values = fake_values(rng, 64, layers=(1,))
    phones = rng.integers(1, len(PHONES), 64)
    a, b = UnitSummary("lstm", len(PHONES)), UnitSummary("lstm", len(PHONES))
    a.update(values, phones)
    b.update({k: torch.from_numpy(v) for k, v in values.items()}, torch.from_numpy(phones))
    assert a.stats_frame("x").equals(b.stats_frame("x"))
    assert a.histograms_frame("x").equals(b.histograms_frame("x"))


@pytest.mark.parametrize("kernel", ["both"])  # replaces the autouse fixture: this test sets it
def test_c_kernel_and_torch_path_agree(kernel, monkeypatch):
    if "c" not in KERNELS:
        pytest.skip("no C compiler")
    rng = np.random.default_rng(7)
    values = fake_values(rng, 300, hidden=33)  # an odd width: the vector loops' remainders
    values["L1.c"][:5, 0] = [10.0, -10.0, 2.0, -2.0, 0.7]
    phones = rng.integers(1, len(PHONES), 300)
    out = {}
    for k in ("c", "torch"):
        monkeypatch.setenv("GATELENS_SUMMARY_KERNEL", k)
        out[k] = summarise_in_shards(values, phones, [0, 77, 300], rules=(paper_rule("lstm"), IrregularityRule.parse("abs<0.5")))
    a, b = out["c"], out["torch"]
    for key in a.state:
        for f in ("hist", "count", "n_nan", "vmin", "vmax", "n_inside_2", "n_outside_07"):
            np.testing.assert_array_equal(getattr(a.state[key], f), getattr(b.state[key], f), err_msg=f"{key} {f}")
        np.testing.assert_allclose(a.state[key].mean, b.state[key].mean, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(a.state[key].m2, b.state[key].m2, rtol=1e-5)
    for key in a.irregular:
        np.testing.assert_array_equal(a.irregular[key], b.irregular[key])


def test_rows_read_in_place_equal_the_selected_frames():
    """update(rows=...) reads the valid rows of padded arrays in place: the same summary as
    feeding the selected frames."""
    rng = np.random.default_rng(9)
    padded = fake_values(rng, 50, layers=(1,), hidden=5)
    rows = np.array([0, 1, 2, 10, 11, 30, 31, 32, 33, 49])
    phones = rng.integers(1, len(PHONES), len(rows))
    rules = (paper_rule("lstm"), IrregularityRule.parse("abs<0.5"))
    a, b = UnitSummary("lstm", len(PHONES), rules=rules), UnitSummary("lstm", len(PHONES), rules=rules)
    a.update(padded, phones, rows=rows)
    b.update({k: v[rows] for k, v in padded.items()}, phones)
    assert a.stats_frame("x").equals(b.stats_frame("x"))
    assert a.histograms_frame("x").equals(b.histograms_frame("x"))
    assert a.responsibility_frame("x", PHONES).equals(b.responsibility_frame("x", PHONES))
    with pytest.raises(ValueError, match="rows within it"):
        a.update(padded, phones, rows=rows + 1)
