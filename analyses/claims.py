"""The paper's findings, checked against our stored numbers: each claim quotes the sentence of the
paper it tests (or says it is ours, and why), and prints its effect (with its unit), the 95 %
interval, the seeds and utterances it rests on, the test, its p-values and a verdict:

- *no effect*: the effect lies within +-``margin``, the claim's smallest effect of interest (TOST,
  its two one-sided tests Holm-adjusted, at 0.025: the 95 % interval inside +-margin); it comes
  first, as an effect shown to be smaller than any of interest is none, whichever its sign;
- *holds*: the Holm-adjusted one-sided p-value in the expected direction (the paper's, or ours) is
  below 0.025 (with one claim: the 95 % interval excludes zero on that side);
- *contradicted*: the same the other way (the interval excludes zero against the paper);
- *undecided*: none of these (the interval includes zero and reaches past the margin, or there
  are fewer than ``MIN_SEEDS`` seeds, or the seeds agree exactly: a zero-width interval decides
  nothing); the claim says why;
- *not measured*: nothing to decide on.

    gatelens claims --study table1 [--study table2 --study table3] [--format json]

Family. The findings measured in one call are one family: their one-sided p-values (paper's
direction, and against it, and the equivalence tests) are each Holm-adjusted over it, so the chance
of any false *holds* over the family stays at 2.5 % (and of any false *contradicted*), whatever the
number of claims. Sanity checks (a GRU cell bounded by construction) are reported apart and are no
part of the family: they test the code, not the paper.

Numbers come from the store (``layer_stats`` of each checkpoint's capture; ``analysis_summary``
rows of the current version of the temporal-trace, memory-robustness, unit-memory and unit-ablation
analyses) and from the studies' runs (test PER, and each test utterance's errors,
``utterances.parquet``, the store's ``utterance_errors``). Which checkpoints: the final checkpoints
of the studies' finished runs; one without a seed stamp is left out of every claim over seeds
(its replicate cannot be told apart) and counted in the census.

Tests (``analyses.stats``). Every claim over seeds is Student's t over per-seed values, with the
same minimum of ``MIN_SEEDS`` seeds (NaN values are not seeds). A claim about error rates is a
linear contrast of test PERs (a difference, a mean of differences, a slope over depth), computed
per seed on the utterances every run of its study scored, then Student's t over seeds, pooled over
studies (``seed_contrast``; its calibration is ``analyses.stats.calibrate``). A claim about a
per-checkpoint number (a share, a slope over layer numbers, a difference between matched LSTM and
GRU checkpoints) is computed per seed (averaged over the grid points it covers). "LSTM" is the
peephole LSTM (arch ``lstm``), "GRU" the GRU of Eq. 1 (``gru``); pairs match LSTM with GRU of the
same depth, width, residual setting and seed; error comparisons stay within one study and one
grid point apart from what they compare (width, precision, lazy layers).

Sensitivity: each claim with a threshold of its own is decided again at the neighbouring thresholds
(the band of Fig. 3, the impact fraction), in the same family; ``sensitivity`` holds those verdicts.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl
from scipy import stats as sps

from analyses import memory_robustness, temporal_trace, unit_ablation, unit_memory
from analyses.common import plt, read_summary, save, slope
from analyses.stats import (ALPHA, CONFIDENCE, MIN_SEEDS, SeedTest, bounded_p, holm, per_seed_contrast,
                            pooled_seed_test, seed_test, verdict)
from cluster.runs import UTTERANCES_FILE, final_checkpoint_ids, iter_runs, studies_results
from cluster.summaries import SUMMARY_VERSION

HOLDS, CONTRADICTED, NO_EFFECT, UNDECIDED, NOT_MEASURED = "holds", "contradicted", "no effect", "undecided", "not measured"
FINDING, SANITY = "finding", "sanity check"
_CK = {"checkpoint_id": pl.String, "arch": pl.String, "depth": pl.Int64, "hidden": pl.Int64, "residual": pl.Boolean,
       "seed": pl.Int64, "layer": pl.Int64}
# Fig. 3's bands and their neighbours (the sensitivity): half-widths of the LSTM band (-a, a) and the
# GRU band outside (-b, b). The neighbours lie on the capture histograms' bin edges (1/8 and 1/64),
# so their shares are exact counts; 0.875 is the GRU bin edge nearest 0.9.
LSTM_BANDS, GRU_BANDS = (2.0, 1.0, 3.0), (0.7, 0.5, 0.875)


def _band_key(prefix: str, a: float) -> str:
    return f"{prefix}_{a:g}".replace(".", "_")


CELL_COLUMNS = ([_band_key("share_inside", a) for a in LSTM_BANDS] + [_band_key("normal_inside", a) for a in LSTM_BANDS]
                + [_band_key("share_outside", b) for b in GRU_BANDS] + ["min_c", "max_c"])
RESULTS = {"study": pl.String, "run": pl.String, "cell": pl.String, "layers": pl.Int64, "hidden": pl.Int64,
           "residual": pl.Boolean, "lazy_layers": pl.String, "precision": pl.String, "seed": pl.Int64,
           "corpus": pl.String, "test_per": pl.Float64, "test_frame_acc": pl.Float64}
UTTERANCES = {"study": pl.String, "run": pl.String, "utt_id": pl.String, "ref_len": pl.Int64, "errors": pl.Int64}
# the noise-impact fraction of memory_robustness and its neighbours (summary metrics impact_frames@f)
IMPACT_FRACTIONS = memory_robustness.FRACTIONS


@dataclass
class Evidence:
    """The numbers claims are decided on. One row per (checkpoint, layer) in the first four."""

    cells: pl.DataFrame  # + CELL_COLUMNS (Fig. 3's shares, their neighbours, the normal reference, min / max c)
    smoothness: pl.DataFrame  # + smoothness
    # + impact_frames (the default fraction), impact_frames@<f> for IMPACT_FRACTIONS, and their
    # impact_at_least (1: the Kaplan-Meier median is only a lower bound)
    impact: pl.DataFrame
    # + implied_tau_median, measured_frames_median (per-unit memory, medians over units), measured_at_least
    memory: pl.DataFrame
    ablation: pl.DataFrame  # + specificity_excess, acc_drop_excess (layer 0: means over layers and phones)
    results: pl.DataFrame  # RESULTS: one row per finished run
    utterances: pl.DataFrame  # UTTERANCES (test split)
    unstamped: int = 0  # checkpoints without a seed stamp (left out of the claims over seeds)

    @classmethod
    def empty(cls) -> "Evidence":
        f = pl.Float64
        return cls(pl.DataFrame(schema=_CK | {c: f for c in CELL_COLUMNS}),
                   pl.DataFrame(schema=_CK | {"smoothness": f}),
                   pl.DataFrame(schema=_CK | {"impact_frames": f, "impact_at_least": f}
                                | {_impact(x): f for x in IMPACT_FRACTIONS}
                                | {_impact(x, "impact_at_least"): f for x in IMPACT_FRACTIONS}),
                   pl.DataFrame(schema=_CK | {"implied_tau_median": f, "measured_frames_median": f,
                                              "measured_at_least": f}),
                   pl.DataFrame(schema=_CK | {"specificity_excess": f, "acc_drop_excess": f}),
                   pl.DataFrame(schema=RESULTS),
                   pl.DataFrame(schema=UTTERANCES))


def _impact(fraction: float, metric: str = "impact_frames") -> str:
    return f"{metric}@{fraction:g}"


@dataclass
class Claim:
    key: str
    statement: str
    effect_name: str  # what ``effect`` is, e.g. "PER(lazy) - PER(lstm)"
    unit: str
    direction: int  # the sign of the effect the claim expects (the paper's, or ours): +1 or -1
    margin: float  # the smallest effect of interest, in ``unit``: inside +-margin is "no effect"
    margin_reason: str
    paper_quote: str | None = None  # the paper's sentence the claim tests ...
    ours: str | None = None  # ... or why it is ours
    kind: str = FINDING
    verdict: str = NOT_MEASURED
    effect: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    confidence: float = CONFIDENCE
    n_seeds: int = 0
    n_utterances: int = 0
    test: str = ""
    p_value: float | None = None  # one-sided, in the expected direction
    p_holm: float | None = None  # Holm-adjusted over the family of the call
    p_against: float | None = None
    p_holm_against: float | None = None
    p_equiv: float | None = None  # TOST within +-margin
    p_holm_equiv: float | None = None
    note: str = ""  # why there is no interval, what was left out
    numbers: list[str] = field(default_factory=list)  # one line per checkpoint, pair or system measured
    sensitivity: dict[str, dict] = field(default_factory=dict)  # neighbouring threshold -> its verdict and numbers
    flips: bool = False  # whether a neighbouring threshold changes the verdict
    # the tests at the neighbouring thresholds, decided with the family (not in the JSON)
    alternatives: dict[str, SeedTest] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("alternatives")
        return _finite(d)

    def apply(self, t: SeedTest, test: str) -> "Claim":
        """Take the effect, interval and p-values of a test (the verdict comes with the family)."""
        self.effect, self.n_seeds = _finite(t.effect), t.n_seeds
        self.ci_low, self.ci_high = _finite(t.ci_low), _finite(t.ci_high)
        self.p_value, self.p_against, self.p_equiv = _finite(t.p_value), _finite(t.p_against), _finite(t.p_equiv)
        self.test = test
        if t.note:
            self.note = "; ".join(x for x in (self.note, t.note) if x)
        return self


def _finite(v):
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


def _p(v) -> float:
    return v if v is not None and math.isfinite(v) else math.nan


def decide_family(claims: list[Claim], alpha: float = ALPHA) -> list[Claim]:
    """Holm over the findings' p-values, the verdicts at the adjusted level, and each claim's
    neighbouring thresholds decided in the same family (its own p-values swapped for theirs)."""
    findings = [c for c in claims if c.kind == FINDING]
    base = np.array([[_p(c.p_value), _p(c.p_against), _p(c.p_equiv)] for c in findings]).reshape(-1, 3)

    def adjusted(table):
        return np.stack([holm(table[:, j]) for j in range(3)], axis=1) if table.size else table

    adj = adjusted(base)
    for i, c in enumerate(findings):
        c.p_holm, c.p_holm_against, c.p_holm_equiv = (_finite(float(x)) for x in adj[i])
        main = SeedTest(_p(c.effect), _p(c.ci_low), _p(c.ci_high), _p(c.p_value), _p(c.p_against), _p(c.p_equiv),
                        c.n_seeds, 0.0)
        c.verdict = verdict(main, *adj[i], alpha)
        c.sensitivity = {}
        for label, t in c.alternatives.items():
            swapped = base.copy()
            swapped[i] = (t.p_value, t.p_against, t.p_equiv)
            a = adjusted(swapped)[i]
            c.sensitivity[label] = _finite({"verdict": verdict(t, *a, alpha), "effect": t.effect, "ci_low": t.ci_low,
                                            "ci_high": t.ci_high, "p_value": t.p_value, "p_holm": float(a[0]),
                                            "n_seeds": t.n_seeds})
        c.flips = any(s["verdict"] != c.verdict for s in c.sensitivity.values())
    return claims


def finish(c: Claim) -> Claim:
    """A claim decided on its own (a family of one); ``evaluate`` decides them together."""
    return decide_family([c])[0] if c.kind == FINDING else c


# ---------------------------------------------------------------------------------------------
# Gathering the numbers


def _hist_share_inside(counts, lo: float, hi: float, a: float) -> float | None:
    """Share of values in [-a, a) from a fixed-bin histogram whose bin edges include +-a."""
    if counts is None:
        return None
    c = np.asarray(counts, dtype=np.float64)
    edges = np.linspace(lo, hi, len(c) + 1)
    sel = (edges[:-1] >= -a - 1e-12) & (edges[1:] <= a + 1e-12)
    return float(c[sel].sum())


def _cells(cks: pl.DataFrame, store, marks: str, ids: list[str]) -> pl.DataFrame:
    """Fig. 3's shares per (checkpoint, layer), their neighbours from the layer histogram, and the
    share a normal distribution with the layer's mean and variance puts inside (-a, a)."""
    raw = store.query(f"SELECT checkpoint_id, layer, count, mean, variance, n_inside_2, n_outside_0_7, min AS min_c, "
                      f"max AS max_c, lo, hi, underflow, overflow, counts FROM layer_stats WHERE quantity = 'c' AND "
                      f"analysis_version = ? AND checkpoint_id IN ({marks})", [SUMMARY_VERSION, *ids])
    rows = []
    for r in raw.iter_rows(named=True):
        n = r["count"] or 0
        if n <= 0:
            continue
        row = {"checkpoint_id": r["checkpoint_id"], "layer": int(r["layer"]), "min_c": r["min_c"], "max_c": r["max_c"],
               "share_inside_2": r["n_inside_2"] / n, "share_outside_0_7": r["n_outside_0_7"] / n}
        sd = math.sqrt(max(r["variance"] or 0.0, 0.0))
        for a in LSTM_BANDS:
            if a != 2.0:
                inside = _hist_share_inside(r["counts"], r["lo"], r["hi"], a)
                row[_band_key("share_inside", a)] = None if inside is None else inside / n
            row[_band_key("normal_inside", a)] = (float(sps.norm.cdf(a, r["mean"], sd) - sps.norm.cdf(-a, r["mean"], sd))
                                                   if sd > 0 else float(abs(r["mean"]) < a))
        for b in GRU_BANDS:
            if b != 0.7:
                inside = _hist_share_inside(r["counts"], r["lo"], r["hi"], b)
                row[_band_key("share_outside", b)] = None if inside is None else 1 - inside / n
        rows.append(row)
    schema = {"checkpoint_id": pl.String, "layer": pl.Int64} | {c: pl.Float64 for c in CELL_COLUMNS}
    return cks.join(pl.DataFrame(rows, schema=schema), on="checkpoint_id")


