"""Statistics over seeds, from scipy.stats: what a table or a claim may say about a grid point.

- ``mean_interval`` / ``over_seeds``: a grid point's mean over seeds and its 95 % Student's t
  interval (NaN with one seed: the table says so rather than pretend).
- ``seed_test`` / ``pooled_seed_test``: Student's t over per-seed values (NaN values are not
  seeds; fewer than ``MIN_SEEDS`` or a zero spread give no interval), with one-sided p-values
  for and against the expected direction and a TOST p-value for equivalence within a margin.
- ``seed_contrast``: error-rate contrasts in two stages, each seed's contrast on the shared test
  utterances, then Student's t over seeds.
- ``holm``: the family-wise correction over one call's claims; ``verdict``: the decision.
- ``km_median``: a Kaplan-Meier median of durations some of which are censored.
- ``calibrate``: the false-decision rate, coverage and power of the error-rate test under
  planted seed and utterance variation (``python -m analyses.stats [trials]`` prints them);
  ``bounded_p`` / ``calibrate_censored``: tests on censored medians ("at least") and their
  false-decision rates with censoring planted.
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
# Tests over seeds: Student's t on per-seed values, one-sided p-values, TOST, Holm

ALPHA = 1 - CONFIDENCE  # two-sided; each one-sided test (holds, contradicted, no effect) runs at ALPHA / 2
MIN_SEEDS = 3  # every claim that needs seed variation: two values give a t with one degree of freedom


@dataclass(frozen=True)
class SeedTest:
    """A t test of one effect over replicates (seeds): the mean, its interval, and three one-sided
    p-values: ``p_value`` for the paper's direction (H0: direction * effect <= 0), ``p_against``
    for the other one, ``p_equiv`` for equivalence within +-margin (TOST: the larger of the two
    one-sided p-values; NaN without a margin). NaN p-values and interval where there is none."""

    effect: float
    ci_low: float
    ci_high: float
    p_value: float
    p_against: float
    p_equiv: float
    n_seeds: int  # replicates that carried a finite value
    df: float
    note: str = ""

    @property
    def decidable(self) -> bool:
        return math.isfinite(self.p_value)


def t_moments(mean, se, df, direction: int = 1, margin: float = math.nan, confidence: float = CONFIDENCE):
    """(low, high, p_value, p_against, p_equiv) of Student's t with these moments; numpy arrays
    of any shape (the simulations call it on thousands of trials at once). ``se`` 0 or ``df`` < 1
    gives NaN everywhere: a zero-width interval is no evidence of anything."""
    mean, se, df = (np.asarray(a, dtype=np.float64) for a in (mean, se, df))
    ok = (se > 0) & (df >= 1) & np.isfinite(mean) & np.isfinite(se)
    se_ok, df_ok = np.where(ok, se, 1.0), np.where(ok, df, 1.0)
    half = stats.t.ppf(0.5 + confidence / 2, df_ok) * se_ok
    t = direction * mean / se_ok
    p = stats.t.sf(t, df_ok)
    against = stats.t.cdf(t, df_ok)
    if math.isfinite(margin) and margin > 0:
        equiv = np.maximum(stats.t.sf((mean + margin) / se_ok, df_ok), stats.t.cdf((mean - margin) / se_ok, df_ok))
    else:
        equiv = np.full(np.broadcast(mean, se_ok).shape, np.nan)
    nan = np.nan
    return tuple(np.where(ok, v, nan) for v in (mean - half, mean + half, p, against, equiv))


def seed_test(values, direction: int = 1, margin: float = math.nan, confidence: float = CONFIDENCE,
              min_seeds: int = MIN_SEEDS) -> SeedTest:
    """Student's t over the finite per-seed ``values`` (NaN and None are not seeds)."""
    return pooled_seed_test([values], direction, margin, confidence, min_seeds)


