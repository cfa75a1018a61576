"""Per-unit memory: how long each unit remembers, implied by its forget gate and measured after an
inserted noise segment (Fig. 8's set-up, ``analyses.memory_robustness.noisy_pair``).

- **Implied timescale** of unit u: tau_u = 1 / (1 - mean f_u), the mean of its forget gate over
  the captured frames (``unit_stats``, quantity f). A cell c_t = f c_{t-1} + ... with a constant
  f forgets a difference as f^k = exp(-k / tau') with tau' = -1 / ln f ~ 1 / (1 - f) for f near 1.
  For the GRU f = 1 - i, so tau = 1 / mean i (its update gate).
- **Measured timescale**: d_u(t) = |c_noisy - c_clean| after the noise has left the model's
  input (from ``end``, the first frame whose spliced input holds no noise); from its peak there,
  the frames until it first falls below ``fraction`` x that peak (default 1/e: the e-folding time,
  on the same scale as tau; 0.5 gives the half-life, ln 2 tau). A unit whose difference never
  rises above ``floor`` carried nothing of the noise (``measured`` NaN, ``silent``); one that never
  falls below in the frames left is censored (the frames observed).

Several conditions (``memory_robustness.noisy_pairs``: utterances x noise types x insertion
points): a unit's measured timescale is the Kaplan-Meier median over the conditions that reached
it (``analyses.stats.km_median``; censored ones count as at least the frames observed), and a
layer's is the Kaplan-Meier median over all its (unit, condition) measurements; each is flagged
"at least" when the survival curve never falls to one half.

Table ``unit_memory`` (per layer and unit); summary rows per layer (label ''): median implied and
measured timescales, whether the measured one is only a lower bound (``measured_at_least``), the
share of censored measurements, and the Spearman correlation of implied with measured (per unit);
layer 0: the means of the medians over layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy.stats import spearmanr

from analyses.common import (CHECKPOINT, DEFAULT_CAPTURE_VERSION, Analysis, AnalysisError, FigureSpec, Output,
                             checkpoint_info, corpus_for, figure_path, grid, require_rows, save, summary_frame)
from analyses.memory_robustness import RobustnessParams, layer_names, aligned_diff, checkpoint_pairs
from analyses.stats import km_median
from cluster.tables import C, Table

NAME = "unit_memory"
VERSION = 2  # 2: several conditions, Kaplan-Meier medians
FIGURE = FigureSpec("unit_memory.png", "Memory per unit", "Per-unit memory: implied (forget gate) and measured timescales")
UNIT_MEMORY = Table("unit_memory", "how long each unit remembers: implied by its forget gate, measured after noise", (
    C("checkpoint_id", "VARCHAR", key=True), C("analysis_version", "INTEGER", key=True),
    C("layer", "INTEGER", key=True), C("unit", "INTEGER", key=True),
    C("mean_f", "DOUBLE", "mean forget gate over the captured frames (GRU: 1 - update gate)"),
    C("implied_tau", "DOUBLE", "1 / (1 - mean f), frames"),
    C("measured_frames", "DOUBLE", "frames from the peak of |c_noisy - c_clean| after the noise until below "
                                   "fraction x peak, Kaplan-Meier median over conditions (NaN: no noise reached it)"),
    C("censored", "BOOLEAN", "the unit's median over conditions is a lower bound (too many never fell below)"),
    C("peak", "DOUBLE", "peak |c_noisy - c_clean| after the noise left the input")),
    ("checkpoint_id", "analysis_version", "layer", "unit"))


@dataclass
class UnitMemoryParams(RobustnessParams):
    fraction: float = 1 / math.e  # measured: frames until below this share of the peak (1/e: e-folding time)
    floor: float = 1e-4  # a unit whose peak stays below this carried nothing of the noise
    capture_version: int = DEFAULT_CAPTURE_VERSION


def load(store, checkpoint_id: str, params: UnitMemoryParams) -> dict:
    ck = checkpoint_info(store, checkpoint_id)
    if not ck.get("path"):
        raise AnalysisError(f"{store.path}: checkpoint {checkpoint_id} has no file path in the store")
    f = store.query("SELECT layer, unit, mean FROM unit_stats WHERE checkpoint_id = ? AND analysis_version = ? "
                    "AND quantity = 'f' ORDER BY layer, unit", [checkpoint_id, params.capture_version])
    f = require_rows(f, store, checkpoint_id, "forget-gate statistics (unit_stats, quantity f)", params.capture_version)
    return {"checkpoint": ck, "corpus": corpus_for(store, checkpoint_id, params.corpus), "forget": f}


def implied_tau(mean_f: np.ndarray) -> np.ndarray:
    """1 / (1 - mean f); infinite for a gate that never forgets."""
    with np.errstate(divide="ignore"):
        return 1.0 / np.clip(1.0 - np.asarray(mean_f, dtype=np.float64), 0.0, None)


def measured_frames(d: np.ndarray, end: int, fraction: float, floor: float) -> tuple[np.ndarray, ...]:
    """Per unit of d [frames, H] (|c_noisy - c_clean|): (frames from the peak after ``end`` until
    below fraction x peak, censored, peak). NaN frames for a unit whose peak is below ``floor``."""
    after = d[end:]
    if after.shape[0] == 0:
        raise AnalysisError(f"no frames after the noise left the input (frame {end}): a shorter noise segment or "
                            f"an earlier insertion point")
    after = np.nan_to_num(after, nan=0.0)
    peak_at = after.argmax(axis=0)
    peak = after[peak_at, np.arange(after.shape[1])]
    # per unit, the first frame from its peak on that is below fraction x peak (all units at once)
    t = np.arange(after.shape[0])[:, None]
    below = (after < fraction * peak[None, :]) & (t >= peak_at[None, :])
    reached = peak >= floor
    censored = ~below.any(axis=0) & reached
    first = np.where(censored, after.shape[0], below.argmax(axis=0))
    frames = np.where(reached, (first - peak_at).astype(np.float64), np.nan)
    return frames, censored, peak


def run(inputs: dict, params: UnitMemoryParams, fig_dir) -> Output:
    cid, _, pairs = checkpoint_pairs(inputs, params)
    forget = inputs["forget"]
    parts, rows, drawn = [], [], {}
    for layer, name in layer_names(pairs[0]):
        f = forget.filter(pl.col("layer") == layer).sort("unit")["mean"].to_numpy()
        obs = [measured_frames(aligned_diff(pair, name), pair.end, params.fraction, params.floor) for pair in pairs]
        frames_c = np.stack([o[0] for o in obs])  # [conditions, H]
        cens_c = np.stack([o[1] for o in obs])
        if f.size != frames_c.shape[1]:
            raise AnalysisError(f"checkpoint {cid} layer {layer}: {f.size} forget-gate means stored, "
                                f"{frames_c.shape[1]} units")
        tau = implied_tau(f)
        per_unit = [km_median(frames_c[:, u], cens_c[:, u]) for u in range(f.size)]
        frames = np.array([m for m, _ in per_unit])
        censored = np.array([a for _, a in per_unit], dtype=bool)
        peak = np.nanmax(np.stack([o[2] for o in obs]), axis=0)
        parts.append(pl.DataFrame({"layer": np.full(f.size, layer, np.int32), "unit": np.arange(f.size, dtype=np.int32),
                                   "mean_f": f, "implied_tau": tau, "measured_frames": frames, "censored": censored,
                                   "peak": peak}))
        ok = np.isfinite(frames) & np.isfinite(tau)
        rho = float(spearmanr(tau[ok], frames[ok]).statistic) if ok.sum() >= 3 and np.ptp(tau[ok]) > 0 else math.nan
        layer_median, at_least = km_median(frames_c.ravel(), cens_c.ravel())
        reached = np.isfinite(frames_c)
        stats = {"implied_tau_median": float(np.median(tau)), "measured_frames_median": layer_median,
                 "measured_at_least": float(at_least),
                 "censored_share": float(cens_c[reached].mean()) if reached.any() else math.nan,
                 "spearman_implied_measured": rho, "conditions": float(len(pairs))}
        rows += [{"layer": layer, "metric": m, "value": v} for m, v in stats.items()]
        drawn[layer] = (tau, frames, censored)
    for m in ("implied_tau_median", "measured_frames_median"):
        vals = [r["value"] for r in rows if r["metric"] == m and r["value"] == r["value"]]
        rows.append({"metric": m, "value": float(np.mean(vals)) if vals else math.nan})
    table = pl.concat(parts).select(pl.lit(cid).alias("checkpoint_id"),
                                    pl.lit(VERSION, dtype=pl.Int32).alias("analysis_version"), pl.all())
    label = f"{len(pairs)} conditions ({pairs[0].label}, ...)"
    figure = _draw(drawn, cid, label, params.fraction, fig_dir)
    return Output(NAME, VERSION, cid, summary_frame(rows, cid, NAME, VERSION), [figure],
                  params.to_dict() | {"conditions": [p.label for p in pairs]}, tables={UNIT_MEMORY.name: table})


def _draw(drawn: dict, cid: str, label: str, fraction: float, fig_dir):
    fig, axes = grid(2 * len(drawn), cols=2, size=(4.6, 3.2))
    for k, (layer, (tau, frames, censored)) in enumerate(sorted(drawn.items())):
        hist, scatter = axes[2 * k], axes[2 * k + 1]
        finite = np.isfinite(tau)
        top = max(np.nanmax(np.concatenate([tau[finite], frames[np.isfinite(frames)], [2.0]])), 2.0)
        bins = np.geomspace(1.0, top * 1.1, 25)
        hist.hist(np.clip(tau[finite], 1.0, None), bins=bins, alpha=0.6, label="implied 1/(1-mean f)")
        hist.hist(np.clip(frames[np.isfinite(frames)], 1.0, None), bins=bins, alpha=0.6, label="measured after noise")
        hist.set_xscale("log")
        hist.set_xlabel("frames")
        hist.set_ylabel("units")
        hist.set_title(f"layer {layer}: timescales", fontsize=9)
        hist.legend(fontsize=7, loc="upper right")
        ok = finite & np.isfinite(frames)
        scatter.scatter(np.clip(tau[ok & ~censored], 1, None), np.clip(frames[ok & ~censored], 1, None), s=8,
                        label="measured")
        scatter.scatter(np.clip(tau[ok & censored], 1, None), np.clip(frames[ok & censored], 1, None), s=8,
                        marker="^", label="censored")
        scatter.plot([1, top], [1, top], "k--", lw=0.8)
        scatter.set_xscale("log")
        scatter.set_yscale("log")
        scatter.set_xlabel("implied tau (frames)")
        scatter.set_ylabel(f"measured (to {fraction:.2g} x peak)")
        scatter.set_title(f"layer {layer}: implied vs measured", fontsize=9)
        scatter.legend(fontsize=7, loc="upper left")  # "best" searches every point
    fig.suptitle(f"{FIGURE.paper}: {cid}, {label}", fontsize=9)
    fig.tight_layout()
    return save(fig, figure_path(fig_dir, cid, FIGURE.file), FIGURE.paper)


ANALYSIS = Analysis(NAME, VERSION, CHECKPOINT, order=65, params=UnitMemoryParams, load=load, run=run,
                    figures=(FIGURE,), tables=(UNIT_MEMORY,), shares="noisy_pairs")
