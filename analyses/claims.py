"""The paper's findings, checked against our stored numbers: each claim prints what it measured
and a verdict, holds / does not hold / not measured. Nothing is asserted because the paper says
so: a verdict is a rule applied to numbers, and the rule is stated with it.

    gatelens claims --study table1 [--study table2 --study table3]

Numbers come from the store (``layer_stats`` of each checkpoint's capture; ``analysis_summary``
rows of the temporal-trace and memory-robustness analyses) and from the studies' trial results
(test PER and frame accuracy, ``cluster.runs.collect_results``). Which checkpoints: the final
checkpoints of the studies' finished runs.

Rules. "LSTM" is the peephole LSTM (arch ``lstm``), "GRU" the GRU of Eq. 1 (``gru``). A claim
about every layer (a level) must hold for every checkpoint measured; a claim about a trend or a
comparison is decided per checkpoint or per matched pair, and holds when it holds for more
than half of them ("k of n" is printed). "Falls / rises with depth" is the sign of the
least-squares slope over layers 1..L (all layers count, not only the first and the last).
Pairs match LSTM with GRU of the same depth and residual setting (same study for training
results). Error is the test phone error rate.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import polars as pl

from analyses.common import read_summary, slope
from cluster.runs import final_checkpoint_ids, studies_results
from cluster.summaries import SUMMARY_VERSION

HOLDS, FAILS, NOT_MEASURED = "holds", "does not hold", "not measured"
_CK = {"checkpoint_id": pl.String, "arch": pl.String, "depth": pl.Int64, "residual": pl.Boolean, "layer": pl.Int64}


@dataclass
class Evidence:
    """The numbers claims are decided on. One row per (checkpoint, layer) in the first three."""

    cells: pl.DataFrame  # + share_inside_2, share_outside_0_7, min_c, max_c
    smoothness: pl.DataFrame  # + smoothness
    impact: pl.DataFrame  # + impact_frames, censored
    results: pl.DataFrame  # study, run, cell, layers, residual, test_per, test_frame_acc

    @classmethod
    def empty(cls) -> "Evidence":
        return cls(pl.DataFrame(schema=_CK | {"share_inside_2": pl.Float64, "share_outside_0_7": pl.Float64,
                                              "min_c": pl.Float64, "max_c": pl.Float64}),
                   pl.DataFrame(schema=_CK | {"smoothness": pl.Float64}),
                   pl.DataFrame(schema=_CK | {"impact_frames": pl.Float64, "censored": pl.Float64}),
                   pl.DataFrame(schema={"study": pl.String, "run": pl.String, "cell": pl.String, "layers": pl.Int64,
                                        "residual": pl.Boolean, "test_per": pl.Float64, "test_frame_acc": pl.Float64}))


@dataclass
class Claim:
    key: str
    statement: str
    rule: str
    verdict: str
    numbers: list[str] = field(default_factory=list)  # one line per checkpoint or pair measured
    summary: str = ""  # e.g. "2 of 3 checkpoints"

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Gathering the numbers


def gather(store, checkpoint_ids: list[str], results: pl.DataFrame | None = None) -> Evidence:
    """Evidence for the given stored checkpoints (and trial results) from the store."""
    ev = Evidence.empty()
    if results is not None and results.height:
        ev.results = results.select(pl.col("study").cast(pl.String), "run", "cell", pl.col("layers").cast(pl.Int64),
                                    pl.col("residual").cast(pl.Boolean), "test_per", "test_frame_acc")
    if not checkpoint_ids or not store.path.is_file():
        return ev
    marks = ", ".join("?" for _ in checkpoint_ids)
    cks = store.query(f"SELECT checkpoint_id, arch, layers AS depth, residual FROM checkpoints "
                      f"WHERE checkpoint_id IN ({marks})", list(checkpoint_ids))
    cks = cks.with_columns(pl.col("depth").cast(pl.Int64), pl.col("residual").cast(pl.Boolean))
    cells = store.query(f"SELECT checkpoint_id, layer, n_inside_2 / count AS share_inside_2, "
                        f"n_outside_0_7 / count AS share_outside_0_7, min AS min_c, max AS max_c FROM layer_stats "
                        f"WHERE quantity = 'c' AND analysis_version = ? AND checkpoint_id IN ({marks})",
                        [SUMMARY_VERSION, *checkpoint_ids])
    ev.cells = cks.join(cells.with_columns(pl.col("layer").cast(pl.Int64)), on="checkpoint_id").select(ev.cells.columns)

    def per_layer(analysis: str, metrics: list[str]) -> pl.DataFrame:
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
    return ev


def gather_studies(store, storage, studies: list[str]) -> Evidence:
    """Evidence for the studies' final checkpoints and their trial results."""
    return gather(store, final_checkpoint_ids(storage, studies), studies_results(storage, studies))


# ---------------------------------------------------------------------------------------------
# Deciding


