"""Statistics over seeds: a mean and its 95 % interval, from scipy.stats.

A study trains every grid point once per seed; what a table or a claim may say about a point is
its mean over seeds with the interval that seed-to-seed variation allows (Student's t on the seed
means). With one seed there is no interval: it is NaN, and the table says so rather than pretend.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
from scipy import stats

CONFIDENCE = 0.95
# what makes runs the same grid point (everything but the seed)
POINT = ("cell", "layers", "hidden", "residual", "lazy_layers", "precision")


def mean_interval(values, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, low, high) of ``values``; the interval is NaN with fewer than two values."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan, math.nan
    if np.all(x == x[0]):
        return mean, mean, mean
    low, high = stats.t.interval(confidence, df=x.size - 1, loc=mean, scale=stats.sem(x))
    return mean, float(low), float(high)


def over_seeds(results: pl.DataFrame, metrics=("test_per", "test_frame_acc")) -> pl.DataFrame:
    """One row per grid point of ``collect_results`` rows: n_seeds, the seeds, and per metric its
    mean, ci_low and ci_high over seeds (grouped on ``POINT`` and, if present, ``study``)."""
    if results.is_empty():
        return results
    keys = [k for k in ("study", *POINT) if k in results.columns]
    rows = []
    for key, group in results.sort(keys + ["seed"], nulls_last=True).group_by(keys, maintain_order=True):
        row = dict(zip(keys, key))
        row["n_seeds"] = group.height
        row["seeds"] = group["seed"].to_list()
        row["runs"] = group["run"].to_list()
        for m in metrics:
            row[m], row[f"{m}_ci_low"], row[f"{m}_ci_high"] = mean_interval(group[m].to_list())
        rows.append(row)
    return pl.DataFrame(rows)
