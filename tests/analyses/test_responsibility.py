"""Figs. 4-6: counts on a real capture; the single-phone finder recovers a planted unit."""

import numpy as np
import polars as pl
import pytest

from analyses import responsibility as rp
from analyses.common import AnalysisError
from cluster.summaries import SUMMARY_VERSION
from service.store import Store

from analysis_helpers import png_is_drawn


@pytest.mark.slow
def test_counts_per_phone_and_layer(captured, tmp_path):
    store, cid = captured["store"], captured["gru"]
    params = rp.ResponsibilityParams()
    inputs = rp.load(store, cid, params)
    assert inputs["rule"] == "abs<0.5"  # the paper's GRU rule, captured by default
    out = rp.run(inputs, params, tmp_path)
    counts, singles = out.figures
    assert counts.panels == ["layer 1", "layer 2"] and png_is_drawn(counts.path) and png_is_drawn(singles.path)
    resp = inputs["responsibility"]
    n = out.summary.filter(pl.col("metric") == "responsible_units")
    assert n.height == resp.select("layer", "phone_id").n_unique()
    for r in n.sample(10, seed=0).iter_rows(named=True):  # each count = units above 50% on that phone
        sub = resp.filter((pl.col("layer") == r["layer"]) & (pl.col("phone_id") == r["phone_id"]))
        assert r["value"] == (sub["responsibility"] > 0.5).sum()


@pytest.mark.slow
def test_rules_the_capture_lacks_are_named(captured):
    with pytest.raises(AnalysisError, match=r"captured with the rules \['abs<0.5'\], not 'abs>10'"):
        rp.load(captured["store"], captured["gru"], rp.ResponsibilityParams(rule="abs>10"))
    lstm = rp.load(captured["store"], captured["lstm"], rp.ResponsibilityParams(rule="pct>95"))
    assert lstm["rule"] == "pct>95" and lstm["responsibility"].height


def planted(seed=0, layers=2, units=12, phones=("SIL", "AA", "B", "D", "EH", "IY")):
    """Responsibility rows with unit 7 of layer 2 irregular on 90% of AA frames and <= 10% of
    every other phone's; other units irregular at random rates up to 60% on every phone."""
    rng = np.random.default_rng(seed)
    rows = []
    for layer in range(1, layers + 1):
        for u in range(units):
            for p, sym in enumerate(phones, start=1):
                frames = 200
                rate = rng.uniform(0.2, 0.6)
                if (layer, u) == (2, 7):
                    rate = 0.9 if sym == "AA" else rng.uniform(0, 0.1)
                irr = int(round(rate * frames))
                rows.append({"rule": "abs<0.5", "quantity": "c", "threshold": 0.5, "layer": layer, "unit": u,
                             "phone_id": p, "phone": sym, "frames": frames, "irregular": irr,
                             "responsibility": irr / frames})
    return pl.DataFrame(rows).with_columns(pl.col("layer", "unit", "phone_id").cast(pl.Int32))


def test_single_phone_finder_recovers_the_planted_unit():
    found = rp.single_phone_units(planted(), min_frames=20, single_min=0.5, single_ratio=3.0)
    assert found.select("layer", "unit", "phone").rows() == [(2, 7, "AA")]
    assert found["r1"][0] == pytest.approx(0.9)
    # without the planted unit nobody answers one phone far more than the others
    assert rp.single_phone_units(planted().filter(~((pl.col("layer") == 2) & (pl.col("unit") == 7))), 20, 0.5, 3.0).is_empty()


def test_planted_unit_through_the_store(tmp_path):
    """The whole path: rows in DuckDB, read with SQL, found, drawn, written back."""
    store = Store(tmp_path / "s.duckdb")
    df = planted().select(pl.lit("gru-2x12-planted").alias("checkpoint_id"),
                          pl.lit(SUMMARY_VERSION, dtype=pl.Int32).alias("analysis_version"), pl.all())
    store.ingest("gru-2x12-planted", "capture", SUMMARY_VERSION, {"phone_responsibility": df},
                          checkpoint={"arch": "gru", "layers": 2, "hidden": 12, "residual": False})
    params = rp.ResponsibilityParams(top=2)
    out = rp.run(rp.load(store, "gru-2x12-planted", params), params, tmp_path)
    single = out.summary.filter(pl.col("metric") == "single_phone_responsibility")
    assert single.select("layer", "unit", "phone_id").rows() == [(2, 7, 2)]
    assert out.figures[1].panels == ["layer 2 unit 7: AA"] and png_is_drawn(out.figures[1].path)