def gather(store, checkpoint_ids: list[str], results: pl.DataFrame | None = None,
           utterances: pl.DataFrame | None = None) -> Evidence:
    """Evidence for the given stored checkpoints (and the runs' results and utterance errors)."""
    ev = Evidence.empty()
    if results is not None and results.height:
        ev.results = results.select(pl.col(c).cast(t) if c in results.columns else pl.lit(None, t).alias(c)
                                    for c, t in RESULTS.items())
    if utterances is not None and utterances.height:
        ev.utterances = utterances.select(pl.col(c).cast(t) for c, t in UTTERANCES.items())
    if not checkpoint_ids or not store.path.is_file():
        return ev
    ids = list(checkpoint_ids)
    marks = ", ".join("?" for _ in ids)
    cks = store.query(f"SELECT checkpoint_id, arch, layers AS depth, hidden, residual, seed FROM checkpoints "
                      f"WHERE checkpoint_id IN ({marks})", ids)
    # a checkpoint captured without its run's stamp keeps a null seed: the claims over seeds skip it
    cks = cks.with_columns(pl.col("depth").cast(pl.Int64), pl.col("hidden").cast(pl.Int64),
                           pl.col("residual").cast(pl.Boolean), pl.col("seed").cast(pl.Int64))
    ev.unstamped = int(cks["seed"].is_null().sum())
    ev.cells = _cells(cks, store, marks, ids).select(ev.cells.columns)

    def per_layer(analysis: str, version: int, metrics: list[str], template: pl.DataFrame) -> pl.DataFrame:
        s = read_summary(store, analysis, ids, version=version)
        s = s.filter((pl.col("layer") > 0) & (pl.col("unit") == -1) & (pl.col("phone_id") == -1)
                     & pl.col("metric").is_in(metrics))
        s = s.filter(pl.col("label") == "")  # the per-layer number over utterances and conditions
        if s.height == 0:
            return template
        wide = s.pivot(on="metric", index=["checkpoint_id", "layer"], values="value", aggregate_function="mean")
        wide = wide.with_columns([pl.lit(None, pl.Float64).alias(m) for m in metrics if m not in wide.columns])
        return cks.join(wide.with_columns(pl.col("layer").cast(pl.Int64)), on="checkpoint_id").select(template.columns)

    ev.smoothness = per_layer("temporal_trace", temporal_trace.VERSION, ["smoothness"], ev.smoothness)
    ev.impact = per_layer("memory_robustness", memory_robustness.VERSION,
                          [c for c in ev.impact.columns if c not in _CK], ev.impact)
    ev.memory = per_layer("unit_memory", unit_memory.VERSION, [c for c in ev.memory.columns if c not in _CK],
                          ev.memory)
    abl = read_summary(store, "unit_ablation", ids, version=unit_ablation.VERSION).filter(
        (pl.col("layer") == 0) & (pl.col("label") == "")
        & (pl.col("metric").str.starts_with("specificity_excess") | (pl.col("metric") == "acc_drop_excess")))
    if abl.height:
        wide = abl.pivot(on="metric", index="checkpoint_id", values="value", aggregate_function="mean")
        wide = wide.with_columns([pl.lit(None, pl.Float64).alias(m) for m in ("specificity_excess", "acc_drop_excess")
                                  if m not in wide.columns])
        at_k = sorted(c for c in wide.columns if c.startswith("specificity_excess@k"))  # the sensitivity to k
        ev.ablation = cks.join(wide.with_columns(pl.lit(0, pl.Int64).alias("layer")), on="checkpoint_id").select(
            ev.ablation.columns + at_k)
    return ev


