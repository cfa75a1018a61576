"""Claims: every verdict follows its numbers. Planted numbers give "holds", the same numbers
planted the other way "does not hold", none "not measured"; through the store as well."""

import numpy as np
import polars as pl
import pytest

from analyses import claims as cl
from analyses.common import Output, summary_frame
from cluster.summaries import SUMMARY_VERSION
from service.store import Store

CK = {"gru-2": ("gru", 2), "lstm-2": ("lstm", 2)}


def _frame(template: pl.DataFrame, rows: list[dict]) -> pl.DataFrame:
    full = [{"checkpoint_id": cid, "arch": CK[cid][0], "depth": CK[cid][1], "residual": False, **r} for cid, r in rows]
    return pl.DataFrame(full, schema=template.schema)


def planted(flip: bool) -> cl.Evidence:
    """Numbers for which every claim holds (or, flipped, none does)."""
    ev = cl.Evidence.empty()
    lstm_share = [0.4, 0.45] if flip else [0.9, 0.8]  # LSTM near 0, falling with depth
    gru_out = [0.7, 0.5] if flip else [0.5, 0.7]  # GRU near +-1, rising with depth
    gru_max = 1.3 if flip else 1.0
    ev.cells = _frame(ev.cells, [(c, {"layer": k + 1, "share_inside_2": lstm_share[k] if c == "lstm-2" else 1.0,
                                      "share_outside_0_7": gru_out[k] if c == "gru-2" else 0.3,
                                      "min_c": -0.99 if c == "gru-2" else -40.0,
                                      "max_c": gru_max if c == "gru-2" else 40.0}) for c in CK for k in range(2)])
    smooth = {"lstm-2": [0.5, 0.5] if flip else [0.2, 0.2], "gru-2": [0.3, 0.4] if flip else [0.4, 0.3]}
    ev.smoothness = _frame(ev.smoothness, [(c, {"layer": k + 1, "smoothness": smooth[c][k]}) for c in CK for k in range(2)])
    impact = {"lstm-2": [30.0, 40.0], "gru-2": [50.0, 60.0] if flip else [5.0, 6.0]}
    ev.impact = _frame(ev.impact, [(c, {"layer": k + 1, "impact_frames": impact[c][k], "censored": 0.0})
                                   for c in CK for k in range(2)])
    sign = -1 if flip else 1
    base = lambda cell, n: 0.20 - sign * 0.01 * n - (0.01 if cell == "gru" else 0)  # noqa: E731
    rows = [("lstm", n, False, base("lstm", n)) for n in (1, 2, 4, 6)] + [("gru", n, False, base("gru", n)) for n in (1, 2, 4, 6)]
    rows += [("lstm_lazy", n, False, base("lstm", n) - sign * 0.005) for n in (1, 2, 4)]
    rows += [(c, n, True, base(c, n) - sign * 0.005) for c in ("lstm", "gru") for n in (4, 6)]
    ev.results = pl.DataFrame([{"study": "s", "run": f"{c}{n}{r}", "cell": c, "layers": n, "residual": r, "test_per": p,
                                "test_frame_acc": 1 - p} for c, n, r, p in rows], schema=ev.results.schema)
    return ev


@pytest.mark.parametrize("claim", cl.CLAIMS, ids=lambda f: f.__name__)
def test_each_verdict_flips_with_its_numbers(claim):
    held, flipped, empty = claim(planted(False)), claim(planted(True)), claim(cl.Evidence.empty())
    assert held.verdict == cl.HOLDS, (held.summary, held.numbers)
    assert flipped.verdict == cl.FAILS, (flipped.summary, flipped.numbers)
    assert empty.verdict == cl.NOT_MEASURED and not empty.numbers
    assert held.numbers and flipped.numbers and held.numbers != flipped.numbers


def test_a_trend_needs_a_majority():
    ev = planted(False)
    extra = pl.DataFrame([{"checkpoint_id": "gru-2b", "arch": "gru", "depth": 2, "residual": False, "layer": k + 1,
                           "smoothness": v} for k, v in enumerate([0.3, 0.4])], schema=ev.smoothness.schema)
    ev.smoothness = pl.concat([ev.smoothness, extra])  # one GRU checkpoint for, one against: 1 of 2 is no majority
    c = cl.gru_smoother_higher(ev)
    assert (c.verdict, c.summary) == (cl.FAILS, "1 of 2 GRU checkpoints of 2+ layers")


