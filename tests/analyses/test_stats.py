"""Means over seeds and their intervals (scipy.stats' Student t), grouping runs by grid point, and
the calibration of the verdicts' tests by simulation: seed-to-seed and utterance variation planted,
false-decision rates and coverage measured, asserted with margins suited to the trial count."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from scipy import stats

from analyses.stats import (ALPHA, MIN_SEEDS, bounded_p, calibrate, calibrate_censored, holm, km_median, mean_interval, over_seeds, per_seed_contrast,
                            pooled_seed_test, seed_contrast, seed_test, simulate_errors, t_moments)

TRIALS = 2000


def _bound(rate: float, trials: int = TRIALS) -> float:
    """Three binomial standard errors: how far a measured rate may stray from the true one."""
    return 3 * math.sqrt(rate * (1 - rate) / trials)


def test_interval_is_students_t_on_the_seed_values():
    mean, low, high = mean_interval([0.10, 0.12, 0.11])
    half = stats.t.ppf(0.975, 2) * np.std([0.10, 0.12, 0.11], ddof=1) / math.sqrt(3)
    assert mean == pytest.approx(0.11) and (low, high) == pytest.approx((0.11 - half, 0.11 + half))
    assert math.isnan(mean_interval([0.3])[1])  # one seed: no interval, not a pretend one
    assert math.isnan(mean_interval([])[0])
    t = seed_test([0.10, 0.12, 0.11], direction=+1, margin=0.5)
    assert (t.ci_low, t.ci_high) == pytest.approx((low, high))
    assert t.p_value == pytest.approx(stats.ttest_1samp([0.10, 0.12, 0.11], 0.0, alternative="greater").pvalue)
    assert t.p_equiv < 0.025  # inside +-0.5


def test_nan_seeds_do_not_count_and_zero_spread_has_no_interval():
    t = seed_test([-0.5, float("nan"), -0.4], direction=-1)
    assert t.n_seeds == 2 and math.isnan(t.ci_low) and not t.decidable and f"at least {MIN_SEEDS}" in t.note
    same = seed_test([0.2, 0.2, 0.2], direction=+1, margin=0.1)
    assert same.effect == pytest.approx(0.2) and not same.decidable and "zero spread" in same.note
    assert math.isnan(same.ci_low) and math.isnan(same.p_equiv)


def test_pooled_groups_and_holm():
    a, b = [1.0, 1.2, 0.8], [2.0, 2.4, 1.6, 2.0]
    t = pooled_seed_test([a, b, [5.0]], direction=+1)
    parts = np.array([np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 4]) / 4  # Welch-Satterthwaite
    se, df = math.sqrt(parts.sum()), parts.sum() ** 2 / (parts[0] ** 2 / 2 + parts[1] ** 2 / 3)
    assert t.effect == pytest.approx(1.5) and t.df == pytest.approx(df) and t.n_seeds == 7
    assert "1 seed(s) left out" in t.note
    assert t.ci_high - t.effect == pytest.approx(stats.t.ppf(0.975, df) * se)
    assert holm([0.01, 0.04, 0.03, float("nan")])[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(holm([0.01, float("nan")])[1])


def test_per_seed_contrast_is_the_contrast_of_the_error_rates():
    errors = np.array([[[1, 2, 3], [2, 2, 2]], [[0, 1, 1], [1, 1, 0]]])  # 2 systems x 2 seeds x 3 utterances
    ref = np.array([10, 10, 20])
    x = per_seed_contrast(errors, ref, [-1, 1])
    assert x == pytest.approx([(2 - 6) / 40, (2 - 6) / 40])
    with pytest.raises(ValueError):
        per_seed_contrast(errors, ref[:2], [-1, 1])


@pytest.mark.parametrize("seed_sd", [0.003, 0.01], ids=["spread 0.3 points", "spread 1 point"])
def test_error_rate_verdicts_are_calibrated(seed_sd):
    """Planted null and planted 2-point effect, 3 and 5 seeds, 300 utterances: the false-decision
    rate stays at the nominal 5 % and the coverage at 95 % (within 3 binomial SE of 2000 trials);
    the README quotes the measured numbers and the power."""
    for row in calibrate(trials=TRIALS, seed=7, seed_sds=(seed_sd,), n_seeds=(3, 5)):  # 2 x 3 x 2000 trials
        assert row["false_decisions"] <= ALPHA + _bound(ALPHA), row
        for effect in (0.01, 0.02):
            assert row[f"coverage@{effect:g}"] >= 1 - ALPHA - _bound(ALPHA), row
        assert row["null_coverage"] >= 1 - ALPHA - _bound(ALPHA), row
        assert row["power@0.02"] > (0.9 if row["seeds"] == 5 and seed_sd < 0.005 else 0.15), row
        assert row["naive_false_decisions"] > ALPHA + _bound(ALPHA)  # what it replaced was not calibrated


def test_a_normal_interval_on_the_biased_seed_variance_is_not_calibrated():
    """An approximation of what the two-stage test replaced (the percentile bootstrap over seeds had
    (S-1)/S of the seed variance; the bootstrap itself is not rerun). The same planted null at 1 point and 3 seeds, as a normal interval on
    that variance, decides falsely far more often than 5 %: the simulation can tell them apart."""
    rng = np.random.default_rng(11)
    errors, ref = simulate_errors(rng, TRIALS, 0.0, 3, 0.01)
    x = per_seed_contrast(errors, ref, [-1.0, 1.0])
    mean, se_boot = x.mean(-1), x.std(-1, ddof=0) / math.sqrt(3)
    naive = np.mean(np.abs(mean) > 1.96 * se_boot)
    assert naive > 0.12
    low, high = t_moments(mean, x.std(-1, ddof=1) / math.sqrt(3), 2)[:2]
    assert np.mean((low > 0) | (high < 0)) <= ALPHA + _bound(ALPHA)


def test_per_checkpoint_claims_are_calibrated():
    """A per-checkpoint number (a share, say) per seed: a per-seed offset of sd 0.03 and, per grid
    point, measurement noise of sd 0.01, averaged over 3 grid points; 3 and 5 seeds."""
    rng = np.random.default_rng(3)
    for seeds in (3, 5):
        values = rng.normal(0, 0.03, (TRIALS, seeds)) + rng.normal(0, 0.01, (TRIALS, seeds, 3)).mean(-1)
        low, high, p, against, _ = t_moments(values.mean(-1), values.std(-1, ddof=1) / math.sqrt(seeds), seeds - 1)
        assert np.mean((p < ALPHA / 2) | (against < ALPHA / 2)) <= ALPHA + _bound(ALPHA)
        assert np.mean((low <= 0) & (0 <= high)) >= 1 - ALPHA - _bound(ALPHA)
    one = seed_test(values[0], direction=+1)
    assert (one.ci_low, one.ci_high) == pytest.approx((low[0], high[0]))  # the claims' code, same numbers


def test_bounds_block_the_verdicts_they_could_undo():
    p = (0.01, 0.99, 0.5)
    assert bounded_p(*p, direction=-1, lower=False, upper=False) == p
    assert bounded_p(*p, direction=-1, lower=True, upper=False) == (1.0, 0.99, 1.0)  # may be larger: not "below 0"
    assert bounded_p(*p, direction=-1, lower=False, upper=True) == (0.01, 1.0, 1.0)
    assert bounded_p(*p, direction=+1, lower=False, upper=True) == (1.0, 0.99, 1.0)
    assert bounded_p(0.01, 0.99, math.nan, direction=+1, lower=True, upper=True)[2] != 1.0  # no margin: no TOST


def test_censored_duration_verdicts_are_calibrated():
    """Durations censored at each condition's horizon, Kaplan-Meier medians per layer, as the
    memory claims read them: with the bounds heeded no scenario decides falsely above 5 % (3
    binomial SE of 150 trials); taken as exact, two systems both beyond the horizon come out
    "no effect" or the wrong way in a large share. The power where one side is censored is kept."""
    trials = 150
    rows = calibrate_censored(trials=trials, seed=5, n_seeds=(3,))
    assert {r["scenario"] for r in rows} == {"null, some censored", "b longer, b censored", "a longer, a censored",
                                             "both beyond the horizon"}
    for r in rows:
        assert r["false"] <= ALPHA + _bound(ALPHA, trials), r
        if r["scenario"] in ("b longer, b censored", "a longer, a censored"):
            assert r["censored_share"] > 0.2 and r["right"] > 0.8, r
    beyond = next(r for r in rows if r["scenario"] == "both beyond the horizon")
    assert beyond["censored_share"] > 0.8 and beyond["naive_false"] > 0.15, beyond


def test_holm_keeps_the_family_wise_error_of_twelve_null_claims():
    rng = np.random.default_rng(5)
    x = rng.normal(0, 1, (TRIALS, 12, 3))
    p = t_moments(x.mean(-1), x.std(-1, ddof=1) / math.sqrt(3), 2)[2]
    raw = np.mean((p < ALPHA / 2).any(axis=1))
    adjusted = np.mean([(holm(row) < ALPHA / 2).any() for row in p])
    assert raw > 0.2  # without a correction: about 1 - 0.975^12 = 26 % of families hold something false
    assert adjusted <= ALPHA / 2 + _bound(ALPHA / 2)


def test_seed_contrast_decides_a_clear_effect():
    rng = np.random.default_rng(1)
    errors, ref = simulate_errors(rng, 1, 0.05, 5, 0.003)
    t = seed_contrast(errors[0], ref[0], [-1, 1], direction=+1)
    assert t.p_value < 0.01 and t.ci_low > 0 and t.n_seeds == 5


def test_kaplan_meier_median_counts_censored_durations_as_at_least():
    assert km_median([5, 6, 7], [False] * 3) == (6.0, False)
    # two conditions censored early (the utterance ended at 2 frames): they do not pull the median to 5
    assert km_median([2, 2, 5, 6, 7], [True, True, False, False, False]) == (6.0, False)
    # more than half censored: only a lower bound
    assert km_median([3, 4, 10, 10, 10], [False, False, True, True, True]) == (10.0, True)
    assert math.isnan(km_median([float("nan")], [False])[0])


def test_runs_group_by_grid_point_over_seeds():
    base = {"hidden": 16, "residual": False, "lazy_layers": None, "precision": "fp32", "test_frame_acc": 0.5}
    df = pl.DataFrame([{**base, "run": f"{c}_s{s}", "cell": c, "layers": 1, "seed": s, "test_per": per}
                       for c, s, per in [("gru", 0, 0.30), ("gru", 1, 0.32), ("lstm", 0, 0.40)]])
    out = over_seeds(df).sort("cell")
    assert out["n_seeds"].to_list() == [2, 1] and out["seeds"].to_list() == [[0, 1], [0]]
    assert out["test_per"].to_list() == pytest.approx([0.31, 0.40])
    assert out["test_per_ci_low"][0] < 0.31 < out["test_per_ci_high"][0] and math.isnan(out["test_per_ci_low"][1])


def test_no_effect_is_rare_when_the_effect_sits_on_the_margin():
    """TOST: with a true difference exactly at the margin (here 1.5 PER points, 5 seeds of spread
    0.3 points, 1,000 utterances), "no effect" comes out at most 2.5 % of the time (within 3 SE); with
    no difference at all the same test finds it, most of the time."""
    rng = np.random.default_rng(9)
    margin, rates = 0.015, {}
    for delta in (margin, 0.0):
        errors, ref = simulate_errors(rng, 1000, delta, 5, 0.003, utterances=1000)
        x = per_seed_contrast(errors, ref, [-1.0, 1.0])
        equiv = t_moments(x.mean(-1), x.std(-1, ddof=1) / math.sqrt(5), 4, +1, margin)[4]
        rates[delta] = np.mean(equiv < ALPHA / 2)
    assert rates[margin] <= ALPHA / 2 + _bound(ALPHA / 2, 1000) and rates[0.0] > 0.5, rates


@pytest.mark.parametrize("sizes", [(3, 3, 3), (5, 3, 3)])
def test_pooling_studies_of_unequal_variance_is_calibrated(sizes):
    """Three studies whose contrasts differ in variance as the depth slopes of table1 (1-6 layers),
    table2 (1-4) and table3 (4-6) do (0.034 : 0.214 : 0.25); a pooled variance decided falsely in
    6-10 % of such nulls, Welch-Satterthwaite at its level."""
    rng = np.random.default_rng(11)
    sds = np.sqrt([0.034, 0.214, 0.25])
    decided = 0
    for _ in range(TRIALS):
        t = pooled_seed_test([rng.normal(0.0, sd, n) for sd, n in zip(sds, sizes)], direction=+1)
        decided += (t.p_value < ALPHA / 2) or (t.p_against < ALPHA / 2)
    assert decided / TRIALS <= ALPHA + _bound(ALPHA)