def pooled_seed_test(groups, direction: int = 1, margin: float = math.nan, confidence: float = CONFIDENCE,
                     min_seeds: int = MIN_SEEDS) -> SeedTest:
    """The mean over groups of each group's mean over seeds (a study's seeds, say: seed 0 of two
    studies are two trainings, not one), with each group's own variance (Welch-Satterthwaite:
    se^2 = sum_g s_g^2 / (G^2 n_g), df from Satterthwaite's formula): the groups' contrasts differ
    in variance (a slope over depths 1-6 against one over 4-6), and a pooled variance with
    df = sum (n_g - 1) decided too often there (simulated: 6-10 % at a nominal 5 %). Groups with fewer
    than ``min_seeds`` finite values are left out (the note says so); one group is the plain
    Student's t over its seeds."""
    clean = [np.asarray([v for v in g if v is not None and math.isfinite(v)], dtype=np.float64) for g in groups]
    kept = [g for g in clean if g.size >= min_seeds]
    dropped = [g.size for g in clean if 0 < g.size < min_seeds]
    n = sum(g.size for g in clean)
    note = ""
    if dropped:
        note = (f"{len(dropped)} group(s) with {', '.join(map(str, dropped))} seed(s) left out: an interval over seeds "
                f"needs at least {min_seeds}")
    if not kept:
        means = [g.mean() for g in clean if g.size]
        effect = float(np.mean(means)) if means else math.nan
        return SeedTest(effect, math.nan, math.nan, math.nan, math.nan, math.nan, n, 0.0, note)
    mean = float(np.mean([g.mean() for g in kept]))
    parts = np.array([g.var(ddof=1) / g.size for g in kept]) / len(kept) ** 2  # each group's share of se^2
    se = math.sqrt(float(parts.sum()))
    dof = np.array([g.size - 1 for g in kept], dtype=np.float64)
    df = float(parts.sum() ** 2 / (parts ** 2 / dof).sum()) if parts.sum() > 0 else float(dof.sum())
    if all(np.all(g == g[0]) for g in kept):  # exactly (the mean's rounding leaves ss a hair above 0)
        se = 0.0
        note = (note + "; " if note else "") + "every seed gave the same value: zero spread is no interval"
    low, high, p, against, equiv = (float(v) for v in t_moments(mean, se, df, direction, margin, confidence))
    return SeedTest(mean, low, high, p, against, equiv, sum(g.size for g in kept), df, note)


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (NaN: not in the family, stays NaN).
    Written out (six lines) rather than adding statsmodels for ``multipletests`` alone."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    if idx.size:
        order = idx[np.argsort(p[idx], kind="stable")]
        m = idx.size
        adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
        out[order] = np.minimum(adjusted, 1.0)
    return out


# ---------------------------------------------------------------------------------------------
# Error rates: each seed's contrast on the shared utterances, then Student's t over seeds