def _layer_values(share_inside_2: float, share_outside_0_7: float, lo: float, hi: float, n: int = 1000):
    """n values of c with these shares of (-2, 2) and outside (-0.7, 0.7), and lo / hi as min / max."""
    far = int(round(n * (1 - share_inside_2)))  # |c| >= 2 (outside (-0.7, 0.7) too)
    counts = {"far": far, "mid": int(round(n * share_outside_0_7)) - far}
    counts["near"] = n - counts["far"] - counts["mid"]
    fill = {"far": 5.0, "mid": 0.9, "near": 0.1}
    band = lambda x: "far" if abs(x) >= 2 else "mid" if abs(x) >= 0.7 else "near"  # noqa: E731
    parts = []
    for b, k in counts.items():
        extremes = [x for x in (lo, hi) if band(x) == b]
        assert k >= len(extremes), (b, k, extremes)
        parts.append(np.concatenate([extremes, np.full(k - len(extremes), fill[b])]))
    return np.concatenate(parts)


def _plant_store(store: Store, flip: bool) -> None:
    """Planted captures (layer_stats made by the capture's own UnitSummary from planted cell
    values) and analysis rows (analysis_summary) in a real store."""
    from cluster.summaries import UnitSummary

    ev = planted(flip)
    for cid, (arch, depth) in CK.items():
        summary = UnitSummary(arch, 3)
        cells = ev.cells.filter(pl.col("checkpoint_id") == cid).sort("layer")
        values = {}
        for r in cells.iter_rows(named=True):
            out07 = r["share_outside_0_7"] if arch == "gru" else 1 - r["share_inside_2"]
            v = _layer_values(r["share_inside_2"], out07, r["min_c"], r["max_c"])
            values[f"L{r['layer']}.c"] = np.repeat(v[:, None], 4, axis=1).astype(np.float32)
        summary.update(values, np.ones(1000, dtype=np.int64))
        store.ingest(cid, "capture", SUMMARY_VERSION, {"layer_stats": summary.layer_stats_frame(cid)},
                              checkpoint={"arch": arch, "layers": depth, "hidden": 4, "residual": False})
        for name, df, metrics in (("temporal_trace", ev.smoothness, ["smoothness"]),
                                  ("memory_robustness", ev.impact, ["impact_frames", "censored"])):
            rows = [{"layer": r["layer"], "metric": m, "value": r[m]}
                    for r in df.filter(pl.col("checkpoint_id") == cid).iter_rows(named=True) for m in metrics]
            store.log_started(cid, name, 1)
            store.ingest_output(Output(name, 1, cid, summary_frame(rows, cid, name, 1)))


@pytest.mark.parametrize("flip", [False, True])
def test_verdicts_from_numbers_in_the_store(tmp_path, flip):
    store = Store(tmp_path / "s.duckdb")
    _plant_store(store, flip)
    claims = {c.key: c for c in cl.evaluate(cl.gather(store, list(CK)))}
    from_store = ("gru_bounded", "lstm_near_zero", "lstm_concentration_falls", "gru_pm1_rises",
                  "lstm_smoother_than_gru", "gru_smoother_higher", "gru_impact_shorter")
    for key in from_store:
        assert claims[key].verdict == (cl.FAILS if flip else cl.HOLDS), (key, claims[key].numbers)
    for key in ("lazy_lowers_error", "residual_lowers_error", "deeper_lowers_error"):  # no trial results given
        assert claims[key].verdict == cl.NOT_MEASURED
    text = cl.format_claims(list(claims.values()))
    assert "[holds]" in text if not flip else "[does not hold] GRU cells are bounded" in text


@pytest.mark.slow
def test_real_capture_gru_is_bounded(captured):
    ev = cl.gather(captured["store"], [captured["gru"], captured["lstm"]])
    c = cl.gru_bounded(ev)
    assert c.verdict == cl.HOLDS and c.numbers[0].startswith(captured["gru"])
    assert cl.lstm_near_zero(ev).verdict in (cl.HOLDS, cl.FAILS)  # measured, whichever way
