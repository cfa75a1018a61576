"""Figs. 4-6: neuronal responsibility (Sec. 4.2).

A unit's cell value is irregular on a frame by the capture's rule (the paper's: LSTM |c| > 10,
GRU |c| < 0.5; a percentile rule for small models). Responsibility of unit u to phone p = the
share of p's frames on which u is irregular (``phone_responsibility``, counted by the capture).

- Figs. 4-5: per layer and phone, the number of units whose responsibility exceeds the
  threshold (paper: 80% for LSTM, 50% for GRU; both parameters).
- Fig. 6: single-phone units, "much higher responsibility to one phone than any other": a
  unit whose best phone p1 has responsibility r1 >= ``single_min`` and r1 >= ``single_ratio``
  times its runner-up r2 (phones with fewer than ``min_frames`` frames are left out: one frame
  makes a responsibility of 0 or 1). Ranked by r1 - r2; the ``top`` best are drawn with their
  responsibility profile over all phones.

Summary rows: (layer, phone_id) responsible_units; per layer responsible_units_mean (over phones);
per single-phone unit (layer, unit, phone_id = p1) single_phone_responsibility (r1) and
single_phone_runner_up (r2). ``label`` holds the rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from analyses.common import (CHECKPOINT, DEFAULT_CAPTURE_VERSION, Analysis, AnalysisError, FigureSpec, Output, Params,
                             checkpoint_info, family, figure_path, grid, require_rows, save, summary_frame)

NAME = "responsibility"
VERSION = 1
FIGURE_COUNTS = FigureSpec("fig04-05_responsible_units.png", "Figs. 4-5",
                           "Units with responsibility above the threshold, per phone and layer")
FIGURE_SINGLE = FigureSpec("fig06_single_phone_units.png", "Fig. 6",
                           "Single-phone units and their responsibility profiles")
PAPER_RULE = {"lstm": "abs>10", "gru": "abs<0.5"}
PAPER_THRESHOLD = {"lstm": 0.8, "gru": 0.5}


@dataclass
class ResponsibilityParams(Params):
    rule: str | None = None  # default: the paper's rule for the architecture if captured, else the first captured
    threshold: float | None = None  # default: 0.8 (LSTM) / 0.5 (GRU)
    min_frames: int = 20  # phones with fewer frames are not candidates for a single-phone unit
    single_min: float = 0.2  # a floor: 3x a runner-up of 2% is not yet an answer
    single_ratio: float = 3.0
    top: int = 4
    capture_version: int = DEFAULT_CAPTURE_VERSION


def choose_rule(store, ck: dict, requested: str | None, capture_version: int) -> str:
    """The irregularity rule to read: the one asked for, else the paper's for the architecture
    when it was captured, else the first captured (the unit ablation reads the same)."""
    cid = ck["checkpoint_id"]
    rules = store.query("SELECT DISTINCT rule FROM phone_responsibility WHERE checkpoint_id = ? AND "
                        "analysis_version = ? ORDER BY rule", [cid, capture_version])["rule"].to_list()
    if not rules:
        require_rows(pl.DataFrame(), store, cid, "responsibility counts (phone_responsibility)", capture_version)
    rule = requested or (PAPER_RULE[family(ck["arch"])] if PAPER_RULE[family(ck["arch"])] in rules else rules[0])
    if rule not in rules:
        raise AnalysisError(f"{store.path}: checkpoint {cid} was captured with the rules {rules}, "
                            f"not {rule!r} (gatelens capture --rule {rule})")
    return rule


def load(store, checkpoint_id: str, params: ResponsibilityParams) -> dict:
    ck = checkpoint_info(store, checkpoint_id)
    rule = choose_rule(store, ck, params.rule, params.capture_version)
    df = store.query("SELECT layer, unit, phone_id, phone, frames, irregular, responsibility, threshold "
                     "FROM phone_responsibility WHERE checkpoint_id = ? AND analysis_version = ? AND rule = ? "
                     "ORDER BY layer, unit, phone_id", [checkpoint_id, params.capture_version, rule])
    return {"checkpoint": ck, "rule": rule, "responsibility": df}


def responsible_counts(df: pl.DataFrame, threshold: float) -> pl.DataFrame:
    """(layer, phone_id, phone, units): units with responsibility > threshold, per phone and layer."""
    return (df.group_by("layer", "phone_id", "phone")
            .agg((pl.col("responsibility") > threshold).sum().cast(pl.Int64).alias("units"))
            .sort("layer", "phone_id"))


def single_phone_units(df: pl.DataFrame, min_frames: int, single_min: float, single_ratio: float) -> pl.DataFrame:
    """Units answering one phone far more than any other: (layer, unit, phone_id, phone, r1, r2),
    best margin first."""
    cand = df.filter(pl.col("frames") >= min_frames)
    if cand.height == 0:
        return pl.DataFrame(schema={"layer": pl.Int32, "unit": pl.Int32, "phone_id": pl.Int32, "phone": pl.String,
                                    "r1": pl.Float64, "r2": pl.Float64})
    ranked = cand.sort(["layer", "unit", "responsibility"], descending=[False, False, True])
    best = ranked.group_by("layer", "unit", maintain_order=True).agg(
        pl.col("phone_id").first(), pl.col("phone").first(), pl.col("responsibility").first().alias("r1"),
        pl.col("responsibility").slice(1, 1).first().fill_null(0.0).alias("r2"))
    return (best.filter((pl.col("r1") >= single_min) & (pl.col("r1") >= single_ratio * pl.col("r2")))
            .with_columns((pl.col("r1") - pl.col("r2")).alias("margin"))
            .sort(["margin", "layer", "unit"], descending=[True, False, False]).drop("margin"))


def run(inputs: dict, params: ResponsibilityParams, fig_dir) -> Output:
    ck, rule, df = inputs["checkpoint"], inputs["rule"], inputs["responsibility"]
    cid, fam = ck["checkpoint_id"], family(ck["arch"])
    threshold = params.threshold if params.threshold is not None else PAPER_THRESHOLD[fam]
    counts = responsible_counts(df, threshold)
    singles = single_phone_units(df, params.min_frames, params.single_min, params.single_ratio)
    rows = [{"label": rule, "layer": r["layer"], "phone_id": r["phone_id"], "metric": "responsible_units",
             "value": r["units"]} for r in counts.iter_rows(named=True)]
    for (layer,), sub in counts.group_by("layer", maintain_order=True):
        rows.append({"label": rule, "layer": layer, "metric": "responsible_units_mean", "value": sub["units"].mean()})
    for r in singles.iter_rows(named=True):
        rows += [{"label": rule, "layer": r["layer"], "unit": r["unit"], "phone_id": r["phone_id"],
                  "metric": m, "value": r[k]} for m, k in (("single_phone_responsibility", "r1"),
                                                           ("single_phone_runner_up", "r2"))]
    rows.append({"label": rule, "metric": "single_phone_units", "value": singles.height})
    figures = [_draw_counts(counts, cid, rule, threshold, fig_dir),
               _draw_singles(df, singles.head(params.top), cid, rule, fig_dir)]
    p = params.to_dict() | {"rule": rule, "threshold": threshold}
    return Output(NAME, VERSION, cid, summary_frame(rows, cid, NAME, VERSION), figures, p)


def _draw_counts(counts: pl.DataFrame, cid: str, rule: str, threshold: float, fig_dir):
    layers = sorted(counts["layer"].unique().to_list())
    fig, axes = grid(len(layers), cols=1, size=(9.0, 2.2))
    for ax, layer in zip(axes, layers):
        sub = counts.filter(pl.col("layer") == layer)
        x = np.arange(sub.height)
        ax.bar(x, sub["units"].to_numpy(), color="tab:purple")
        ax.set_xticks(x, sub["phone"].to_list(), rotation=90, fontsize=6)
        ax.set_ylabel("units")
        ax.set_title(f"layer {layer}", fontsize=9)
    fig.suptitle(f"{FIGURE_COUNTS.paper}: units with responsibility > {threshold:.0%} ({rule}), {cid}", fontsize=9)
    fig.tight_layout()
    return save(fig, figure_path(fig_dir, cid, FIGURE_COUNTS.file), FIGURE_COUNTS.paper)


def _draw_singles(df: pl.DataFrame, singles: pl.DataFrame, cid: str, rule: str, fig_dir):
    fig, axes = grid(max(singles.height, 1), cols=2, size=(6.0, 2.4))
    if singles.height == 0:
        axes[0].text(0.5, 0.5, "no single-phone unit at these settings", ha="center", va="center")
        axes[0].set_axis_off()
        axes[0].set_title("no single-phone unit")
    for ax, s in zip(axes, singles.iter_rows(named=True)):
        prof = df.filter((pl.col("layer") == s["layer"]) & (pl.col("unit") == s["unit"])).sort("phone_id")
        colours = ["tab:red" if p == s["phone_id"] else "0.6" for p in prof["phone_id"].to_list()]
        x = np.arange(prof.height)
        ax.bar(x, prof["responsibility"].to_numpy(), color=colours)
        ax.set_xticks(x, prof["phone"].to_list(), rotation=90, fontsize=5)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("responsibility")
        ax.set_title(f"layer {s['layer']} unit {s['unit']}: {s['phone']}", fontsize=9)
    fig.suptitle(f"{FIGURE_SINGLE.paper}: single-phone units ({rule}), {cid}", fontsize=9)
    fig.tight_layout()
    return save(fig, figure_path(fig_dir, cid, FIGURE_SINGLE.file), FIGURE_SINGLE.paper)


ANALYSIS = Analysis(NAME, VERSION, CHECKPOINT, order=30, params=ResponsibilityParams, load=load, run=run,
                    figures=(FIGURE_COUNTS, FIGURE_SINGLE))
