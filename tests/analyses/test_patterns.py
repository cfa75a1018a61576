"""The explorer's per-frame numbers on planted data: top frames, unit orders, select and match."""

import numpy as np
import pytest

from analyses.patterns import match_pattern, order_units, segments, select_pattern, top_frames


def test_top_frames_are_peaks_far_apart():
    v = np.zeros((100, 3), np.float32)
    v[10, 1], v[11, 1], v[50, 1], v[80, 1] = 5.0, 4.9, -6.0, 1.0
    other = np.zeros((40, 3), np.float32)
    other[7, 1] = 3.0
    got = top_frames({"a": v, "b": other}, unit=1, k=3, spacing=5)
    assert [(f.utt_id, f.frame, f.value) for f in got] == [("a", 50, -6.0), ("a", 10, 5.0), ("b", 7, 3.0)]
    assert [f.frame for f in top_frames({"a": v}, unit=1, k=2, by="high", spacing=5)] == [10, 80]
    with pytest.raises(ValueError):
        top_frames({"a": v}, 1, by="median")


def test_orders():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(200, 1))
    v = np.concatenate([base, rng.normal(size=(200, 1)) * 3, -base + 0.01 * rng.normal(size=(200, 1)),
                        np.ones((200, 1))], axis=1)
    assert order_units(v, "index").tolist() == [0, 1, 2, 3]
    assert order_units(v, "variance")[0] == 1
    assert order_units(v, "score", np.array([0.1, np.nan, 0.9, 0.5])).tolist() == [2, 3, 0, 1]
    cl = order_units(v, "cluster").tolist()
    assert sorted(cl) == [0, 1, 2, 3] and cl[-1] == 3  # the constant unit last
    assert abs(cl.index(0) - cl.index(2)) == 1  # the two (anti-)correlated units side by side
    with pytest.raises(ValueError):
        order_units(v, "score")


def test_select_then_match_finds_the_planted_pattern_everywhere():
    rng = np.random.default_rng(1)
    H, units = 12, [2, 5, 7]
    utts = {}
    for k, spans in enumerate([[(20, 30)], [(5, 12), (60, 70)], []]):
        v = rng.uniform(-1, 0.3, size=(90, H)).astype(np.float32)
        for s, e in spans:
            v[s:e, units] = 0.9
        utts[f"u{k}"] = v
    sel = select_pattern(utts["u0"], 20, 30, threshold=0.5)
    assert sel.units == units and sel.inside == [1.0] * 3 and sel.outside == [0.0] * 3
    found = match_pattern(utts, sel.units, threshold=0.5, min_share=1.0)
    assert {(m.utt_id, m.start, m.end) for m in found} == {("u0", 20, 30), ("u1", 5, 12), ("u1", 60, 70)}
    assert found[0].end - found[0].start == 10  # the longest first
    with pytest.raises(ValueError):
        select_pattern(utts["u0"], 80, 95, 0.5)


def test_segments():
    assert segments(np.array([1, 1, 2, 2, 2, 1])) == [(0, 2, 1), (2, 5, 2), (5, 6, 1)]
    assert segments(np.array([], dtype=int)) == []