def _majority(flags: list[bool], what: str) -> tuple[str, str]:
    if not flags:
        return NOT_MEASURED, f"no {what} measured"
    k = sum(flags)
    return (HOLDS if 2 * k > len(flags) else FAILS), f"{k} of {len(flags)} {what}"


def _per_checkpoint(df: pl.DataFrame, arch: str, column: str, min_depth: int = 1):
    """[(checkpoint_id, values by layer)] of one architecture, layers in order."""
    out = []
    sub = df.filter((pl.col("arch") == arch) & (pl.col("depth") >= min_depth)).sort("checkpoint_id", "layer")
    for (cid,), g in sub.group_by("checkpoint_id", maintain_order=True):
        out.append((cid, g[column].to_list()))
    return out


def _fmt(values) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"


def gru_bounded(ev: Evidence) -> Claim:
    c = Claim("gru_bounded", "GRU cells are bounded in (-1, 1)",
              "every GRU checkpoint's max |c| over its layers <= 1 (float32 tanh saturates to exactly 1)", NOT_MEASURED)
    flags = []
    for cid, lo in _per_checkpoint(ev.cells, "gru", "min_c"):
        hi = dict(_per_checkpoint(ev.cells, "gru", "max_c"))[cid]
        m = max(max(abs(v) for v in lo), max(abs(v) for v in hi))
        flags.append(m <= 1.0)
        c.numbers.append(f"{cid}: max |c| = {m:.4f}")
    c.verdict, c.summary = (NOT_MEASURED, "no GRU checkpoint measured") if not flags else \
        ((HOLDS if all(flags) else FAILS), f"{sum(flags)} of {len(flags)} GRU checkpoints within [-1, 1]")
    return c


def lstm_near_zero(ev: Evidence) -> Claim:
    c = Claim("lstm_near_zero", "LSTM cell values concentrate near 0",
              "in every layer of every LSTM checkpoint, more than half the values of c lie in (-2, 2)", NOT_MEASURED)
    flags = []
    for cid, shares in _per_checkpoint(ev.cells, "lstm", "share_inside_2"):
        flags.append(all(s > 0.5 for s in shares))
        c.numbers.append(f"{cid}: share in (-2, 2) by layer {_fmt(shares)}")
    c.verdict, c.summary = (NOT_MEASURED, "no LSTM checkpoint measured") if not flags else \
        ((HOLDS if all(flags) else FAILS), f"{sum(flags)} of {len(flags)} LSTM checkpoints")
    return c


def _trend(ev_df, arch, column, sign, key, statement, rule) -> Claim:
    c = Claim(key, statement, rule, NOT_MEASURED)
    flags = []
    for cid, values in _per_checkpoint(ev_df, arch, column, min_depth=2):
        s = slope(values)
        if np.isnan(s):
            continue
        flags.append(bool(sign * s > 0))
        c.numbers.append(f"{cid}: {column} by layer {_fmt(values)}, slope {s:+.3g}")
    c.verdict, c.summary = _majority(flags, f"{arch.upper()} checkpoints of 2+ layers")
    return c


def lstm_concentration_falls(ev: Evidence) -> Claim:
    return _trend(ev.cells, "lstm", "share_inside_2", -1, "lstm_concentration_falls",
                  "LSTM concentration near 0 falls with depth",
                  "slope of the share of c in (-2, 2) over layers < 0, for most LSTM checkpoints of 2+ layers")


def gru_pm1_rises(ev: Evidence) -> Claim:
    return _trend(ev.cells, "gru", "share_outside_0_7", +1, "gru_pm1_rises",
                  "GRU cells concentrate near +-1 more at higher layers",
                  "slope of the share of c outside (-0.7, 0.7) over layers > 0, for most GRU checkpoints of 2+ layers")


def gru_smoother_higher(ev: Evidence) -> Claim:
    return _trend(ev.smoothness, "gru", "smoothness", -1, "gru_smoother_higher",
                  "GRU traces are smoother at higher layers",
                  "slope of smoothness (mean step / mean distance; lower = smoother) over layers < 0, "
                  "for most GRU checkpoints of 2+ layers")


def _pairs(df: pl.DataFrame, column: str) -> list[tuple[tuple, float, float]]:
    """[((depth, residual), LSTM mean over layers, GRU mean over layers)] for matched checkpoints."""
    means = df.group_by("checkpoint_id", "arch", "depth", "residual").agg(pl.col(column).mean().alias("v"))
    out = []
    for (depth, res), g in means.sort("depth", "residual").group_by("depth", "residual", maintain_order=True):
        lstm, gru = g.filter(pl.col("arch") == "lstm")["v"], g.filter(pl.col("arch") == "gru")["v"]
        if lstm.len() and gru.len():
            out.append(((depth, res), float(lstm.mean()), float(gru.mean())))
    return out


