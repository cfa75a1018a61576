"""Figs. 1-2 on a real capture: the drawn units, their quantiles, the LSTM display clipping."""

import numpy as np
import polars as pl
import pytest

from analyses import cell_distributions as cd
from analyses.common import AnalysisError, read_summary

from analysis_helpers import png_is_drawn


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["lstm", "gru"])
def test_rows_and_figure_per_layer(captured, tmp_path, arch):
    store, cid = captured["store"], captured[arch]
    params = cd.CellDistributionParams(units=5, seed=3)
    out = cd.run(cd.load(store, cid, params), params, tmp_path)
    (fig,) = out.figures
    assert fig.panels == ["layer 1", "layer 2"] and png_is_drawn(fig.path)
    units = out.summary.filter((pl.col("metric") == "median") & (pl.col("unit") >= 0))
    # 5 units per layer, the seeded draw, the same draw again
    for layer in (1, 2):
        drawn = units.filter(pl.col("layer") == layer)["unit"].to_list()
        assert drawn == cd.choose_units(16, 5, 3, layer).tolist()
    assert cd.choose_units(16, 5, 3, 1).tolist() != cd.choose_units(16, 5, 4, 1).tolist()
    # each unit's median agrees with its histogram as stored (within a bin)
    hist = store.query("SELECT layer, unit, lo, hi, bins, counts FROM unit_histograms WHERE checkpoint_id = ? "
                       "AND quantity = 'c'", [cid])
    for r in units.iter_rows(named=True):
        h = hist.filter((pl.col("layer") == r["layer"]) & (pl.col("unit") == r["unit"])).row(0, named=True)
        centres = np.linspace(h["lo"], h["hi"], h["bins"] + 1)
        cum = np.cumsum(h["counts"]) / max(sum(h["counts"]), 1)
        assert abs(r["value"] - centres[np.searchsorted(cum, 0.5) + 1]) <= (h["hi"] - h["lo"]) / h["bins"] + 1e-9
    written = store.ingest_output(out)
    assert written["analysis_summary"] == out.summary.height
    assert read_summary(store, cd.NAME, [cid]).height == out.summary.height
    assert store.query("SELECT status, figure_paths FROM analyses WHERE checkpoint_id = ? AND analysis = ?",
                       [cid, cd.NAME]).row(0) == ("finished", [fig.path])


def test_lstm_values_beyond_10_are_drawn_at_the_ends():
    counts = [0] * 160
    counts[80] = 5  # [0, 1/8)
    row = {"lo": -10.0, "hi": 10.0, "bins": 160, "underflow": 3, "overflow": 7, "counts": counts}
    edges, shown = cd.display_histogram(row, "lstm", clip=10.0)
    assert shown[0] == 3 and shown[-1] == 7 and shown.sum() == 15 and edges[0] == -10 and edges[-1] == 10
    edges, shown = cd.display_histogram(row, "lstm", clip=5.0)  # a narrower display folds more into the ends
    assert edges[0] == -5 and edges[-1] == 5 and shown.sum() == 15
    with pytest.raises(AnalysisError, match="beyond the captured histogram"):
        cd.display_histogram(row, "lstm", clip=20.0)


def test_a_checkpoint_missing_from_the_store_is_named(captured):
    with pytest.raises(AnalysisError, match="no checkpoint 'lstm-9x9-nothere'"):
        cd.load(captured["store"], "lstm-9x9-nothere", cd.CellDistributionParams())
