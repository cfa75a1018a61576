"""The paper's findings, checked against our stored numbers: each claim prints its effect (with its
unit), the 95 % interval, the seeds and utterances it rests on, the test, and a verdict:

- *holds*: the interval excludes zero in the paper's direction;
- *contradicted*: it excludes zero the other way;
- *undecided*: it includes zero, or there are too few seeds for an interval (the claim says so);
- *not measured*: nothing to decide on.

    gatelens claims --study table1 [--study table2 --study table3] [--format json]

Numbers come from the store (``layer_stats`` of each checkpoint's capture; ``analysis_summary``
rows of the temporal-trace, memory-robustness, unit-memory and unit-ablation analyses) and from the studies' runs (test PER,
and each test utterance's errors, ``utterances.parquet``, the store's ``utterance_errors``).
Which checkpoints: the final checkpoints of the studies' finished runs.

Tests. A claim about error rates is a linear contrast of test PERs (a difference, a mean of
differences, a slope over depth) with the paired bootstrap over test utterances and seeds
(``analyses.stats.bootstrap_contrast``). A claim about a per-checkpoint number (a share, a slope over
layers, a difference between matched LSTM and GRU checkpoints) is computed per seed (averaged
over the grid points it covers) and given the Student's t interval over seeds; with fewer than
``MIN_SEEDS`` seeds it has no interval and stays undecided, and says so. "GRU cells are bounded"
is a census of every captured value, not an estimate. "LSTM" is the peephole LSTM (arch
``lstm``), "GRU" the GRU of Eq. 1 (``gru``); pairs match LSTM with GRU of the same depth, residual
setting and seed; error comparisons stay within one study.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl

from analyses.common import plt, read_summary, save, slope
from analyses.stats import CONFIDENCE, bootstrap_contrast, mean_interval
from cluster.runs import UTTERANCES_FILE, final_checkpoint_ids, iter_runs, studies_results
from cluster.summaries import SUMMARY_VERSION

HOLDS, CONTRADICTED, UNDECIDED, NOT_MEASURED = "holds", "contradicted", "undecided", "not measured"
MIN_SEEDS = 3  # an interval over seeds from two values is a t with one degree of freedom: no interval at all
_CK = {"checkpoint_id": pl.String, "arch": pl.String, "depth": pl.Int64, "residual": pl.Boolean, "seed": pl.Int64,
       "layer": pl.Int64}


@dataclass
class Evidence:
    """The numbers claims are decided on. One row per (checkpoint, layer) in the first three."""

    cells: pl.DataFrame  # + share_inside_2, share_outside_0_7, min_c, max_c
    smoothness: pl.DataFrame  # + smoothness
    impact: pl.DataFrame  # + impact_frames, censored
    memory: pl.DataFrame  # + implied_tau_median, measured_frames_median (per-unit memory, medians over units)
    ablation: pl.DataFrame  # + acc_drop_excess (one row per checkpoint, layer 0: the mean over layers and phones)
    results: pl.DataFrame  # study, run, cell, layers, residual, seed, corpus, test_per, test_frame_acc
    utterances: pl.DataFrame  # study, run, utt_id, ref_len, errors (test split)

    @classmethod
    def empty(cls) -> "Evidence":
        return cls(pl.DataFrame(schema=_CK | {"share_inside_2": pl.Float64, "share_outside_0_7": pl.Float64,
                                              "min_c": pl.Float64, "max_c": pl.Float64}),
                   pl.DataFrame(schema=_CK | {"smoothness": pl.Float64}),
                   pl.DataFrame(schema=_CK | {"impact_frames": pl.Float64, "censored": pl.Float64}),
                   pl.DataFrame(schema=_CK | {"implied_tau_median": pl.Float64, "measured_frames_median": pl.Float64}),
                   pl.DataFrame(schema=_CK | {"acc_drop_excess": pl.Float64}),
                   pl.DataFrame(schema=RESULTS),
                   pl.DataFrame(schema=UTTERANCES))


RESULTS = {"study": pl.String, "run": pl.String, "cell": pl.String, "layers": pl.Int64, "residual": pl.Boolean,
           "seed": pl.Int64, "corpus": pl.String, "test_per": pl.Float64, "test_frame_acc": pl.Float64}
UTTERANCES = {"study": pl.String, "run": pl.String, "utt_id": pl.String, "ref_len": pl.Int64, "errors": pl.Int64}


@dataclass
class Claim:
    key: str
    statement: str
    effect_name: str  # what ``effect`` is, e.g. "PER(lazy) - PER(lstm)"
    unit: str
    direction: int  # the paper's sign of the effect: +1 or -1
    verdict: str = NOT_MEASURED
    effect: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    confidence: float = CONFIDENCE
    n_seeds: int = 0
    n_utterances: int = 0
    test: str = ""
    p_direction: float | None = None  # bootstrap: the share of resamples on the paper's side of zero
    note: str = ""  # why there is no interval, say
    numbers: list[str] = field(default_factory=list)  # one line per checkpoint, pair or system measured

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}

    def decide(self) -> "Claim":
        """The verdict from the interval (or the census, for a bound)."""
        if self.effect is None or not math.isfinite(self.effect):
            self.verdict = NOT_MEASURED
        elif self.ci_low is None or not (math.isfinite(self.ci_low) and math.isfinite(self.ci_high)):
            self.verdict = UNDECIDED
        elif self.ci_low > 0 or self.ci_high < 0:
            self.verdict = HOLDS if (self.ci_low > 0) == (self.direction > 0) else CONTRADICTED
        else:
            self.verdict = UNDECIDED
        return self


# ---------------------------------------------------------------------------------------------
# Gathering the numbers


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
    marks = ", ".join("?" for _ in checkpoint_ids)
    cks = store.query(f"SELECT checkpoint_id, arch, layers AS depth, residual, seed FROM checkpoints "
                      f"WHERE checkpoint_id IN ({marks})", list(checkpoint_ids))
    # a checkpoint captured without its run's stamp has no seed: it counts as a replicate of its own
    cks = cks.with_columns(pl.col("depth").cast(pl.Int64), pl.col("residual").cast(pl.Boolean),
                           pl.col("seed").cast(pl.Int64).fill_null(-1))
    cells = store.query(f"SELECT checkpoint_id, layer, n_inside_2 / count AS share_inside_2, "
                        f"n_outside_0_7 / count AS share_outside_0_7, min AS min_c, max AS max_c FROM layer_stats "
                        f"WHERE quantity = 'c' AND analysis_version = ? AND checkpoint_id IN ({marks})",
                        [SUMMARY_VERSION, *checkpoint_ids])
    ev.cells = cks.join(cells.with_columns(pl.col("layer").cast(pl.Int64)), on="checkpoint_id").select(ev.cells.columns)

    def per_layer(analysis: str, metrics: list[str]) -> pl.DataFrame | None:
        s = read_summary(store, analysis, list(checkpoint_ids))
        s = s.filter((pl.col("layer") > 0) & (pl.col("unit") == -1) & (pl.col("phone_id") == -1)
                     & pl.col("metric").is_in(metrics))
        if analysis == "temporal_trace":
            s = s.filter(pl.col("label") == "")  # the per-layer average over utterances
        if s.height == 0:
            return None
        wide = s.pivot(on="metric", index=["checkpoint_id", "layer"], values="value", aggregate_function="mean")
        return cks.join(wide.with_columns(pl.col("layer").cast(pl.Int64)), on="checkpoint_id")

    smooth = per_layer("temporal_trace", ["smoothness"])
    if smooth is not None:
        ev.smoothness = smooth.select(ev.smoothness.columns)
    impact = per_layer("memory_robustness", ["impact_frames", "censored"])
    if impact is not None:
        ev.impact = impact.select(ev.impact.columns)
    memory = per_layer("unit_memory", ["implied_tau_median", "measured_frames_median"])
    if memory is not None:
        ev.memory = memory.select(ev.memory.columns)
    abl = read_summary(store, "unit_ablation", list(checkpoint_ids)).filter(
        (pl.col("layer") == 0) & (pl.col("metric") == "acc_drop_excess"))
    if abl.height:
        ev.ablation = cks.join(abl.select("checkpoint_id", pl.lit(0, pl.Int64).alias("layer"),
                                          pl.col("value").alias("acc_drop_excess")), on="checkpoint_id"
                               ).select(ev.ablation.columns)
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
# The two tests: over seeds, and the bootstrap over utterances and seeds


def _over_seeds(c: Claim, per_seed: dict[int, list[float]]) -> Claim:
    """Effect = the mean over seeds of each seed's mean over its items; Student's t interval over seeds."""
    values = [float(np.mean(v)) for v in per_seed.values() if v]
    c.n_seeds = len(values)
    if not values:
        return c.decide()
    c.effect, low, high = mean_interval(values)
    c.test = f"Student's t over {len(values)} seeds (each seed's mean over the grid points measured)"
    if len(values) >= MIN_SEEDS:
        c.ci_low, c.ci_high = low, high
    else:
        c.note = f"{len(values)} seed{'s' * (len(values) > 1)}: an interval over seeds needs at least {MIN_SEEDS}"
    return c.decide()


def _bootstrap(c: Claim, ev: Evidence, systems: list[tuple[pl.DataFrame, float]], scale: float = 100.0) -> Claim:
    """The contrast sum_k w_k PER_k over ``systems`` (their result rows and weights): the seeds
    every system has, the test utterances every run scored."""
    seeds = set.intersection(*(set(rows["seed"].to_list()) for rows, _ in systems)) if systems else set()
    if not seeds:
        if systems:
            c.note = "no seed common to the systems compared"
        return c.decide()
    seeds = sorted(seeds)
    runs = [[rows.filter(pl.col("seed") == s).row(0, named=True) for s in seeds] for rows, _ in systems]
    corpora = {r["corpus"] for system in runs for r in system}
    if len(corpora) > 1:
        c.note = f"systems scored on different corpora ({', '.join(sorted(map(str, corpora)))}): no paired test"
        return c.decide()
    utts = ev.utterances
    per_run = {(r["study"], r["run"]): utts.filter((pl.col("study") == r["study"]) & (pl.col("run") == r["run"]))
               for system in runs for r in system}
    missing = [f"{study}/{run}" for (study, run), u in per_run.items() if u.height == 0]
    if missing:
        c.note = (f"run {missing[0]} has no per-utterance errors ({UTTERANCES_FILE}; trained before they were "
                  f"written): retrain it to decide")
        return c.decide()
    common = set.intersection(*(set(u["utt_id"].to_list()) for u in per_run.values()))
    order = sorted(common)
    if len(order) < 2:
        c.note = f"{len(order)} test utterances scored by every run"
        return c.decide()
    ref = None
    errors = np.zeros((len(systems), len(seeds), len(order)))
    for k, system in enumerate(runs):
        for s, r in enumerate(system):
            u = per_run[(r["study"], r["run"])].filter(pl.col("utt_id").is_in(common)).sort("utt_id")
            errors[k, s] = u["errors"].to_numpy()
            ref = u["ref_len"].to_numpy() if ref is None else ref
    b = bootstrap_contrast(errors, ref, [w for _, w in systems])
    c.effect, c.ci_low, c.ci_high = scale * b.effect, scale * b.ci_low, scale * b.ci_high
    c.p_direction = b.p_negative if c.direction < 0 else 1 - b.p_negative
    c.n_seeds, c.n_utterances, c.test = b.n_seeds, b.n_utterances, b.test
    return c.decide()


# ---------------------------------------------------------------------------------------------
# The claims


def _fmt(values) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"


def _checkpoints(df: pl.DataFrame, arch: str, min_depth: int = 1):
    """(checkpoint_id, depth, seed, rows by layer) of one architecture, layers in order."""
    sub = df.filter((pl.col("arch") == arch) & (pl.col("depth") >= min_depth)).sort("checkpoint_id", "layer")
    for (cid,), g in sub.group_by("checkpoint_id", maintain_order=True):
        yield cid, int(g["depth"][0]), int(g["seed"][0]), g


def gru_bounded(ev: Evidence) -> Claim:
    c = Claim("gru_bounded", "GRU cells are bounded in (-1, 1)", "max |c| - 1 over every GRU checkpoint", "|c|", -1)
    worst, seeds = None, set()
    for cid, _, seed, g in _checkpoints(ev.cells, "gru"):
        m = float(max(g["min_c"].abs().max(), g["max_c"].abs().max()))
        worst = m if worst is None else max(worst, m)
        seeds.add(seed)
        c.numbers.append(f"{cid} (seed {seed}): max |c| = {m:.4f}")
    if worst is None:
        return c
    c.effect, c.n_seeds = worst - 1.0, len(seeds)
    c.test = (f"census of every captured value of {len(c.numbers)} GRU checkpoints, {len(seeds)} seeds (float32 tanh "
              f"saturates to exactly 1, which is within the bound)")
    c.verdict = HOLDS if c.effect <= 0 else CONTRADICTED
    return c


def lstm_near_zero(ev: Evidence) -> Claim:
    c = Claim("lstm_near_zero", "LSTM cell values concentrate near 0",
              "smallest share of c in (-2, 2) over a checkpoint's layers, minus one half", "share", +1)
    per_seed: dict[int, list[float]] = {}
    for cid, _, seed, g in _checkpoints(ev.cells, "lstm"):
        shares = g["share_inside_2"].to_list()
        per_seed.setdefault(seed, []).append(min(shares) - 0.5)
        c.numbers.append(f"{cid} (seed {seed}): share in (-2, 2) by layer {_fmt(shares)}")
    return _over_seeds(c, per_seed)


def _trend(df: pl.DataFrame, arch: str, column: str, direction: int, key: str, statement: str, what: str,
           unit: str) -> Claim:
    c = Claim(key, statement, f"least-squares slope of {what} over layers 1..L (checkpoints of 2+ layers)",
              f"{unit} per layer", direction)
    per_seed: dict[int, list[float]] = {}
    for cid, _, seed, g in _checkpoints(df, arch, min_depth=2):
        values = g[column].to_list()
        s = slope(values)
        if np.isnan(s):
            continue
        per_seed.setdefault(seed, []).append(s)
        c.numbers.append(f"{cid} (seed {seed}): {column} by layer {_fmt(values)}, slope {s:+.3g}")
    return _over_seeds(c, per_seed)


def lstm_concentration_falls(ev: Evidence) -> Claim:
    return _trend(ev.cells, "lstm", "share_inside_2", -1, "lstm_concentration_falls",
                  "LSTM concentration near 0 falls with depth", "share of c in (-2, 2)", "share")


def gru_pm1_rises(ev: Evidence) -> Claim:
    return _trend(ev.cells, "gru", "share_outside_0_7", +1, "gru_pm1_rises",
                  "GRU cells concentrate near +-1 more at higher layers", "share of c outside (-0.7, 0.7)", "share")


def gru_smoother_higher(ev: Evidence) -> Claim:
    return _trend(ev.smoothness, "gru", "smoothness", -1, "gru_smoother_higher",
                  "GRU traces are smoother at higher layers", "smoothness (mean step / mean distance; lower = smoother)",
                  "smoothness")


NAMES = {"lstm": "LSTM", "gru": "GRU", "lstm_lazy": "lazy LSTM"}


def _pairs(c: Claim, df: pl.DataFrame, column: str, sign: float, fmt: str, a: str = "lstm", b: str = "gru") -> Claim:
    """Per seed, the mean over matched depths of sign * (a - b) of the mean over layers."""
    means = df.group_by("arch", "depth", "residual", "seed").agg(pl.col(column).mean().alias("v"))
    per_seed: dict[int, list[float]] = {}
    for (depth, res, seed), g in means.sort("depth", "residual", "seed").group_by("depth", "residual", "seed",
                                                                                  maintain_order=True):
        va, vb = g.filter(pl.col("arch") == a)["v"], g.filter(pl.col("arch") == b)["v"]
        if va.len() and vb.len():
            x, y = float(va.mean()), float(vb.mean())
            per_seed.setdefault(seed, []).append(sign * (x - y))
            c.numbers.append(f"{depth} layers{' residual' if res else ''}, seed {seed}: {NAMES[a]} {x:{fmt}} vs "
                             f"{NAMES[b]} {y:{fmt}}")
    return _over_seeds(c, per_seed)


def lstm_smoother_than_gru(ev: Evidence) -> Claim:
    c = Claim("lstm_smoother_than_gru", "LSTM traces are smoother than GRU traces",
              "smoothness(LSTM) - smoothness(GRU), mean over layers, depth- and seed-matched (lower = smoother)",
              "smoothness", -1)
    return _pairs(c, ev.smoothness, "smoothness", 1.0, ".3f")


def gru_impact_shorter(ev: Evidence) -> Claim:
    c = Claim("gru_impact_shorter", "GRU noise impact is shorter than LSTM's",
              "impact(GRU) - impact(LSTM), mean over layers, depth- and seed-matched (frames after the noise until "
              "the mean |c difference| falls below its threshold)", "frames", -1)
    return _pairs(c, ev.impact, "impact_frames", -1.0, ".1f")


def gru_memory_shorter(ev: Evidence) -> Claim:
    c = Claim("gru_memory_shorter", "GRU units remember shorter than LSTM units",
              "median over units of the measured memory (frames to 1/e of the peak difference after noise), "
              "GRU - LSTM, mean over layers, depth- and seed-matched", "frames", -1)
    return _pairs(c, ev.memory, "measured_frames_median", -1.0, ".1f")


def lazy_memory_shorter(ev: Evidence) -> Claim:
    c = Claim("lazy_memory_shorter", "Lazy update shortens LSTM memory",
              "median over units of the measured memory, lazy LSTM - LSTM, mean over layers, depth- and seed-matched",
              "frames", -1)
    return _pairs(c, ev.memory, "measured_frames_median", -1.0, ".1f", a="lstm", b="lstm_lazy")


def responsible_units_needed(ev: Evidence) -> Claim:
    c = Claim("responsible_units_needed", "Units most responsible for a phone are needed for that phone",
              "the phone's frame-accuracy drop with its k most responsible units ablated minus the drop with k random "
              "units, mean over layers and frequent phones (every cell)", "accuracy", +1)
    per_seed: dict[int, list[float]] = {}
    for r in ev.ablation.sort("checkpoint_id").iter_rows(named=True):
        per_seed.setdefault(r["seed"], []).append(r["acc_drop_excess"])
        c.numbers.append(f"{r['checkpoint_id']} (seed {r['seed']}): excess drop {r['acc_drop_excess']:+.3f}")
    return _over_seeds(c, per_seed)


def _systems(ev: Evidence, **where) -> pl.DataFrame:
    r = ev.results.filter(pl.col("test_per").is_not_null())
    for k, v in where.items():
        r = r.filter(pl.col(k) == v)
    return r


def _per_line(study: str, label: str, rows: pl.DataFrame) -> str:
    pers = ", ".join(f"s{s}: {100 * p:.2f}%" for s, p in zip(rows["seed"], rows["test_per"]))
    return f"{study} {label}: PER {pers}"


def lazy_lowers_error(ev: Evidence) -> Claim:
    c = Claim("lazy_lowers_error", "Lazy cell update lowers LSTM error",
              "PER(lstm_lazy) - PER(lstm), mean over the depths of a study (no residual)", "PER points", -1)
    systems = []
    for study in sorted(set(ev.results["study"].to_list())):
        for n in sorted(set(_systems(ev, study=study, cell="lstm_lazy", residual=False)["layers"].to_list())):
            base, lazy = (_systems(ev, study=study, cell=x, layers=n, residual=False) for x in ("lstm", "lstm_lazy"))
            if base.height and lazy.height:
                systems.append([(lazy, 1.0), (base, -1.0)])
                c.numbers += [_per_line(study, f"{n} layers lstm", base), _per_line(study, f"{n} layers lazy", lazy)]
    if not systems:
        c.note = "no study holds lstm and lstm_lazy runs at the same depth (table2 does)"
    return _bootstrap(c, ev, [(r, w / len(systems)) for pair in systems for r, w in pair])


def residual_lowers_error(ev: Evidence) -> Claim:
    c = Claim("residual_lowers_error", "Residual shortcuts lower error at 4 and 6 layers",
              "PER(residual) - PER(plain), mean over cells and depths 4, 6 of a study", "PER points", -1)
    systems = []
    for study in sorted(set(ev.results["study"].to_list())):
        for cell in ("lstm", "gru"):
            for n in (4, 6):
                base, res = (_systems(ev, study=study, cell=cell, layers=n, residual=r) for r in (False, True))
                if base.height and res.height:
                    systems.append([(res, 1.0), (base, -1.0)])
                    c.numbers += [_per_line(study, f"{cell} {n} layers", base),
                                  _per_line(study, f"{cell} {n} layers residual", res)]
    if not systems:
        c.note = "no study holds runs with and without residual shortcuts at 4 or 6 layers (table3 does)"
    return _bootstrap(c, ev, [(r, w / len(systems)) for pair in systems for r, w in pair])


def deeper_lowers_error(ev: Evidence) -> Claim:
    c = Claim("deeper_lowers_error", "Deeper models have lower error",
              "least-squares slope of PER over depth, mean over cells (no residual, no lazy update)",
              "PER points per layer", -1)
    groups = []
    for study in sorted(set(ev.results["study"].to_list())):
        for cell in ("lstm", "gru"):
            depths = sorted(set(_systems(ev, study=study, cell=cell, residual=False)["layers"].to_list()))
            if len(depths) < 2:
                continue
            d = np.asarray(depths, dtype=np.float64)
            w = (d - d.mean()) / ((d - d.mean()) ** 2).sum()  # the least-squares slope is linear in the PERs
            rows = [_systems(ev, study=study, cell=cell, layers=n, residual=False) for n in depths]
            groups.append(list(zip(rows, w)))
            c.numbers += [_per_line(study, f"{cell} {n} layers", r) for n, r in zip(depths, rows)]
    if not groups:
        c.note = "no study holds one cell at two or more depths"
    return _bootstrap(c, ev, [(r, w / len(groups)) for g in groups for r, w in g])


CLAIMS: tuple[Callable[[Evidence], Claim], ...] = (
    gru_bounded, lstm_near_zero, lstm_concentration_falls, gru_pm1_rises, lstm_smoother_than_gru,
    gru_smoother_higher, gru_impact_shorter, gru_memory_shorter, lazy_memory_shorter, responsible_units_needed,
    lazy_lowers_error,
    residual_lowers_error, deeper_lowers_error)


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
    return [f(ev) for f in CLAIMS]


def effect_text(c: Claim) -> str:
    """'-0.42 PER points [-0.71, -0.13]' (its 95 % interval), or why there is none."""
    if c.effect is None:
        return "not measured" + (f" ({c.note})" if c.note else "")
    text = f"{c.effect:+.3g} {c.unit}"
    if c.ci_low is not None and math.isfinite(c.ci_low):
        text += f" [{c.ci_low:+.3g}, {c.ci_high:+.3g}] ({100 * c.confidence:.0f} % interval)"
    if c.p_direction is not None:
        text += f", P(paper's direction) {c.p_direction:.3f}"
    return text + (f"; {c.note}" if c.note else "")


def format_claims(claims: list[Claim]) -> str:
    lines = []
    for c in claims:
        lines.append(f"[{c.verdict}] {c.statement}")
        lines.append(f"    effect: {c.effect_name} = {effect_text(c)}")
        if c.test:
            lines.append(f"    test: {c.test}")
        lines += [f"    {n}" for n in c.numbers]
    lines.append(f"(holds / contradicted: the {100 * CONFIDENCE:.0f} % interval excludes zero in / against the paper's "
                 f"direction; undecided: it includes zero, or too few seeds)")
    return "\n".join(lines)


VERDICT_COLOURS = {HOLDS: "#2e7d32", CONTRADICTED: "#c62828", UNDECIDED: "#ef6c00", NOT_MEASURED: "#9e9e9e"}


def forest_plot(claims: list[Claim], path):
    """The claims as a forest plot: one row per claim, its effect and 95 % interval on its own scale
    (the units differ), zero marked, the paper's side of zero shaded, coloured by verdict."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(len(claims), 1, figsize=(9.0, 0.62 * len(claims) + 0.8), squeeze=False)
    for ax, c in zip(axes[:, 0], claims):
        ax.axvline(0.0, color="k", lw=0.8)
        colour = VERDICT_COLOURS[c.verdict]
        if c.effect is not None and math.isfinite(c.effect):
            has_ci = c.ci_low is not None and math.isfinite(c.ci_low)
            lo, hi = (c.ci_low, c.ci_high) if has_ci else (c.effect, c.effect)
            span = max(abs(lo), abs(hi), abs(c.effect)) * 1.3 or 1.0  # a zero effect (a bound met exactly)
            ax.set_xlim(-span, span)
            ax.axvspan(0, c.direction * span, color="#2e7d32", alpha=0.07)
            if has_ci:
                ax.hlines(0, lo, hi, color=colour, lw=2.5)
            ax.plot([c.effect], [0], "o" if has_ci else "D", color=colour, ms=6)
        else:
            ax.set_xlim(-1, 1)
        ax.set_ylim(-1, 1)
        ax.set_yticks([])
        ax.tick_params(axis="x", labelsize=7, pad=1)
        ax.ticklabel_format(axis="x", useOffset=False)
        ax.set_ylabel(f"{c.statement}\n[{c.verdict}]", rotation=0, ha="right", va="center", fontsize=8, color=colour)
        ax.text(1.01, 0.5, c.unit, transform=ax.transAxes, fontsize=7, va="center")
    fig.suptitle(f"Claims: effect and {100 * CONFIDENCE:.0f} % interval (shaded: the paper's direction; "
                 f"diamond: no interval)", fontsize=9)
    fig.subplots_adjust(left=0.42, right=0.82, top=1 - 0.5 / fig.get_figheight(), bottom=0.3 / fig.get_figheight(),
                        hspace=0.9)
    return save(fig, Path(path), "claims: forest plot")


def to_json(claims: list[Claim]) -> str:
    return json.dumps([c.to_dict() for c in claims], indent=2)
