"""Fig. 3: per layer, the share of LSTM cell values in (-2, 2) and of GRU cell values outside
(-0.7, 0.7) (Sec. 4.1).

Reads the capture's per-layer pooled counts (``layer_stats``: n_inside_2, n_outside_0_7 over
count). Both shares are kept for every architecture; the figure draws the architecture's own
measure (LSTM family: inside (-2, 2); GRU: outside (-0.7, 0.7)) in colour and the other in grey.
The layer's min and max of c are kept as well: the claim "GRU cells are bounded in (-1, 1)"
reads them.

Summary rows, per layer: share_inside_2, share_outside_0_7, min_c, max_c, values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analyses.common import (CHECKPOINT, DEFAULT_CAPTURE_VERSION, Analysis, FigureSpec, Output, Params, checkpoint_info,
                             family, figure_path, grid, require_rows, save, summary_frame)

NAME = "range_shares"
VERSION = 1
FIGURE = FigureSpec("fig03_range_shares.png", "Fig. 3", "Range shares: LSTM c in (-2, 2), GRU c outside (-0.7, 0.7)")
MEASURE = {"lstm": ("share_inside_2", "share of c in (-2, 2)"),
           "gru": ("share_outside_0_7", "share of c outside (-0.7, 0.7)")}


@dataclass
class RangeShareParams(Params):
    capture_version: int = DEFAULT_CAPTURE_VERSION


def load(store, checkpoint_id: str, params: RangeShareParams) -> dict:
    ck = checkpoint_info(store, checkpoint_id)
    df = store.query("SELECT layer, count, n_nan, n_inside_2, n_outside_0_7, min, max FROM layer_stats "
                     "WHERE checkpoint_id = ? AND analysis_version = ? AND quantity = 'c' ORDER BY layer",
                     [checkpoint_id, params.capture_version])
    require_rows(df, store, checkpoint_id, "pooled statistics of c (layer_stats)", params.capture_version)
    return {"checkpoint": ck, "layers": df}


def run(inputs: dict, params: RangeShareParams, fig_dir) -> Output:
    ck, df = inputs["checkpoint"], inputs["layers"]
    cid, fam = ck["checkpoint_id"], family(ck["arch"])
    rows, shares = [], {"share_inside_2": [], "share_outside_0_7": []}
    for r in df.iter_rows(named=True):
        n = max(int(r["count"]), 1)
        inside, outside = r["n_inside_2"] / n, r["n_outside_0_7"] / n
        shares["share_inside_2"].append(inside)
        shares["share_outside_0_7"].append(outside)
        rows += [{"layer": r["layer"], "metric": m, "value": v} for m, v in
                 (("share_inside_2", inside), ("share_outside_0_7", outside), ("min_c", r["min"]),
                  ("max_c", r["max"]), ("values", r["count"]))]
    own, own_label = MEASURE[fam]
    other, other_label = MEASURE["gru" if fam == "lstm" else "lstm"]
    layers = df["layer"].to_numpy()
    fig, (ax,) = grid(1, size=(1.6 + 1.1 * len(layers), 3.6))
    w = 0.38
    bars = ax.bar(layers - w / 2, np.array(shares[own]) * 100, w, label=own_label, color="tab:blue" if fam == "lstm" else "tab:orange")
    ax.bar(layers + w / 2, np.array(shares[other]) * 100, w, label=other_label, color="0.8")
    for b, v in zip(bars, shares[own]):
        ax.text(b.get_x() + b.get_width() / 2, b.get_height() + 1, f"{100 * v:.0f}%", ha="center", fontsize=8)
    ax.set_xticks(layers)
    ax.set_xlabel("layer")
    ax.set_ylabel("% of cell values")
    ax.set_ylim(0, 110)
    ax.set_title(f"{ck['arch'].upper()}: {own_label}")
    ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{FIGURE.paper}: range shares, {cid}", fontsize=9)
    fig.tight_layout()
    figure = save(fig, figure_path(fig_dir, cid, FIGURE.file), FIGURE.paper)
    return Output(NAME, VERSION, cid, summary_frame(rows, cid, NAME, VERSION), [figure], params.to_dict())


ANALYSIS = Analysis(NAME, VERSION, CHECKPOINT, order=20, params=RangeShareParams, load=load, run=run, figures=(FIGURE,))
