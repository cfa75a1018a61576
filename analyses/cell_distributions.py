"""Figs. 1-2: the distribution of cell values c of 50 randomly chosen units per layer (Sec. 4.1).

Reads the capture's per-unit histograms of c (``unit_histograms``; the capture summarises the
paper's 500 test utterances by default). Per layer, ``units`` units are drawn with a seeded
generator (seed and layer together, so adding a layer does not change the others' draw); each
unit's distribution is drawn as a density curve. LSTM values beyond +-10 are reset to -10 / 10
for display, as the paper does: the histogram's underflow and overflow counts go to its first
and last bin. GRU cells lie in [-1, 1], so nothing is clipped there.

Summary rows, per drawn unit: p05, median, p95 of c (clipped as displayed) and the share of
its values that were clipped; per layer (unit -1): the same over the drawn units pooled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from analyses.common import (CHECKPOINT, DEFAULT_CAPTURE_VERSION, Analysis, AnalysisError, FigureSpec, Output, Params,
                             checkpoint_info, family, figure_path, grid, require_rows, save, summary_frame)
from cluster.summaries import histogram_quantiles

NAME = "cell_distributions"
VERSION = 1
FIGURE = FigureSpec("fig01-02_cell_distributions.png", "Figs. 1-2",
                    "Cell value distributions: 50 random units per layer (LSTM clipped to +-10)")


@dataclass
class CellDistributionParams(Params):
    units: int = 50  # per layer, as the paper
    seed: int = 0
    clip: float = 10.0  # LSTM display range [-clip, clip]; must lie inside the capture's histogram
    capture_version: int = DEFAULT_CAPTURE_VERSION


def choose_units(hidden: int, n: int, seed: int, layer: int) -> np.ndarray:
    """n of the layer's units (all when it has fewer), sorted; the same for the same seed."""
    if n >= hidden:
        return np.arange(hidden)
    return np.sort(np.random.default_rng([seed, layer]).choice(hidden, size=n, replace=False))


def load(store, checkpoint_id: str, params: CellDistributionParams) -> dict:
    ck = checkpoint_info(store, checkpoint_id)
    chosen = {layer: choose_units(int(ck["hidden"]), params.units, params.seed, layer)
              for layer in range(1, int(ck["layers"]) + 1)}
    df = store.query("SELECT layer, unit, lo, hi, bins, underflow, overflow, counts FROM unit_histograms "
                     "WHERE checkpoint_id = ? AND analysis_version = ? AND quantity = 'c' ORDER BY layer, unit",
                     [checkpoint_id, params.capture_version])
    require_rows(df, store, checkpoint_id, "histograms of c (unit_histograms)", params.capture_version)
    keep = pl.concat([pl.DataFrame({"layer": np.full(len(u), layer, np.int32), "unit": u.astype(np.int32)})
                      for layer, u in chosen.items()])
    df = df.join(keep, on=["layer", "unit"], how="semi").sort("layer", "unit")
    return {"checkpoint": ck, "histograms": df}


def display_histogram(row: dict, arch: str, clip: float) -> tuple[np.ndarray, np.ndarray]:
    """(bin edges, counts) as drawn: LSTM clipped to [-clip, clip] (values beyond land in the end
    bins, the paper's "reset to -10 or 10"); GRU as captured."""
    counts = np.asarray(row["counts"], dtype=np.float64)
    edges = np.linspace(row["lo"], row["hi"], row["bins"] + 1)
    if family(arch) == "lstm":
        if clip > max(abs(row["lo"]), abs(row["hi"])) + 1e-9:
            raise AnalysisError(f"clip {clip} lies beyond the captured histogram [{row['lo']}, {row['hi']}]")
        inside = (edges[:-1] >= -clip - 1e-9) & (edges[1:] <= clip + 1e-9)
        below = counts[edges[1:] <= -clip + 1e-9].sum() + row["underflow"]
        above = counts[edges[:-1] >= clip - 1e-9].sum() + row["overflow"]
        counts, edges = counts[inside].copy(), np.concatenate([edges[:-1][inside], [edges[1:][inside][-1]]])
        counts[0] += below
        counts[-1] += above
    return edges, counts


def run(inputs: dict, params: CellDistributionParams, fig_dir) -> Output:
    ck, df = inputs["checkpoint"], inputs["histograms"]
    cid, arch = ck["checkpoint_id"], ck["arch"]
    layers = sorted(df["layer"].unique().to_list())
    fig, axes = grid(len(layers), cols=2)
    rows = []
    for ax, layer in zip(axes, layers):
        sub = df.filter(pl.col("layer") == layer)
        pooled = None
        for r in sub.iter_rows(named=True):
            edges, counts = display_histogram(r, arch, params.clip)
            total = counts.sum()
            clipped = (r["underflow"] + r["overflow"]) / max(total, 1)
            p05, p50, p95 = histogram_quantiles(counts, edges[0], edges[-1], 0, 0)
            rows += [{"layer": layer, "unit": r["unit"], "metric": m, "value": v}
                     for m, v in (("p05", p05), ("median", p50), ("p95", p95), ("share_clipped", clipped))]
            pooled = counts if pooled is None else pooled + counts
            if total:
                ax.plot(0.5 * (edges[:-1] + edges[1:]), counts / total / np.diff(edges), lw=0.7, alpha=0.45)
        p05, p50, p95 = histogram_quantiles(pooled, edges[0], edges[-1], 0, 0)
        clipped = float((sub["underflow"].sum() + sub["overflow"].sum()) / max(pooled.sum(), 1))
        rows += [{"layer": layer, "metric": m, "value": v} for m, v in
                 (("units_drawn", sub.height), ("p05", p05), ("median", p50), ("p95", p95), ("share_clipped", clipped))]
        ax.set_title(f"layer {layer}")
        ax.set_xlabel("cell value c" + (f" (clipped to +-{params.clip:g})" if family(arch) == "lstm" else ""))
        ax.set_ylabel("density")
        ax.text(0.02, 0.95, f"{sub.height} units, median {p50:+.2f}", transform=ax.transAxes, va="top", fontsize=8)
    fig.suptitle(f"{FIGURE.paper}: cell value distributions, {cid}")
    fig.tight_layout()
    figure = save(fig, figure_path(fig_dir, cid, FIGURE.file), FIGURE.paper)
    return Output(NAME, VERSION, cid, summary_frame(rows, cid, NAME, VERSION), [figure], params.to_dict())


ANALYSIS = Analysis(NAME, VERSION, CHECKPOINT, order=10, params=CellDistributionParams, load=load, run=run,
                    figures=(FIGURE,))
