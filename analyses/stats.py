"""Statistics over seeds: a mean and its 95 % interval, from scipy.stats.

A study trains every grid point once per seed; what a table or a claim may say about a point is
its mean over seeds with the interval that seed-to-seed variation allows (Student's t on the seed
means). With one seed there is no interval: it is NaN, and the table says so rather than pretend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


# ---------------------------------------------------------------------------------------------
# Error rates: a paired bootstrap over test utterances (and seeds)

@dataclass(frozen=True)
class Contrast:
    """An interval for a linear contrast of error rates, sum_k w_k PER_k (a difference of two
    systems, a mean of differences, a slope over depth), from ``bootstrap_contrast``."""

    effect: float  # on the data as measured
    ci_low: float
    ci_high: float
    p_negative: float  # share of resamples with a negative contrast (P(effect < 0))
    n_seeds: int
    n_utterances: int
    test: str


def bootstrap_contrast(errors: np.ndarray, ref_len: np.ndarray, weights, confidence: float = CONFIDENCE,
                       n_resamples: int = 2000, seed: int = 0) -> Contrast:
    """The paired bootstrap of Bisani and Ney (2004), what Kaldi's ``compute-wer-bootci`` does,
    extended to seeds: ``errors[k, s, u]`` are the errors of system k's replicate s (its seed) on
    test utterance u, ``ref_len[u]`` that utterance's reference length, and the contrast is
    sum_k weights[k] * PER_k with PER_k = sum_{s,u} errors[k, s, u] / (S sum_u ref_len[u]).

    Utterances are resampled once per resample for every system (the pairing: all systems were
    scored on the same utterances), and replicates independently of them (every system's s-th
    seed together; with one seed only utterances are resampled). The resampling is
    ``scipy.stats.bootstrap`` with one sample of utterance indices and one of seed indices
    (``paired=False`` resamples them independently); the interval is its percentile interval
    (BCa's jackknife over two or three seeds is degenerate), the same as compute-wer-bootci's."""
    errors = np.asarray(errors, dtype=np.float64)
    ref_len = np.asarray(ref_len, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    k, n_seeds, n_utts = errors.shape
    if w.shape != (k,) or ref_len.shape != (n_utts,):
        raise ValueError(f"errors {errors.shape}, ref_len {ref_len.shape}, weights {w.shape} do not match")
    if n_utts < 2 or ref_len.sum() <= 0:
        raise ValueError(f"{n_utts} utterances: a bootstrap over utterances needs at least 2 with references")
    contrast = np.tensordot(w, errors, axes=1)  # (S, U): the per-replicate, per-utterance error contrast

    def statistic(*idx, axis=-1):
        u = idx[-1].astype(np.intp)  # (..., U)
        s = idx[0].astype(np.intp) if len(idx) == 2 else np.zeros(u.shape[:-1] + (1,), np.intp)
        num = contrast[s[..., :, None], u[..., None, :]].sum(axis=(-1, -2)) / s.shape[-1]
        return num / ref_len[u].sum(axis=-1)

    samples = ((np.arange(n_seeds),) if n_seeds > 1 else ()) + (np.arange(n_utts),)
    res = stats.bootstrap(samples, statistic, paired=False, vectorized=True, n_resamples=n_resamples,
                          confidence_level=confidence, method="percentile", batch=max(1, 2 ** 24 // (n_seeds * n_utts)),
                          rng=np.random.default_rng(seed))
    dist = res.bootstrap_distribution
    test = (f"paired bootstrap over {n_utts} test utterances" + (f" and {n_seeds} seeds" if n_seeds > 1 else "")
            + f", {n_resamples} resamples, percentile interval")
    return Contrast(float(statistic(*samples)), float(res.confidence_interval.low), float(res.confidence_interval.high),
                    float(np.mean(dist < 0)), n_seeds, n_utts, test)