def study_utterances(storage, studies: list[str]) -> pl.DataFrame:
    """Every finished run's test-utterance errors (study, run, utt_id, ref_len, errors)."""
    parts = []
    for study in studies:
        for run in iter_runs(storage, study):
            u = run.utterance_errors()
            if u is not None and u.height:
                parts.append(u.filter(pl.col("split") == "test").select(
                    pl.lit(study).alias("study"), pl.lit(run.name).alias("run"), "utt_id", "ref_len",
                    (pl.col("sub") + pl.col("ins") + pl.col("del")).alias("errors")))
    return pl.concat(parts) if parts else pl.DataFrame(schema=UTTERANCES)


def gather_studies(store, storage, studies: list[str]) -> Evidence:
    """Evidence for the studies' final checkpoints, their trial results and utterance errors."""
    return gather(store, final_checkpoint_ids(storage, studies), studies_results(storage, studies),
                  study_utterances(storage, studies))


# ---------------------------------------------------------------------------------------------
# The two tests: per-checkpoint numbers over seeds, error-rate contrasts per seed then over seeds


def _seed_values(per_seed: dict[int, list[float]]) -> list[float]:
    """Each seed's mean over its finite items (a seed with none is no seed)."""
    out = []
    for v in per_seed.values():
        v = [x for x in v if x is not None and math.isfinite(x)]
        if v:
            out.append(float(np.mean(v)))
    return out


def _over_seeds(c: Claim, per_seed: dict[int, list[float]], alternatives: dict[str, dict[int, list[float]]] | None = None,
                unstamped: int = 0, bounds: dict[str, dict[int, list[bool]]] | None = None) -> Claim:
    """Effect = the mean over seeds of each seed's mean over its items; Student's t over seeds.
    ``bounds`` (per test, "v" or an alternative's label: per seed, whether its true value may lie
    above / below the one measured): a verdict such a seed could undo is not reached
    (``analyses.stats.bounded_p``: its p-value is 1)."""
    values = _seed_values(per_seed)
    if unstamped:
        c.note = f"{unstamped} checkpoint(s) without a seed stamp left out"
    if not values:
        c.n_seeds = 0
        return finish(c)
    t = _bounded(seed_test(values, c.direction, c.margin), c.direction, per_seed, (bounds or {}).get("v"))
    c.apply(t, f"Student's t over {len(values)} seeds (each seed's mean over the grid points measured)")
    for label, alt in (alternatives or {}).items():
        c.alternatives[label] = _bounded(seed_test(_seed_values(alt), c.direction, c.margin), c.direction, alt,
                                         (bounds or {}).get(label))
    return finish(c)


