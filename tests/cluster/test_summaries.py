"""Per-unit summaries: exact histograms and counts, merging across shards, the irregularity rules,
histogram quantiles."""

import pickle
import warnings

import numba
import numpy as np
import polars as pl
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cluster.summaries as summaries
from cluster.summaries import (QUANTITIES, HistogramSpec, IrregularityRule, UnitSummary,
                               default_histogram_specs, histogram_quantiles, interval_quantiles, paper_rule)

PHONES = ["<eps>", "SIL", "AA", "B", "K", "S"]


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
    if data.draw(st.booleans()):  # NaN and -inf in unit 1 of c (a diverged model): still exact
        values["L1.c"][rng.integers(0, n, 3), 1] = [np.nan, -np.inf, np.nan]
    phones = rng.integers(1, len(PHONES), n)
    rules = (IrregularityRule.parse("abs>2"), IrregularityRule.parse("abs<0.5"))
    one = summarise_in_shards(values, phones, [0, n], rules=rules)
    many = summarise_in_shards(values, phones, cuts, rules=rules)
    for key, a in one.state.items():
        b = many.state[key]
        for f in ("hist", "count", "n_nan", "vmin", "vmax", "n_inside_2", "n_outside_07"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f"{key} {f}")
        x = values[f"L{key[0]}.{key[1]}"].astype(np.float64)
        np.testing.assert_array_equal(b.count, (~np.isnan(x)).sum(0))
        seen = b.count > 0  # a unit whose every value is NaN keeps mean 0 (stored as null)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # numpy on NaN-only or -inf columns
            np.testing.assert_allclose(b.mean[seen], np.nanmean(x, 0)[seen], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(b.m2[seen] / b.count[seen], np.nanvar(x, 0)[seen], rtol=1e-4, atol=1e-7)
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


def unit_by_unit(x: np.ndarray, spec: HistogramSpec) -> dict[str, np.ndarray]:
    """What a summary of x [N, H] must hold, column by column in float64 numpy."""
    x = x.astype(np.float64)
    out = {k: [] for k in ("hist", "count", "n_nan", "mean", "var", "vmin", "vmax", "inside", "outside")}
    for col in x.T:
        keep = col[~np.isnan(col)]
        out["n_nan"].append(col.size - keep.size)
        out["count"].append(keep.size)
        out["hist"].append([(keep < spec.lo).sum(), *np.histogram(keep, bins=spec.edges())[0], (keep > spec.hi).sum()])
        with np.errstate(invalid="ignore"):
            out["mean"].append(keep.mean() if keep.size else 0.0)
            out["var"].append(keep.var() if keep.size else np.nan)
        out["vmin"].append(keep.min() if keep.size else np.inf)
        out["vmax"].append(keep.max() if keep.size else -np.inf)
        out["inside"].append((np.abs(keep) < 2).sum())
        out["outside"].append((np.abs(keep) >= 0.7).sum())
    return {k: np.array(v) for k, v in out.items()}


def assert_matches(st_, want, rtol=1e-6):
    np.testing.assert_array_equal(st_.hist, want["hist"])
    for f, w in (("count", "count"), ("n_nan", "n_nan"), ("vmin", "vmin"), ("vmax", "vmax")):
        np.testing.assert_array_equal(getattr(st_, f), want[w], err_msg=f)
    if st_.n_inside_2 is not None:
        np.testing.assert_array_equal(st_.n_inside_2, want["inside"])
        np.testing.assert_array_equal(st_.n_outside_07, want["outside"])
    np.testing.assert_allclose(st_.mean, want["mean"], rtol=rtol, atol=1e-7)
    with np.errstate(invalid="ignore", divide="ignore"):
        np.testing.assert_allclose(st_.m2 / st_.count, want["var"], rtol=10 * rtol, atol=1e-7)


def test_nan_and_inf_inputs_match_numpy():
    """NaN is left out of every statistic and counted apart, inline, wherever it sits (also in the
    first frame, the moments' shift); +-inf land in the under/overflow, make the mean +-inf (NaN
    when both meet) and the variance NaN, as numpy has them."""
    rng = np.random.default_rng(10)
    n, h = 300, 9
    x = (rng.standard_normal((n, h)) * 6).astype(np.float32)
    x[0, 0] = np.nan  # the first frame: what the moments are shifted by
    x[[5, 50, 299], 1] = np.nan
    x[:, 2] = np.nan  # a unit that is NaN on every frame
    x[[3, 4], 3] = np.inf
    x[7, 4] = -np.inf
    x[[8, 9], 5] = [np.inf, -np.inf]
    x[0, 6] = np.inf  # inf as the first frame
    x[:4, 7] = [10.0, -10.0, 2.0, -2.0]  # the range ends and the Fig. 3 bounds
    x[:3, 8] = [0.7, -0.7, np.float32(0.7)]
    phones = rng.integers(1, len(PHONES), n)
    rule = IrregularityRule.parse("abs>5")
    for cuts in ([0, n], [0, 1, 100, 299, n]):  # one shot, and merged shards
        s = summarise_in_shards({"L1.c": x}, phones, cuts, rules=(rule,))
        want = unit_by_unit(x, s.specs["c"])
        assert_matches(s.state[(1, "c")], want)
        irr = s.irregular[("abs>5", 1)]
        with np.errstate(invalid="ignore"):
            for p in range(len(PHONES)):
                np.testing.assert_array_equal(irr[:, p], (np.abs(x[phones == p]) > 5).sum(0))
    st_ = s.state[(1, "c")]
    assert st_.mean[3] == np.inf and st_.mean[4] == -np.inf and np.isnan(st_.mean[5]) and st_.mean[6] == np.inf
    assert st_.count[2] == 0 and st_.n_nan[2] == n and st_.hist[2].sum() == 0
    row = s.stats_frame("ck").filter(pl.col("unit") == 2).row(0, named=True)
    assert row["count"] == 0 and row["mean"] is None and row["min"] is None and row["variance"] is None


@pytest.mark.parametrize("dtype", [np.float16, torch.float16, torch.bfloat16, np.float64])
def test_half_precision_and_double_input_are_read_as_float32(dtype):
    """float16 / bfloat16 widen exactly, float64 rounds to float32: the summary of either equals the
    summary of the float32 values, and numpy's on them."""
    rng = np.random.default_rng(11)
    values = fake_values(rng, 200, layers=(1,), hidden=5, scale=8.0)
    if isinstance(dtype, torch.dtype):
        given_ = {k: torch.from_numpy(v).to(dtype) for k, v in values.items()}
        as32 = {k: v.float().numpy() for k, v in given_.items()}
    else:
        given_ = {k: v.astype(dtype) for k, v in values.items()}
        as32 = {k: v.astype(np.float32) for k, v in given_.items()}
    phones = rng.integers(1, len(PHONES), 200)
    a, b = UnitSummary("lstm", len(PHONES)), UnitSummary("lstm", len(PHONES))
    a.update(given_, phones)
    b.update(as32, phones)
    assert a.stats_frame("x").equals(b.stats_frame("x"))
    assert a.histograms_frame("x").equals(b.histograms_frame("x"))
    for name, x in as32.items():
        layer, q = int(name[1]), name[3]
        assert_matches(a.state[(layer, q)], unit_by_unit(x, a.specs[q]))


def test_empty_batches_change_nothing():
    rng = np.random.default_rng(12)
    values = fake_values(rng, 40, layers=(1,), hidden=4)
    phones = rng.integers(1, len(PHONES), 40)
    rules = (paper_rule("lstm"), IrregularityRule.parse("abs<0.5"))
    a, b = UnitSummary("lstm", len(PHONES), rules=rules), UnitSummary("lstm", len(PHONES), rules=rules)
    a.update(values, phones)
    b.update({k: v[:0] for k, v in values.items()}, phones[:0])  # before any frame
    b.update(values, phones)
    b.update({k: v[:0] for k, v in values.items()}, phones[:0])
    b.update(values, np.array([], np.int64), rows=np.array([], np.int64))
    b.merge(UnitSummary("lstm", len(PHONES), rules=rules))  # an empty shard
    assert b.frames == a.frames == 40
    assert a.stats_frame("x").equals(b.stats_frame("x"))
    assert a.histograms_frame("x").equals(b.histograms_frame("x"))
    assert a.responsibility_frame("x", PHONES).equals(b.responsibility_frame("x", PHONES))
    empty = UnitSummary("lstm", len(PHONES), rules=rules).merge(a)  # merging into an empty summary
    assert empty.stats_frame("x").equals(a.stats_frame("x"))


def test_pickled_summaries_keep_counting():
    """Ray pickles a task's summary and hands back read-only arrays (zero-copy from its object
    store); the unpickled summary still merges and updates, in place, exactly."""
    rng = np.random.default_rng(13)
    values = fake_values(rng, 120, layers=(1, 2), hidden=4)
    phones = rng.integers(1, len(PHONES), 120)
    rules = (paper_rule("lstm"),)
    first = UnitSummary("lstm", len(PHONES), rules=rules)
    first.update({k: v[:70] for k, v in values.items()}, phones[:70])
    state = pickle.loads(pickle.dumps(first)).__dict__
    for st_ in state["state"].values():
        for a in vars(st_).values():
            if isinstance(a, np.ndarray):
                a.flags.writeable = False
    for a in [state["phone_frames"], *state["irregular"].values()]:
        a.flags.writeable = False
    back = UnitSummary.__new__(UnitSummary)
    back.__setstate__(state)
    back.update({k: v[70:] for k, v in values.items()}, phones[70:])
    one = summarise_in_shards(values, phones, [0, 70, 120], rules=rules)  # the same batches
    assert back.stats_frame("x").equals(one.stats_frame("x"))
    assert back.histograms_frame("x").equals(one.histograms_frame("x"))
    assert back.responsibility_frame("x", PHONES).equals(one.responsibility_frame("x", PHONES))


def test_one_compiled_signature_for_every_input_kind():
    """numpy or torch, float16 / bfloat16 / float32, rows or not, c (range shares) or a gate:
    the loops compile once, so a Ray task loads one cached build and never compiles."""
    rng = np.random.default_rng(14)
    values = fake_values(rng, 30, layers=(1,), hidden=3)
    phones = rng.integers(1, len(PHONES), 30)
    s = UnitSummary("lstm", len(PHONES), rules=(paper_rule("lstm"), IrregularityRule.parse("abs<0.5")))
    s.update(values, phones)
    compiled = {f: len(f.signatures) for f in (summaries._summarise, summaries._count_abs)}
    s.update({k: torch.from_numpy(v).to(torch.bfloat16) for k, v in values.items()}, torch.from_numpy(phones))
    s.update({k: v.astype(np.float16) for k, v in values.items()}, phones.astype(np.int32))
    s.update(values, phones[:10], rows=torch.arange(0, 30, 3))
    assert {f: len(f.signatures) for f in compiled} == compiled


def test_uncacheable_loops_still_compile(monkeypatch):
    """Where numba finds no writable cache directory (``cache=True`` raises at decoration), the
    loops compile per process instead of breaking the import."""
    real = numba.njit

    def njit(**kw):
        if kw.get("cache"):
            raise RuntimeError("cannot cache function 'f': no locator available for file 'x.py'")
        return real(**kw)

    monkeypatch.setattr(numba, "njit", njit)
    with pytest.warns(RuntimeWarning, match="no writable cache directory"):
        f = summaries._compiled(lambda a: a + 1)
    assert f(1) == 2


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


# ---------------------------------------------------------------------------------------------
# Histogram quantiles


def test_histogram_quantiles_known_values():
    # 4 bins of width 1 on [0, 4]; the mass of bin 1 spread uniformly over [1, 2)
    assert histogram_quantiles([0, 4, 0, 0], 0.0, 4.0, 0, 0, qs=(0.25, 0.5, 1.0)) == [1.25, 1.5, 2.0]
    # equal bins: the quantiles of a uniform distribution on [lo, hi]
    np.testing.assert_allclose(histogram_quantiles([5] * 8, -1.0, 1.0, 0, 0, qs=(0.05, 0.5, 0.95)), [-0.9, 0.0, 0.9])
    # under/overflow sit at lo / hi (clamped, as the figures clip them)
    assert histogram_quantiles([0, 0], -10.0, 10.0, 3, 1, qs=(0.0, 0.5, 0.75, 1.0)) == [-10.0, -10.0, -10.0, 10.0]
    assert histogram_quantiles([2, 2], 0.0, 1.0, 0, 4, qs=(0.5, 0.75)) == [1.0, 1.0]
    # [0, 0.5) holds 1, [0.5, 1] holds 3: 0.05 of 4 is 0.2 of the first bin, 0.5 a third of the second
    got = histogram_quantiles([1, 3], 0.0, 1.0, 0, 0)
    assert got == [0.1, pytest.approx(0.5 + 0.5 / 3), pytest.approx(0.5 + 0.5 * 2.8 / 3)]
    assert all(np.isnan(histogram_quantiles([0, 0, 0], 0.0, 1.0, 0, 0)))


@pytest.mark.parametrize("q", ["c", "i", "g"])
def test_histogram_quantiles_within_one_bin_of_numpy(q):
    """From a summary's histogram, every quantile lies in the bin of numpy's (inverted-CDF)
    quantile of the values clipped to the range: at most one bin width away."""
    rng = np.random.default_rng(15)
    values = fake_values(rng, 3000, layers=(1,), hidden=2, scale=5.0)
    values["L1.c"][:40, 0] = 1e3  # overflow: clamped to hi
    s = summarise_in_shards(values, rng.integers(1, len(PHONES), 3000), [0, 1000, 3000])
    spec = s.specs[q]
    qs = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0)
    for u in range(2):
        hist = s.histogram(1, q)[u]
        got = histogram_quantiles(hist[1:-1], spec.lo, spec.hi, hist[0], hist[-1], qs=qs)
        x = np.clip(values[f"L1.{q}"][:, u].astype(np.float64), spec.lo, spec.hi)
        want = np.quantile(x, qs, method="inverted_cdf")
        np.testing.assert_allclose(got, want, atol=spec.width, rtol=0)
        assert got == sorted(got)


