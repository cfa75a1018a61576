"""Tables 1-3 from a study's trial results (run.json + epochs.parquet on disk)."""

import polars as pl

from analyses import comparisons as cp
from analyses.common import StudyRef

from analysis_helpers import make_study, png_is_drawn

RUNS = [
    {"cell": "lstm", "layers": 1, "per": 0.20, "acc": 0.50}, {"cell": "lstm", "layers": 2, "per": 0.18, "acc": 0.55},
    {"cell": "gru", "layers": 1, "per": 0.19, "acc": 0.52}, {"cell": "gru", "layers": 2, "per": 0.17, "acc": 0.57},
    {"cell": "lstm_lazy", "layers": 2, "per": 0.16, "acc": 0.58},
    {"cell": "gru", "layers": 2, "residual": True, "per": 0.15, "acc": 0.60},
]


def test_tables_in_the_papers_layout(small_corpus, tmp_path):
    make_study(tmp_path, "mixed", small_corpus, [dict(r, model=False) for r in RUNS])
    inputs = cp.load(None, StudyRef(str(tmp_path), "mixed"), cp.ComparisonParams())
    t1, t2, t3 = cp.paper_tables(inputs["results"])
    assert (t1.name, t2.name, t3.name) == ("Table 1", "Table 2", "Table 3")
    assert t1.rows == [["LSTM", "1", "20.00", "50.00"], ["LSTM", "2", "18.00", "55.00"],
                       ["GRU", "1", "19.00", "52.00"], ["GRU", "2", "17.00", "57.00"]]
    assert t2.rows == [["1", "20.00", "50.00", "-", "-"], ["2", "18.00", "55.00", "16.00", "58.00"]]
    assert t3.rows == [["GRU", "2", "17.00", "57.00", "15.00", "60.00"]]
    out = cp.run(inputs, cp.ComparisonParams(), tmp_path / "figs")
    (fig,) = out.figures
    assert fig.panels == ["test PER % by depth", "test frame accuracy % by depth"] and png_is_drawn(fig.path)
    per = out.summary.filter(pl.col("metric") == "test_per").sort("label")
    assert out.checkpoint_id == "study:mixed" and per.height == len(RUNS)
    assert dict(zip(per["label"], per["value"]))["gru_L2_H16_res_s0"] == 0.15


def test_only_the_tables_the_runs_allow(small_corpus, tmp_path):
    make_study(tmp_path, "t1", small_corpus, [dict(r, model=False) for r in RUNS[:4]])
    assert [t.name for t in cp.paper_tables(cp.load(None, StudyRef(str(tmp_path), "t1"), cp.ComparisonParams())["results"])] == ["Table 1"]
    assert cp.paper_tables(cp.load(None, StudyRef(str(tmp_path), "nothing"), cp.ComparisonParams())["results"]) == []


def test_error_by_depth_shows_means_with_intervals_and_seeds_as_points():
    import matplotlib.pyplot as plt
    import numpy as np

    base = {"hidden": 16, "residual": False, "lazy_layers": None, "precision": "fp32", "test_frame_acc": 0.5}
    pers = {(1, 0): 0.30, (1, 1): 0.32, (1, 2): 0.34, (2, 0): 0.36, (2, 1): 0.28, (2, 2): 0.26}
    df = pl.DataFrame([{**base, "run": f"lstm_L{n}_s{s}", "cell": "lstm", "layers": n, "seed": s, "test_per": p}
                       for (n, s), p in pers.items()])
    fig, ax = plt.subplots()
    cp._by_depth(ax, df, "test_per")
    (line,) = ax.lines[:1]
    np.testing.assert_allclose(line.get_ydata(), [32.0, 30.0])  # the means over seeds, not a zig-zag over seeds
    assert len(line.get_xdata()) == 2
    bars = [c for c in ax.collections if c.__class__.__name__ == "LineCollection"]
    assert bars and len(bars[0].get_segments()) == 2  # one 95 % interval per grid point
    seeds = [c for c in ax.collections if c.__class__.__name__ == "PathCollection"]
    assert sum(len(c.get_offsets()) for c in seeds) == 6  # every seed a point
    plt.close(fig)