def _bounded(t: SeedTest, direction: int, per_seed: dict[int, list[float]], bounds: dict[int, list[bool]] | None):
    """``t`` with the p-values ``bounded_p`` leaves where some seeds' values are only bounds."""
    counted = [s for s, v in per_seed.items() if any(x is not None and math.isfinite(x) for x in v)]
    up = sorted(s for s in counted if bounds and bounds.get(s, [False, False])[0])
    down = sorted(s for s in counted if bounds and bounds.get(s, [False, False])[1])
    if not (up or down):
        return t
    p, against, equiv = bounded_p(t.p_value, t.p_against, t.p_equiv, direction, bool(up), bool(down))
    said = "; ".join(f"seed(s) {', '.join(map(str, seeds))} may lie {where} the value measured" for seeds, where in
                     ((up, "above"), (down, "below")) if seeds)
    note = (f"censored medians ('at least'): {said}; a verdict they could undo is not reached (its p-value is 1)")
    return replace(t, p_value=p, p_against=against, p_equiv=equiv, note="; ".join(x for x in (t.note, note) if x))


@dataclass
class _Group:
    """One study's systems of an error-rate contrast: (label, result rows, weight) each."""

    label: str
    systems: list[tuple[str, pl.DataFrame, float]]


def _group_contrast(c: Claim, ev: Evidence, g: _Group, scale: float) -> tuple[list[float], int] | str:
    """Per seed common to the group's systems, the contrast on the utterances all its runs scored
    (in ``scale`` units); or why there is none."""
    seeds = set.intersection(*(set(rows["seed"].drop_nulls().to_list()) for _, rows, _ in g.systems))
    if not seeds:
        return f"{g.label}: no seed common to the systems compared"
    seeds = sorted(seeds)
    runs = []
    for label, rows, _ in g.systems:
        system = []
        for s in seeds:
            r = rows.filter(pl.col("seed") == s)
            if r.height > 1:
                return (f"{g.label}: runs {', '.join(r['run'].to_list())} are the same grid point ({label}) and seed "
                        f"{s}: no single replicate to compare")
            system.append(r.row(0, named=True))
        runs.append(system)
    corpora = {r["corpus"] for system in runs for r in system}
    if len(corpora) > 1:
        return f"{g.label}: systems scored on different corpora ({', '.join(sorted(map(str, corpora)))}): no paired test"
    utts = ev.utterances
    per_run = {(r["study"], r["run"]): utts.filter((pl.col("study") == r["study"]) & (pl.col("run") == r["run"]))
               for system in runs for r in system}
    missing = [f"{study}/{run}" for (study, run), u in per_run.items() if u.height == 0]
    if missing:
        return (f"run {missing[0]} has no per-utterance errors ({UTTERANCES_FILE}; trained before they were "
                f"written): retrain it to decide")
    common = set.intersection(*(set(u["utt_id"].to_list()) for u in per_run.values()))
    if not common:
        return f"{g.label}: no test utterance scored by every run"
    errors = np.zeros((len(g.systems), len(seeds), len(common)))
    ref = None
    for k, system in enumerate(runs):
        for s, r in enumerate(system):
            u = per_run[(r["study"], r["run"])].filter(pl.col("utt_id").is_in(common)).sort("utt_id")
            errors[k, s] = u["errors"].to_numpy()
            ref = u["ref_len"].to_numpy() if ref is None else ref
    values = scale * per_seed_contrast(errors, ref, [w for _, _, w in g.systems])
    c.numbers.append(f"{g.label}: per-seed contrast " + ", ".join(f"s{s}: {v:+.3g}" for s, v in zip(seeds, values))
                     + f" on {len(common)} shared utterances")
    return [float(v) for v in values], len(common)


def _contrast(c: Claim, ev: Evidence, groups: list[_Group], scale: float = 100.0) -> Claim:
    """The contrast over ``groups`` (one per study and grid point): per group each seed's value,
    then Student's t over seeds pooled over groups (``pooled_seed_test``)."""
    values, notes, n_utts = [], [], []
    for g in groups:
        got = _group_contrast(c, ev, g, scale)
        if isinstance(got, str):
            notes.append(got)
        else:
            values.append(got[0])
            n_utts.append(got[1])
    if notes:
        c.note = "; ".join(x for x in [c.note, *notes] if x)
    if not values:
        return finish(c)
    t = pooled_seed_test(values, c.direction, c.margin)
    kept = [v for v in values if len(v) >= MIN_SEEDS]
    c.n_utterances = min(n for v, n in zip(values, n_utts) if len(v) >= MIN_SEEDS) if kept else min(n_utts)
    c.apply(t, f"per seed, the contrast of test PERs on the utterances every run of its study scored; then "
               f"Student's t over {t.n_seeds} seeds of {len(kept)} group(s) (pooled variance, {t.df:g} df)")
    return finish(c)


# ---------------------------------------------------------------------------------------------
# The claims: what each tests, in the paper's words, and its smallest effect of interest

Q_FIG12 = ("It can be observed that most of the cell values in LSTM concentrate on zero values, and the concentration "
           "decreases in higher-level layers.")
Q_GRU_PM1 = "In contrast, most of the cells in GRU concentrate on -1 or +1, and this pattern is more clear for the higher-level layers."
Q_BOUND = "For GRU, the cell values are strictly constrained within (-1, +1). This can be also derived from Eq. (1)"
Q_SMOOTH = "An interesting observation is that the traces are much more smooth with LSTM than with GRU."
Q_GRU_SMOOTH_HIGHER = "for GRU, the traces become more smooth at higher-level layers"
Q_IMPACT = ("GRU is more robust than LSTM in noisy conditions. With LSTM, the impact of the noise lasts almost till the "
            "end on some cells [...] With GRU, the impact lasts just a few frames.")
Q_LAZY = "From the results, it can be seen that the lazy update does improve performance of LSTM."
Q_RESIDUAL = "adding shortcut connections indeed introduces consistent performance gains with both LSTM and GRU."
Q_DEPTH = ("Table 1: Performance of LSTM and GRU systems (WER % at 1, 2, 4, 6 recurrent layers: LSTM 10.96, 9.97, "
           "9.67, 9.47; GRU 10.76, 9.47, 9.32, 9.32)")

# Smallest effects of interest, with their reasons.
SHARE_MARGIN = (0.02, "2 points of range share: below it two of Fig. 1-3's histograms look alike, and the paper reads "
                      "its patterns off those histograms")
SHARE_SLOPE_MARGIN = (0.02, "2 points of range share per layer: over the paper's 4 layers, 6 points, the least change "
                            "of Fig. 3's curves one would call a trend")
SMOOTH_MARGIN = (0.05, "5 % of the mean distance between a trace's points: below it two t-SNE traces of Fig. 7 are "
                       "not told apart")
SMOOTH_SLOPE_MARGIN = (0.02, "2 % of the mean distance per layer: 6 % over 4 layers, the least trend one would see")
FRAMES_MARGIN = (5.0, "5 frames (50 ms): shorter than most phones (the paper: phones last up to 50 frames), so a "
                      "smaller difference of memory does not change what the model hears")
