"""What the analyses share: reading one version of the summary rows, the slope over layer numbers."""

import math

import pytest

from analyses.common import Output, read_summary, slope, summary_frame
from cluster.summaries import SUMMARY_VERSION
from service.store import Store


def test_read_summary_never_mixes_two_versions(tmp_path):
    store = Store(tmp_path / "s.duckdb")
    store.ingest("ck", "capture", SUMMARY_VERSION, checkpoint={"arch": "gru", "layers": 1, "hidden": 4,
                                                                "residual": False, "seed": 0})
    for version, value in ((1, 0.2), (2, 0.9)):
        store.log_started("ck", "temporal_trace", version)
        rows = [{"layer": 1, "metric": "smoothness", "value": value}]
        store.ingest_output(Output("temporal_trace", version, "ck", summary_frame(rows, "ck", "temporal_trace", version)))
    latest = read_summary(store, "temporal_trace", ["ck"])
    assert latest["analysis_version"].to_list() == [2] and latest["value"].to_list() == [0.9]
    assert read_summary(store, "temporal_trace", ["ck"], version=1)["value"].to_list() == [0.2]
    assert read_summary(store, "temporal_trace", ["ck"], version=3).height == 0


def test_slope_over_layer_numbers():
    assert slope([0.6, 0.4]) == pytest.approx(-0.2)
    assert slope([0.6, 0.4], [1, 3]) == pytest.approx(-0.1)  # layer 2 missing: the slope is over 1 and 3
    assert math.isnan(slope([0.5])) and math.isnan(slope([1.0, 2.0], [2, 2]))
    with pytest.raises(ValueError):
        slope([1.0, 2.0], [1])
