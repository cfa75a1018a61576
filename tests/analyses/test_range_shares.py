"""Fig. 3 on a real capture: the shares equal the pooled counts of the capture."""

import polars as pl
import pytest

from analyses import range_shares as rs

from analysis_helpers import png_is_drawn


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["lstm", "gru"])
def test_shares_per_layer(captured, tmp_path, arch):
    store, cid = captured["store"], captured[arch]
    out = rs.run(rs.load(store, cid, rs.RangeShareParams()), rs.RangeShareParams(), tmp_path)
    (fig,) = out.figures
    assert len(fig.panels) == 1 and arch.upper() in fig.panels[0] and png_is_drawn(fig.path)
    units = store.query("SELECT layer, sum(n_inside_2) / sum(count) AS inside, sum(n_outside_0_7) / sum(count) AS outside "
                        "FROM unit_stats WHERE checkpoint_id = ? AND quantity = 'c' GROUP BY layer ORDER BY layer", [cid])
    s = out.summary
    for r in units.iter_rows(named=True):
        got = {m: s.filter((pl.col("layer") == r["layer"]) & (pl.col("metric") == m))["value"][0]
               for m in ("share_inside_2", "share_outside_0_7", "max_c")}
        assert got["share_inside_2"] == pytest.approx(r["inside"]) and got["share_outside_0_7"] == pytest.approx(r["outside"])
        if arch == "gru":  # Eq. 1 keeps the GRU cell in [-1, 1]
            assert got["max_c"] <= 1.0
    assert sorted(set(s["layer"])) == [1, 2]