PER_MARGIN = (0.2, "0.2 PER points: below the smallest gain of Table 2 (0.49 WER points) and about the change of a "
                   "few hundred phones on our test set")
RESIDUAL_MARGIN = (0.1, "0.1 PER points: about the smallest gain of Table 3 (0.09-0.22 WER points)")
DEPTH_MARGIN = (0.05, "0.05 PER points per layer: a quarter of Table 1's mean gain per added layer (0.2-0.3)")
ACC_MARGIN = (0.02, "2 points of frame accuracy on the phone: less than the accuracy of one frame in fifty")


def _fmt(values) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"


def _checkpoints(df: pl.DataFrame, arch: str, min_depth: int = 1, stamped: bool = True):
    """(checkpoint_id, depth, seed, rows by layer) of one architecture, layers in order."""
    sub = df.filter((pl.col("arch") == arch) & (pl.col("depth") >= min_depth))
    if stamped:
        sub = sub.filter(pl.col("seed").is_not_null())
    for (cid,), g in sub.sort("checkpoint_id", "layer").group_by("checkpoint_id", maintain_order=True):
        yield cid, int(g["depth"][0]), g["seed"][0], g


def _unstamped(df: pl.DataFrame, arch: str | tuple = ()) -> int:
    archs = (arch,) if isinstance(arch, str) else arch
    sub = df.filter(pl.col("seed").is_null())
    if archs:
        sub = sub.filter(pl.col("arch").is_in(archs))
    return sub["checkpoint_id"].n_unique()


def gru_bounded(ev: Evidence) -> Claim:
    c = Claim("gru_bounded", "GRU cells are bounded in (-1, 1)", "max |c| - 1 over every GRU checkpoint", "|c|", -1,
              0.0, "a bound: any excess is a fault", paper_quote=Q_BOUND, kind=SANITY)
    worst, seeds = None, set()
    for cid, _, seed, g in _checkpoints(ev.cells, "gru", stamped=False):
        m = float(max(g["min_c"].abs().max(), g["max_c"].abs().max()))
        worst = m if worst is None else max(worst, m)
        seeds.add(seed)
        c.numbers.append(f"{cid} (seed {seed}): max |c| = {m:.4f}")
    if worst is None:
        return c
    c.effect, c.n_seeds = worst - 1.0, len(seeds - {None})
    c.test = (f"census of every captured value of {len(c.numbers)} GRU checkpoints (true by construction, Eq. 1: a "
              f"check of the capture and the cell code, not a finding; float32 tanh saturates to exactly 1)")
    c.verdict = HOLDS if c.effect <= 0 else CONTRADICTED
    return c


def lstm_near_zero(ev: Evidence) -> Claim:
    c = Claim("lstm_near_zero", "LSTM cell values concentrate near 0",
              "share of c in (-2, 2) minus the share a normal distribution with the layer's mean and variance puts "
              "there, smallest over a checkpoint's layers", "share", +1, *SHARE_MARGIN, paper_quote=Q_FIG12)
    per_seed: dict[int, list[float]] = {}
    alts: dict[str, dict[int, list[float]]] = {f"(-{a:g}, {a:g})": {} for a in LSTM_BANDS[1:]}
    for cid, _, seed, g in _checkpoints(ev.cells, "lstm"):
        excess = (g["share_inside_2"] - g["normal_inside_2"]).to_list()
        per_seed.setdefault(seed, []).append(min(excess))
        for a in LSTM_BANDS[1:]:
            e = (g[_band_key("share_inside", a)] - g[_band_key("normal_inside", a)]).drop_nulls().to_list()
            alts[f"(-{a:g}, {a:g})"].setdefault(seed, []).append(min(e) if e else math.nan)
        c.numbers.append(f"{cid} (seed {seed}): share in (-2, 2) by layer {_fmt(g['share_inside_2'])}, normal "
                         f"reference {_fmt(g['normal_inside_2'])}")
    return _over_seeds(c, per_seed, alts, _unstamped(ev.cells, "lstm"))


def _trend(c: Claim, df: pl.DataFrame, arch: str, column: str, alternatives: dict[str, str] | None = None) -> Claim:
    """Per checkpoint of 2+ layers, the least-squares slope of ``column`` over its layer numbers."""
    per_seed: dict[int, list[float]] = {}
    alts: dict[str, dict[int, list[float]]] = {k: {} for k in (alternatives or {})}
    for cid, _, seed, g in _checkpoints(df, arch, min_depth=2):
        g = g.filter(pl.col(column).is_not_null() & pl.col(column).is_not_nan())
        values, layers = g[column].to_list(), g["layer"].to_list()
        s = slope(values, layers)
        if np.isnan(s):
            continue
        per_seed.setdefault(seed, []).append(s)
        for label, col in (alternatives or {}).items():
            alts[label].setdefault(seed, []).append(slope(g[col].to_list(), layers))
        c.numbers.append(f"{cid} (seed {seed}): {column} at layers {layers}: {_fmt(values)}, slope {s:+.3g}")
    return _over_seeds(c, per_seed, alts, _unstamped(df, arch))


def lstm_concentration_falls(ev: Evidence) -> Claim:
    c = Claim("lstm_concentration_falls", "LSTM concentration near 0 falls with depth",
              "least-squares slope of the share of c in (-2, 2) over layer numbers (checkpoints of 2+ layers)",
              "share per layer", -1, *SHARE_SLOPE_MARGIN, paper_quote=Q_FIG12)
    return _trend(c, ev.cells, "lstm", "share_inside_2",
                  {f"(-{a:g}, {a:g})": _band_key("share_inside", a) for a in LSTM_BANDS[1:]})


def gru_pm1_rises(ev: Evidence) -> Claim:
    c = Claim("gru_pm1_rises", "GRU cells concentrate near +-1 more at higher layers",
              "least-squares slope of the share of c outside (-0.7, 0.7) over layer numbers", "share per layer", +1,
              *SHARE_SLOPE_MARGIN, paper_quote=Q_GRU_PM1)
    return _trend(c, ev.cells, "gru", "share_outside_0_7",
                  {f"outside (-{b:g}, {b:g})": _band_key("share_outside", b) for b in GRU_BANDS[1:]})


def gru_smoother_higher(ev: Evidence) -> Claim:
    c = Claim("gru_smoother_higher", "GRU traces are smoother at higher layers",
              "least-squares slope of smoothness (mean step / mean distance; lower = smoother) over layer numbers",
              "smoothness per layer", -1, *SMOOTH_SLOPE_MARGIN, paper_quote=Q_GRU_SMOOTH_HIGHER)
    return _trend(c, ev.smoothness, "gru", "smoothness")


NAMES = {"lstm": "LSTM", "gru": "GRU", "lstm_lazy": "lazy LSTM"}