def lstm_smoother_than_gru(ev: Evidence) -> Claim:
    c = Claim("lstm_smoother_than_gru", "LSTM traces are smoother than GRU traces",
              "mean smoothness over layers (lower = smoother) of LSTM < GRU, for most depth-matched pairs", NOT_MEASURED)
    flags = []
    for (depth, res), lstm, gru in _pairs(ev.smoothness, "smoothness"):
        flags.append(lstm < gru)
        c.numbers.append(f"{depth} layers{' residual' if res else ''}: LSTM {lstm:.3f} vs GRU {gru:.3f}")
    c.verdict, c.summary = _majority(flags, "depth-matched LSTM/GRU pairs")
    return c


def gru_impact_shorter(ev: Evidence) -> Claim:
    c = Claim("gru_impact_shorter", "GRU noise impact is shorter than LSTM's",
              "mean impact duration over layers (frames after the noise until the mean |c difference| falls below "
              "its threshold) of GRU < LSTM, for most depth-matched pairs", NOT_MEASURED)
    flags = []
    for (depth, res), lstm, gru in _pairs(ev.impact, "impact_frames"):
        flags.append(gru < lstm)
        c.numbers.append(f"{depth} layers{' residual' if res else ''}: GRU {gru:.1f} vs LSTM {lstm:.1f} frames")
    c.verdict, c.summary = _majority(flags, "depth-matched LSTM/GRU pairs")
    return c


def _results(ev: Evidence) -> pl.DataFrame:
    return ev.results.filter(pl.col("test_per").is_not_null())


def lazy_lowers_error(ev: Evidence) -> Claim:
    c = Claim("lazy_lowers_error", "Lazy cell update lowers LSTM error",
              "test PER of lstm_lazy < lstm at the same depth (no residual, same study), for most depths", NOT_MEASURED)
    r = _results(ev).filter(~pl.col("residual"))
    flags = []
    for (study, n), g in r.sort("study", "layers").group_by("study", "layers", maintain_order=True):
        base, lazy = g.filter(pl.col("cell") == "lstm"), g.filter(pl.col("cell") == "lstm_lazy")
        if base.height and lazy.height:
            b, z = float(base["test_per"][0]), float(lazy["test_per"][0])
            flags.append(z < b)
            c.numbers.append(f"{study} {n} layers: PER {100 * b:.2f}% -> lazy {100 * z:.2f}%")
    c.verdict, c.summary = _majority(flags, "depths")
    return c


def residual_lowers_error(ev: Evidence) -> Claim:
    c = Claim("residual_lowers_error", "Residual shortcuts lower error at 4 and 6 layers",
              "test PER with residual < without, same cell and depth (4 or 6), for most pairs", NOT_MEASURED)
    r = _results(ev).filter(pl.col("layers").is_in([4, 6]) & (pl.col("cell") != "lstm_lazy"))
    flags = []
    for (study, cell, n), g in r.sort("study", "cell", "layers").group_by("study", "cell", "layers", maintain_order=True):
        base, res = g.filter(~pl.col("residual")), g.filter(pl.col("residual"))
        if base.height and res.height:
            b, s = float(base["test_per"][0]), float(res["test_per"][0])
            flags.append(s < b)
            c.numbers.append(f"{study} {cell} {n} layers: PER {100 * b:.2f}% -> residual {100 * s:.2f}%")
    c.verdict, c.summary = _majority(flags, "cell/depth pairs")
    return c


def deeper_lowers_error(ev: Evidence) -> Claim:
    c = Claim("deeper_lowers_error", "Deeper models have lower error",
              "slope of test PER over depth < 0 per cell (no residual, no lazy update), for most cells", NOT_MEASURED)
    r = _results(ev).filter(~pl.col("residual") & (pl.col("cell") != "lstm_lazy"))
    flags = []
    for (study, cell), g in r.sort("study", "cell", "layers").group_by("study", "cell", maintain_order=True):
        if g["layers"].n_unique() < 2:
            continue
        g = g.group_by("layers").agg(pl.col("test_per").mean()).sort("layers")
        s = float(np.polyfit(g["layers"].to_numpy().astype(float), g["test_per"].to_numpy(), 1)[0])
        flags.append(s < 0)
        c.numbers.append(f"{study} {cell}: PER by depth " + ", ".join(
            f"{n}: {100 * p:.2f}%" for n, p in zip(g["layers"], g["test_per"])) + f", slope {100 * s:+.3g} points/layer")
    c.verdict, c.summary = _majority(flags, "cells")
    return c


CLAIMS = (gru_bounded, lstm_near_zero, lstm_concentration_falls, gru_pm1_rises, lstm_smoother_than_gru,
          gru_smoother_higher, gru_impact_shorter, lazy_lowers_error, residual_lowers_error, deeper_lowers_error)


def evaluate(ev: Evidence) -> list[Claim]:
    return [f(ev) for f in CLAIMS]


def format_claims(claims: list[Claim]) -> str:
    lines = []
    for c in claims:
        lines.append(f"[{c.verdict}] {c.statement}" + (f" ({c.summary})" if c.summary else ""))
        lines.append(f"    rule: {c.rule}")
        lines += [f"    {n}" for n in c.numbers]
    return "\n".join(lines)


def to_json(claims: list[Claim]) -> str:
    return json.dumps([c.to_dict() for c in claims], indent=2)