def per_seed_contrast(errors: np.ndarray, ref_len: np.ndarray, weights) -> np.ndarray:
    """sum_k w_k PER_{k,s} per replicate s: ``errors[..., k, s, u]`` are system k's seed-s errors
    on test utterance u (every system scored on the same utterances), ``ref_len[..., u]`` their
    reference lengths; PER_{k,s} = sum_u errors / sum_u ref_len. Leading axes are batch axes."""
    errors = np.asarray(errors, dtype=np.float64)
    ref_len = np.asarray(ref_len, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if errors.ndim < 3 or w.shape != errors.shape[-3:-2] or ref_len.shape[-1] != errors.shape[-1]:
        raise ValueError(f"errors {errors.shape}, ref_len {ref_len.shape}, weights {w.shape} do not match")
    total = ref_len.sum(axis=-1)
    if np.any(total <= 0):
        raise ValueError("no reference phones on the shared utterances")
    per = errors.sum(axis=-1) / total[..., None, None]  # (..., K, S)
    return np.einsum("k,...ks->...s", w, per)


def seed_contrast(errors: np.ndarray, ref_len: np.ndarray, weights, direction: int = 1, margin: float = math.nan,
                  confidence: float = CONFIDENCE) -> SeedTest:
    """The two-stage test of an error-rate contrast: each seed's contrast on the utterances every
    run scored (the pairing over utterances: their difficulty cancels inside a seed), then
    Student's t over the seeds. Seed-to-seed variation of the systems and the test set's sampling
    noise of each run both enter the per-seed values, so the t interval carries both; what it does
    not generalise over is a system-by-utterance interaction shared by every seed (the inference
    is about this test set). Calibrated by simulation (``calibrate``)."""
    return seed_test(per_seed_contrast(errors, ref_len, weights), direction, margin, confidence)


def verdict(test: SeedTest, p_holm: float, p_holm_against: float, p_holm_equiv: float, alpha: float = ALPHA) -> str:
    """no effect / holds / contradicted / undecided from Holm-adjusted one-sided p-values, each at
    alpha / 2 (so that with one claim *holds* is the 95 % interval excluding zero on the expected
    side, *no effect* the 95 % interval inside +-margin). *No effect* comes first: an effect shown
    to lie inside the margin is of no interest whichever its sign, however precisely measured."""
    if not math.isfinite(test.effect):
        return "not measured"
    if not test.decidable:
        return "undecided"
    if math.isfinite(p_holm_equiv) and p_holm_equiv < alpha / 2:
        return "no effect"
    if p_holm < alpha / 2:
        return "holds"
    if p_holm_against < alpha / 2:
        return "contradicted"
    return "undecided"


def bounded_p(p_value: float, p_against: float, p_equiv: float, direction: int, lower: bool,
              upper: bool) -> tuple[float, float, float]:
    """The three one-sided p-values of a test over seeds some of whose effects are only bounds
    (a Kaplan-Meier median that never fell to one half is "at least"): ``lower``, some seed's true
    effect may lie above the value measured; ``upper``, below. A test whose conclusion the bound's
    unknown remainder could undo gets p = 1, its p-value at the least favourable true values (the
    remainder without limit): *holds* in direction -1 (an effect below 0) cannot rest on values
    that may be larger, nor *no effect* on any bound. The others keep their p, as every true value
    lies further on their side; that this keeps their false-decision rate is measured, not assumed
    (``calibrate_censored``)."""
    if not (lower or upper):
        return p_value, p_against, p_equiv
    blocks_for = upper if direction > 0 else lower  # the expected direction needs the other bound
    blocks_against = lower if direction > 0 else upper
    one = lambda p, blocked: 1.0 if blocked and math.isfinite(p) else p  # noqa: E731  (NaN: no test to block)
    return one(p_value, blocks_for), one(p_against, blocks_against), one(p_equiv, True)


# ---------------------------------------------------------------------------------------------
# Durations with censoring


def km_median(times, censored) -> tuple[float, bool]:
    """The Kaplan-Meier median of durations of which the ``censored`` ones are right-censored (the
    event was not seen before the data ended: the duration is at least that), through
    ``scipy.stats.ecdf``. Returns (median, at_least): when the survival curve never falls to one
    half (too many censored), the median is only known to be at least the longest time observed.
    A plain median would count a censored unit at the frames observed, biasing it short."""
    t = np.asarray(times, dtype=np.float64)
    c = np.asarray(censored, dtype=bool)
    ok = np.isfinite(t)
    t, c = t[ok], c[ok]
    if t.size == 0:
        return math.nan, False
    sf = stats.ecdf(stats.CensoredData(uncensored=t[~c], right=t[c])).sf
    hit = np.flatnonzero(sf.probabilities <= 0.5)
    if hit.size:
        return float(sf.quantiles[hit[0]]), False
    return float(t.max()), True


# ---------------------------------------------------------------------------------------------
# Calibration: the procedure under planted seed and utterance variation


def simulate_errors(rng, trials: int, delta: float, seeds: int, seed_sd: float, utterances: int = 300,
                    base: float = 0.30, utt_sd: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Errors [trials, 2, seeds, utterances] of two systems whose expected PERs differ by
    ``delta``: a shared per-utterance difficulty (sd ``utt_sd``), a per-(system, seed) offset of
    sd ``seed_sd`` (the seed-to-seed spread of a run's PER), binomial errors given the rate."""
    ref = rng.integers(10, 40, size=(trials, utterances))
    difficulty = rng.normal(0.0, utt_sd, size=(trials, 1, 1, utterances))
    offset = rng.normal(0.0, seed_sd, size=(trials, 2, seeds, 1))
    rate = np.clip(base + np.array([0.0, delta])[None, :, None, None] + difficulty + offset, 0.0, 1.0)
    return rng.binomial(ref[:, None, None, :], rate), ref


def calibrate(trials: int = 2000, seed: int = 2026, seed_sds=(0.003, 0.01), n_seeds=(3, 5),
              effects=(0.01, 0.02), margin: float = 0.002) -> list[dict]:
    """Per (seed spread, seeds): the false-decision rate under a planted null (a *holds* or
    *contradicted*), the coverage of planted effects, the power against them (*holds*), and how
    often the null comes out *no effect* with ``margin``; for comparison ``naive``, the
    false-decision rate of a normal interval on (S-1)/S of the seed variance (an approximation of the
    old percentile bootstrap's seed resampling, which is not itself rerun here). Two-stage test of ``seed_contrast``, one claim (Holm with
    one claim is the raw p)."""
    rng = np.random.default_rng(seed)
    rows = []
    for sd in seed_sds:
        for s in n_seeds:
            out = {"seed_sd": sd, "seeds": s, "trials": trials}
            for delta in (0.0, *effects):
                errors, ref = simulate_errors(rng, trials, delta, s, sd)
                x = per_seed_contrast(errors, ref, [-1.0, 1.0])
                mean, se = x.mean(-1), x.std(-1, ddof=1) / math.sqrt(s)
                low, high, p, against, equiv = t_moments(mean, se, s - 1, +1, margin)
                covered = float(np.mean((low <= delta) & (delta <= high)))
                if delta == 0.0:
                    out["false_decisions"] = float(np.mean((p < ALPHA / 2) | (against < ALPHA / 2)))
                    out["null_coverage"] = covered
                    out["no_effect"] = float(np.mean(equiv < ALPHA / 2))
                    naive_se = x.std(-1, ddof=0) / math.sqrt(s)
                    out["naive_false_decisions"] = float(np.mean(np.abs(mean) > stats.norm.ppf(1 - ALPHA / 2) * naive_se))
                else:
                    out[f"coverage@{delta:g}"] = covered
                    out[f"power@{delta:g}"] = float(np.mean(p < ALPHA / 2))
            rows.append(out)
    return rows


CENSORED_SCENARIOS = {  # name: (median frames of system a, of system b, the true effect's side for b - a)
    "null, some censored": (30.0, 30.0, 0),
    "b longer, b censored": (30.0, 150.0, +1),
    "a longer, a censored": (150.0, 30.0, -1),
    "both beyond the horizon": (300.0, 150.0, -1),
}


def simulate_durations(rng, trials: int, median_a: float, median_b: float, seeds: int, layers: int = 2,
                       conditions: int = 60, seed_sd: float = 0.3, sd: float = 0.6,
                       horizon=(20, 120)) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan-Meier medians ``[trials, 2, seeds, layers]`` and their "at least" flags, of two
    systems' durations as ``memory_robustness`` measures them: per condition (an utterance, a
    noise, an insertion point; the same conditions for both systems of one seed) the frames until
    the impact fades are lognormal around the system's median (a per-(system, seed) offset of sd
    ``seed_sd``, a per-condition spread of sd ``sd``, both log), censored at the condition's
    horizon (the utterance's frames after the noise, uniform in ``horizon``). Deeper layers
    remember longer (x 1.5 a layer), so one layer may be censored and another not."""
    meds = np.empty((trials, 2, seeds, layers))
    flags = np.zeros((trials, 2, seeds, layers), dtype=bool)
    for t in range(trials):
        for s in range(seeds):
            h = rng.uniform(*horizon, size=conditions)
            for k, m in enumerate((median_a, median_b)):
                offset = rng.normal(0.0, seed_sd)
                for layer in range(layers):
                    d = m * 1.5 ** layer * np.exp(offset + rng.normal(0.0, sd, conditions))
                    meds[t, k, s, layer], flags[t, k, s, layer] = km_median(np.minimum(d, h), d > h)
    return meds, flags


def calibrate_censored(trials: int = 1000, seed: int = 2026, n_seeds=(3, 5), margin: float = 5.0,
                       direction: int = -1) -> list[dict]:
    """The per-checkpoint duration claims (``gru_impact_shorter``: b - a, the mean over layers,
    per seed, Student's t over seeds, expected below 0) under ``CENSORED_SCENARIOS``: per
    scenario and seed count, the rate of false decisions (a verdict the planted truth denies:
    *holds* or *contradicted* under the null, *no effect* or the wrong side otherwise) and of
    right ones, with the medians' bounds heeded (``bounded_p``) and, as ``naive_*``, with the
    censored medians taken as exact."""
    rng = np.random.default_rng(seed)
    rows = []
    for name, (ma, mb, side) in CENSORED_SCENARIOS.items():
        for s in n_seeds:
            meds, flags = simulate_durations(rng, trials, ma, mb, s)
            x = (meds[:, 1] - meds[:, 0]).mean(-1)  # [trials, seeds]
            # b at least: b - a may be larger (lower bound); a at least: smaller
            lower, upper = flags[:, 1].any((-1, -2)), flags[:, 0].any((-1, -2))
            se = x.std(-1, ddof=1) / math.sqrt(s)
            _, _, p, against, equiv = t_moments(x.mean(-1), se, s - 1, direction, margin)
            out = {"scenario": name, "seeds": s, "trials": trials, "censored_share": float(flags.mean())}
            for tag, heed in (("", True), ("naive_", False)):
                ps = [bounded_p(p[i], against[i], equiv[i], direction, heed and lower[i], heed and upper[i])
                      for i in range(trials)]
                v = np.array([verdict(SeedTest(float(x[i].mean()), 0, 0, *ps[i], s, s - 1), *ps[i])
                              for i in range(trials)])
                truth = {0: "no effect", direction: "holds", -direction: "contradicted"}[side]
                wrong = {"holds", "contradicted"} if side == 0 else {"no effect", "holds", "contradicted"} - {truth}
                out[f"{tag}false"] = float(np.isin(v, list(wrong)).mean())
                out[f"{tag}right"] = float((v == truth).mean()) if side else float("nan")
            rows.append(out)
    return rows


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":  # python -m analyses.stats [trials]: the calibration tables the README quotes
    import os
    import sys
    import time

    t0 = time.perf_counter()
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    table = calibrate(trials=n)
    print(f"calibration of the two-stage error-rate test, {n} trials per row, 300 utterances ({os.cpu_count()} cores, "
          f"{_cpu()}; {time.perf_counter() - t0:.1f} s)")
    for r in table:
        print(f"seed sd {100 * r['seed_sd']:.1f} PER points, {r['seeds']} seeds: false decisions "
              f"{100 * r['false_decisions']:.2f} % (normal interval on (S-1)/S of the seed variance {100 * r['naive_false_decisions']:.1f} %), "
              f"null coverage {100 * r['null_coverage']:.2f} %; 1-point effect: coverage {100 * r['coverage@0.01']:.2f} %, "
              f"power {100 * r['power@0.01']:.1f} %; 2-point effect: coverage {100 * r['coverage@0.02']:.2f} %, "
              f"power {100 * r['power@0.02']:.1f} %; null called 'no effect' (margin 0.2 points) "
              f"{100 * r['no_effect']:.2f} %")

    t0 = time.perf_counter()
    rows = calibrate_censored(trials=max(n // 2, 100))
    print(f"calibration of the censored-duration claims (b - a, expected < 0, margin 5 frames), {rows[0]['trials']} "
          f"trials per row, 60 conditions x 2 layers per checkpoint ({_cpu()}; {time.perf_counter() - t0:.1f} s)")
    for r in rows:
        right = "" if math.isnan(r["right"]) else (f", right {100 * r['right']:.1f} % (taken as exact "
                                                   f"{100 * r['naive_right']:.1f} %)")
        print(f"{r['scenario']}, {r['seeds']} seeds ({100 * r['censored_share']:.0f} % of medians censored): false "
              f"decisions {100 * r['false']:.2f} % (taken as exact {100 * r['naive_false']:.2f} %){right}")