def _pairs(c: Claim, df: pl.DataFrame, column: str, sign: float, fmt: str, a: str = "lstm", b: str = "gru",
           alternatives: dict[str, str] | None = None, at_least: dict[str, str] | None = None) -> Claim:
    """Per seed, the mean over matched grid points (depth, width, residual) of sign * (a - b) of
    the mean over layers. ``at_least`` maps a value column to its flag column (1: that layer's
    value is only a lower bound, a censored Kaplan-Meier median): a seed resting on one is tested
    as a bound (``_over_seeds``)."""
    at_least = at_least or {}
    cols = {"v": column} | {f"alt{i}": col for i, col in enumerate((alternatives or {}).values())}
    aggs = [pl.col(col).fill_nan(None).mean().alias(k) for k, col in cols.items()]
    aggs += [(pl.col(at_least[col]).fill_nan(None).max().fill_null(0) > 0).alias(f"{k}_lb")
             if col in at_least and at_least[col] in df.columns else pl.lit(False).alias(f"{k}_lb")
             for k, col in cols.items()]
    means = df.filter(pl.col("seed").is_not_null()).group_by("arch", "depth", "hidden", "residual", "seed").agg(aggs)
    per_seed: dict[int, list[float]] = {}
    alts: dict[str, dict[int, list[float]]] = {k: {} for k in (alternatives or {})}
    # per test ("v" or an alternative's label), per seed: [may lie above, may lie below] the value measured
    bounds: dict[str, dict[int, list[bool]]] = {k: {} for k in ("v", *alts)}

    def bound(key: str, seed: int, ga, gb, k: str) -> None:
        # a lower bound on a enters sign * (a - b) as a lower bound when sign > 0; one on b the other way
        lb_a, lb_b = bool(ga[f"{k}_lb"][0]), bool(gb[f"{k}_lb"][0])
        up, down = (lb_a, lb_b) if sign > 0 else (lb_b, lb_a)
        seen = bounds[key].setdefault(seed, [False, False])
        seen[0], seen[1] = seen[0] or up, seen[1] or down

    keys = ["depth", "hidden", "residual", "seed"]
    for (depth, hidden, res, seed), g in means.sort(keys).group_by(keys, maintain_order=True):
        ga, gb = g.filter(pl.col("arch") == a), g.filter(pl.col("arch") == b)
        if ga.height and gb.height:
            x, y = ga["v"][0], gb["v"][0]
            if x is None or y is None:
                continue
            per_seed.setdefault(seed, []).append(sign * (x - y))
            bound("v", seed, ga, gb, "v")
            for i, label in enumerate(alts):
                xa, ya = ga[f"alt{i}"][0], gb[f"alt{i}"][0]
                alts[label].setdefault(seed, []).append(math.nan if xa is None or ya is None else sign * (xa - ya))
                bound(label, seed, ga, gb, f"alt{i}")
            lb = lambda g: " (at least)" if g["v_lb"][0] else ""  # noqa: E731
            c.numbers.append(f"{depth} layers x {hidden}{' residual' if res else ''}, seed {seed}: {NAMES[a]} "
                             f"{x:{fmt}}{lb(ga)} vs {NAMES[b]} {y:{fmt}}{lb(gb)}")
    return _over_seeds(c, per_seed, alts, _unstamped(df, (a, b)), bounds if at_least else None)


def lstm_smoother_than_gru(ev: Evidence) -> Claim:
    c = Claim("lstm_smoother_than_gru", "LSTM traces are smoother than GRU traces",
              "smoothness(LSTM) - smoothness(GRU), mean over layers, grid point- and seed-matched (lower = smoother)",
              "smoothness", -1, *SMOOTH_MARGIN, paper_quote=Q_SMOOTH)
    return _pairs(c, ev.smoothness, "smoothness", 1.0, ".3f")


def gru_impact_shorter(ev: Evidence) -> Claim:
    default = memory_robustness.RobustnessParams.fraction
    c = Claim("gru_impact_shorter", "GRU noise impact is shorter than LSTM's",
              f"impact(GRU) - impact(LSTM), mean over layers, grid point- and seed-matched (frames after the noise "
              f"until the mean |c difference| falls below {default:g} x its peak; the median over utterances, noise "
              f"types and insertion points, censored ones counted as at least)", "frames", -1, *FRAMES_MARGIN,
              paper_quote=Q_IMPACT)
    alts = {f"fraction {f:g}": _impact(f) for f in IMPACT_FRACTIONS if f != default}
    return _pairs(c, ev.impact, "impact_frames", -1.0, ".1f", alternatives=alts,
                  at_least={"impact_frames": "impact_at_least"}
                  | {_impact(f): _impact(f, "impact_at_least") for f in IMPACT_FRACTIONS})


def gru_memory_shorter(ev: Evidence) -> Claim:
    c = Claim("gru_memory_shorter", "GRU units remember shorter than LSTM units",
              "median over units of the measured memory (frames to 1/e of the peak difference after noise; censored "
              "units counted as at least, Kaplan-Meier), GRU - LSTM, mean over layers, grid point- and seed-matched",
              "frames", -1, *FRAMES_MARGIN,
              ours="the paper infers 'GRU remembers less than LSTM' from traces and Fig. 8's mean over units; a "
                   "per-unit timescale measured after noise is our test of it")
    return _pairs(c, ev.memory, "measured_frames_median", -1.0, ".1f",
                  at_least={"measured_frames_median": "measured_at_least"})


def lazy_memory_shorter(ev: Evidence) -> Claim:
    c = Claim("lazy_memory_shorter", "Lazy update shortens LSTM memory",
              "median over units of the measured memory, lazy LSTM - LSTM, mean over layers, grid point- and "
              "seed-matched", "frames", -1, *FRAMES_MARGIN,
              ours="the paper says the lazy LSTM 'behaves more like a GRU: the trace is less smooth' (Sec. 5.1); "
                   "that its units remember shorter is our reading, measured per unit")
    return _pairs(c, ev.memory, "measured_frames_median", -1.0, ".1f", a="lstm", b="lstm_lazy",
                  at_least={"measured_frames_median": "measured_at_least"})