def test_interval_quantiles_sorts_by_lower_edge_and_threshold_uses_it():
    # the same intervals in any order give the same quantiles
    lower, upper, mass = np.array([2.0, 0.0, 1.0]), np.array([3.0, 1.0, 2.0]), np.array([1.0, 2.0, 1.0])
    perm = [2, 0, 1]
    assert interval_quantiles(lower, upper, mass, (0.25, 0.5, 0.9)) == \
        interval_quantiles(lower[perm], upper[perm], mass[perm], (0.25, 0.5, 0.9)) == [0.5, 1.0, 2.6]
    # a pct rule's threshold is the quantile of |x| over the folded bins: symmetric bins of mass
    # 1 on [-2, 2] in steps of 1 fold to two per unit of |x|, so the median of |x| is 1; elsewhere
    # within one bin (the two halves of a folded bin are taken one after the other)
    spec = HistogramSpec(-2.0, 2.0, 4)
    counts = np.array([0, 1, 1, 1, 1, 0])
    assert IrregularityRule.parse("pct>50").threshold_from_histogram(spec, counts) == 1.0
    for pct, exact in ((10, 0.2), (60, 1.2), (75, 1.5), (99, 1.98)):
        thr = IrregularityRule.parse(f"pct>{pct}").threshold_from_histogram(spec, counts)
        assert abs(thr - exact) <= spec.width
    # overflow counts sit at the bound
    assert IrregularityRule.parse("pct>90").threshold_from_histogram(spec, np.array([0, 1, 0, 0, 1, 8])) == 2.0
