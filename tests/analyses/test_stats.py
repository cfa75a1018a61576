"""Means over seeds and their intervals (scipy.stats' Student t), and grouping runs by grid point."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from scipy import stats

from analyses.stats import mean_interval, over_seeds


def test_interval_is_students_t_on_the_seed_values():
    mean, low, high = mean_interval([0.10, 0.12, 0.11])
    half = stats.t.ppf(0.975, 2) * np.std([0.10, 0.12, 0.11], ddof=1) / math.sqrt(3)
    assert mean == pytest.approx(0.11) and (low, high) == pytest.approx((0.11 - half, 0.11 + half))
    assert math.isnan(mean_interval([0.3])[1])  # one seed: no interval, not a pretend one
    assert mean_interval([0.2, 0.2]) == (0.2, 0.2, 0.2)
    assert math.isnan(mean_interval([])[0])


def test_the_interval_covers_a_planted_mean_in_about_95_of_100_trials():
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(100):
        low, high = mean_interval(rng.normal(0.25, 0.01, size=3))[1:]
        covered += low <= 0.25 <= high
    assert covered >= 90
    low, high = mean_interval(rng.normal(0.25, 0.001, size=5))[1:]
    assert not low <= 0.20 <= high  # a large difference is excluded


def test_runs_group_by_grid_point_over_seeds():
    base = {"hidden": 16, "residual": False, "lazy_layers": None, "precision": "fp32", "test_frame_acc": 0.5}
    df = pl.DataFrame([{**base, "run": f"{c}_s{s}", "cell": c, "layers": 1, "seed": s, "test_per": per}
                       for c, s, per in [("gru", 0, 0.30), ("gru", 1, 0.32), ("lstm", 0, 0.40)]])
    out = over_seeds(df).sort("cell")
    assert out["n_seeds"].to_list() == [2, 1] and out["seeds"].to_list() == [[0, 1], [0]]
    assert out["test_per"].to_list() == pytest.approx([0.31, 0.40])
    assert out["test_per_ci_low"][0] < 0.31 < out["test_per_ci_high"][0] and math.isnan(out["test_per_ci_low"][1])