def responsible_units_needed(ev: Evidence) -> Claim:
    c = Claim("responsible_units_needed", "Units most responsible for a phone are needed for that phone",
              "specificity: the accuracy drop on the phone minus the mean drop on the other measured phones, with its "
              "k most responsible units (ranked on dev utterances) ablated, minus the same with k random units; "
              "measured on test utterances, mean over layers and phones", "accuracy", +1, *ACC_MARGIN,
              ours="the paper shows responsibility, a correlation (Sec. 4.2, Figs. 4-6); that the units are needed, "
                   "and for that phone rather than any, is ours, tested by ablation")
    per_seed: dict[int, list[float]] = {}
    necessity: dict[int, list[float]] = {}
    at_k = sorted((c for c in ev.ablation.columns if c.startswith("specificity_excess@k")), key=lambda c: int(c[20:]))
    alts: dict[str, dict[int, list[float]]] = {f"k = {c[20:]}": {} for c in at_k}
    for r in ev.ablation.filter(pl.col("seed").is_not_null()).sort("checkpoint_id").iter_rows(named=True):
        per_seed.setdefault(r["seed"], []).append(r["specificity_excess"])
        necessity.setdefault(r["seed"], []).append(r["acc_drop_excess"])
        for col in at_k:
            alts[f"k = {col[20:]}"].setdefault(r["seed"], []).append(r[col])
        c.numbers.append(f"{r['checkpoint_id']} (seed {r['seed']}): specificity excess {_g(r['specificity_excess'])}, "
                         f"necessity excess (drop on the phone, top - random) {_g(r['acc_drop_excess'])}")
    need = seed_test(_seed_values(necessity), c.direction, c.margin)
    if math.isfinite(need.effect):  # beside the claim, not decided: specificity is what "for that phone" says
        c.numbers.append(f"necessity over seeds (not decided): {need.effect:+.3f} [{_g(need.ci_low)}, {_g(need.ci_high)}]")
    return _over_seeds(c, per_seed, alts, _unstamped(ev.ablation))


def _g(v) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:+.3f}"


# --- error rates


def _systems(ev: Evidence, **where) -> pl.DataFrame:
    r = ev.results.filter(pl.col("test_per").is_not_null())
    for k, v in where.items():
        r = r.filter(pl.col(k).is_null() if v is None else pl.col(k) == v)
    return r


def _per_line(label: str, rows: pl.DataFrame) -> str:
    pers = ", ".join(f"s{s}: {100 * p:.2f}%" for s, p in zip(rows["seed"], rows["test_per"]))
    return f"{label}: PER {pers}"


def _strata(ev: Evidence, by: tuple[str, ...] = ()) -> list[dict]:
    """The (study, width, precision, ...) combinations runs exist for: comparisons stay inside one."""
    keys = ["study", "hidden", "precision", *by]
    return ev.results.select(keys).unique().sort(keys, nulls_last=True).to_dicts()


def _name(s: dict) -> str:
    return f"{s['study']} (H{s['hidden']}, {s['precision']}" + (f", lazy {s['lazy_layers']}" if s.get("lazy_layers")
                                                                else "") + ")"


def _mean_difference(c: Claim, s: dict, comparisons, treated: str) -> _Group | None:
    """One study's group: the mean over ``comparisons`` (label, treated rows, base rows) of
    PER(treated) - PER(base), those with runs on both sides."""
    pairs = []
    for label, treated_rows, base_rows in comparisons:
        if treated_rows.height and base_rows.height:
            pairs += [(f"{label} {treated}", treated_rows, 1.0), (label, base_rows, -1.0)]
            c.numbers += [_per_line(f"{_name(s)} {label}", base_rows),
                          _per_line(f"{_name(s)} {label} {treated}", treated_rows)]
    return _Group(_name(s), [(lab, r, 2 * w / len(pairs)) for lab, r, w in pairs]) if pairs else None


def lazy_lowers_error(ev: Evidence) -> Claim:
    c = Claim("lazy_lowers_error", "Lazy cell update lowers LSTM error",
              "PER(lstm_lazy) - PER(lstm), mean over the depths of a study (no residual)", "PER points", -1,
              *PER_MARGIN, paper_quote=Q_LAZY)
    groups = []
    for s in _strata(ev, ("lazy_layers",)):
        if s["lazy_layers"] is None:
            continue
        at = {k: s[k] for k in ("study", "hidden", "precision")}
        depths = sorted(set(_systems(ev, cell="lstm_lazy", residual=False, **s)["layers"].to_list()))
        groups.append(_mean_difference(c, s, [(f"lstm {n} layers", _systems(ev, cell="lstm_lazy", layers=n,
                                                                            residual=False, **s),
                                               _systems(ev, cell="lstm", layers=n, residual=False, **at))
                                              for n in depths], "lazy"))
    groups = [g for g in groups if g]
    if not groups:
        c.note = "no study holds lstm and lstm_lazy runs at the same depth (table2 does)"
    return _contrast(c, ev, groups)


def residual_lowers_error(ev: Evidence) -> Claim:
    c = Claim("residual_lowers_error", "Residual shortcuts lower error at 4 and 6 layers",
              "PER(residual) - PER(plain), mean over cells and depths 4, 6 of a study", "PER points", -1,
              *RESIDUAL_MARGIN, paper_quote=Q_RESIDUAL)
    groups = [_mean_difference(c, s, [(f"{cell} {n} layers", _systems(ev, cell=cell, layers=n, residual=True, **s),
                                        _systems(ev, cell=cell, layers=n, residual=False, **s))
                                       for cell in ("lstm", "gru") for n in (4, 6)], "residual")
              for s in _strata(ev)]
    groups = [g for g in groups if g]
    if not groups:
        c.note = "no study holds runs with and without residual shortcuts at 4 or 6 layers (table3 does)"
    return _contrast(c, ev, groups)


def deeper_lowers_error(ev: Evidence) -> Claim:
    c = Claim("deeper_lowers_error", "Deeper models have lower error",
              "least-squares slope of PER over the number of layers, mean over cells (no residual, no lazy update)",
              "PER points per layer", -1, *DEPTH_MARGIN, paper_quote=Q_DEPTH)
    groups = []
    for s in _strata(ev):
        systems = []
        cells = [cell for cell in ("lstm", "gru")
                 if len(set(_systems(ev, cell=cell, residual=False, **s)["layers"].to_list())) >= 2]
        for cell in cells:
            depths = sorted(set(_systems(ev, cell=cell, residual=False, **s)["layers"].to_list()))
            d = np.asarray(depths, dtype=np.float64)
            w = (d - d.mean()) / ((d - d.mean()) ** 2).sum()  # the least-squares slope is linear in the PERs
            for n, wn in zip(depths, w):
                rows = _systems(ev, cell=cell, layers=n, residual=False, **s)
                systems.append((f"{cell} {n}", rows, float(wn) / len(cells)))
                c.numbers.append(_per_line(f"{_name(s)} {cell} {n} layers", rows))
        if systems:
            groups.append(_Group(_name(s), systems))
    if not groups:
        c.note = "no study holds one cell at two or more depths"
    return _contrast(c, ev, groups)


CLAIMS: tuple[Callable[[Evidence], Claim], ...] = (
    gru_bounded, lstm_near_zero, lstm_concentration_falls, gru_pm1_rises, lstm_smoother_than_gru,
    gru_smoother_higher, gru_impact_shorter, gru_memory_shorter, lazy_memory_shorter, responsible_units_needed,
    lazy_lowers_error, residual_lowers_error, deeper_lowers_error)


# What each claim reads: the analyses (their figures, and the units they single out, are what the
# explorer links a claim to; "capture" is the capture's own tables, layer_stats and unit_stats) and
# the cells whose checkpoints it measures (None: every cell).
SOURCES: dict[str, tuple[tuple[str, ...], tuple[str, ...] | None]] = {
    "gru_bounded": (("capture", "cell_distributions"), ("gru",)),
    "lstm_near_zero": (("capture", "cell_distributions", "range_shares"), ("lstm",)),
    "lstm_concentration_falls": (("range_shares", "capture"), ("lstm",)),
    "gru_pm1_rises": (("range_shares", "capture"), ("gru",)),
    "gru_smoother_higher": (("temporal_trace",), ("gru",)),
    "lstm_smoother_than_gru": (("temporal_trace",), ("lstm", "gru")),
    "gru_impact_shorter": (("memory_robustness",), ("lstm", "gru")),
    "gru_memory_shorter": (("unit_memory",), ("lstm", "gru")),
    "lazy_memory_shorter": (("unit_memory",), ("lstm", "lstm_lazy")),
    "responsible_units_needed": (("unit_ablation", "responsibility"), None),
    "lazy_lowers_error": (("comparisons",), ("lstm", "lstm_lazy")),
    "residual_lowers_error": (("comparisons",), None),
    "deeper_lowers_error": (("comparisons",), None),
}


def evaluate(ev: Evidence) -> list[Claim]:
    """Every claim, the findings decided together as one family (Holm)."""
    return decide_family([f(ev) for f in CLAIMS])


def effect_text(c: Claim) -> str:
    """'-0.42 PER points [-0.71, -0.13] (95 % interval), p 0.003 (Holm 0.021)', or why there is none."""
    if c.effect is None:
        return "not measured" + (f" ({c.note})" if c.note else "")
    text = f"{c.effect:+.3g} {c.unit}"
    if c.ci_low is not None and math.isfinite(c.ci_low):
        text += f" [{c.ci_low:+.3g}, {c.ci_high:+.3g}] ({100 * c.confidence:.0f} % interval)"
    if c.p_value is not None and math.isfinite(c.p_value):
        text += f", p {c.p_value:.3g} one-sided in the expected direction (Holm {c.p_holm:.3g})"
    return text + (f"; {c.note}" if c.note else "")


def source_text(c: Claim) -> str:
    return f'paper: "{c.paper_quote}"' if c.paper_quote else f"ours: {c.ours}"


def format_claims(claims: list[Claim]) -> str:
    lines = []
    for kind, title in ((FINDING, "Findings"), (SANITY, "Sanity checks (true by construction; not findings)")):
        group = [c for c in claims if c.kind == kind]
        if not group:
            continue
        lines.append(f"== {title}")
        for c in group:
            lines.append(f"[{c.verdict}] {c.statement}" + ("  (flips at a neighbouring threshold)" if c.flips else ""))
            lines.append(f"    {source_text(c)}")
            lines.append(f"    effect: {c.effect_name} = {effect_text(c)}")
            if c.kind == FINDING:
                lines.append(f"    margin: {c.margin:g} {c.unit} ({c.margin_reason})")
            if c.test:
                lines.append(f"    test: {c.test}")
            for label, s in c.sensitivity.items():
                eff = "n/a" if s.get("effect") is None else f"{s['effect']:+.3g}"
                lines.append(f"    sensitivity {label}: [{s['verdict']}] effect {eff}")
            lines += [f"    {n}" for n in c.numbers]
    lines.append(f"(holds / contradicted: the one-sided p-value for / against the expected direction, Holm-adjusted "
                 f"over the {sum(c.kind == FINDING and c.p_value is not None and math.isfinite(c.p_value) for c in claims)}"
                 f" findings decided, is below {ALPHA / 2:g}; no effect: the {100 * CONFIDENCE:.0f} % interval lies "
                 f"inside +-margin (TOST, Holm-adjusted); undecided: none of these, or fewer than {MIN_SEEDS} seeds)")
    return "\n".join(lines)


VERDICT_COLOURS = {HOLDS: "#2e7d32", CONTRADICTED: "#c62828", NO_EFFECT: "#1565c0", UNDECIDED: "#ef6c00",
                   NOT_MEASURED: "#9e9e9e"}


def forest_plot(claims: list[Claim], path):
    """The claims as a forest plot: one row per claim, its effect and 95 % interval on its own scale
    (the units differ), zero marked, the margin dotted, the expected side of zero shaded, coloured
    by verdict."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(len(claims), 1, figsize=(9.0, 0.62 * len(claims) + 0.8), squeeze=False)
    for ax, c in zip(axes[:, 0], claims):
        ax.axvline(0.0, color="k", lw=0.8)
        colour = VERDICT_COLOURS[c.verdict]
        if c.effect is not None and math.isfinite(c.effect):
            has_ci = c.ci_low is not None and math.isfinite(c.ci_low)
            lo, hi = (c.ci_low, c.ci_high) if has_ci else (c.effect, c.effect)
            span = max(abs(lo), abs(hi), abs(c.effect), 1.2 * c.margin) * 1.3 or 1.0  # a bound met exactly
            ax.set_xlim(-span, span)
            ax.axvspan(0, c.direction * span, color="#2e7d32", alpha=0.07)
            if c.margin > 0:
                for m in (-c.margin, c.margin):
                    ax.axvline(m, color="#1565c0", lw=0.7, ls=":")
            if has_ci:
                ax.hlines(0, lo, hi, color=colour, lw=2.5)
            ax.plot([c.effect], [0], "o" if has_ci else "D", color=colour, ms=6)
        else:
            ax.set_xlim(-1, 1)
        ax.set_ylim(-1, 1)
        ax.set_yticks([])
        ax.tick_params(axis="x", labelsize=7, pad=1)
        ax.ticklabel_format(axis="x", useOffset=False)
        flag = " *" if c.flips else ""
        kind = "sanity check: " if c.kind == SANITY else ""
        ax.set_ylabel(f"{c.statement}\n[{kind}{c.verdict}]{flag}", rotation=0, ha="right", va="center", fontsize=8,
                      color=colour)
        ax.text(1.01, 0.5, c.unit, transform=ax.transAxes, fontsize=7, va="center")
    fig.suptitle(f"Claims: effect and {100 * CONFIDENCE:.0f} % interval (shaded: the expected direction; dotted: "
                 f"+-margin; diamond: no interval; *: flips at a neighbouring threshold)", fontsize=8)
    fig.subplots_adjust(left=0.42, right=0.82, top=1 - 0.5 / fig.get_figheight(), bottom=0.3 / fig.get_figheight(),
                        hspace=0.9)
    return save(fig, Path(path), "claims: forest plot")


def to_json(claims: list[Claim]) -> str:
    return json.dumps([c.to_dict() for c in claims], indent=2)
