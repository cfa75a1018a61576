"""Claims: every verdict follows its numbers. Numbers planted for a claim give "holds", the same
numbers planted the other way "contradicted", numbers that disagree between seeds "undecided",
none "not measured"; through the store as well. The bootstrap's coverage is checked by simulation."""

import json
import zlib

import numpy as np
import polars as pl
import pytest

from analyses import claims as cl
from analyses.common import Output, summary_frame
from analyses.stats import bootstrap_contrast
from cluster.summaries import SUMMARY_VERSION
from service.store import Store

SEEDS = (0, 1, 2)
CK = {f"{arch}-2-s{s}": (arch, 2, s) for arch in ("gru", "lstm") for s in SEEDS}
MODES = ("holds", "contradicted", "undecided")


def _frame(template: pl.DataFrame, rows: list[dict]) -> pl.DataFrame:
    full = [{"checkpoint_id": cid, "arch": CK[cid][0], "depth": CK[cid][1], "residual": False, "seed": CK[cid][2], **r}
            for cid, r in rows]
    return pl.DataFrame(full, schema=template.schema)


def _flip(mode: str, seed: int) -> bool:
    """Whether this seed's numbers go against the paper: never, always, or for one seed of three
    (a mean of the right sign whose interval over seeds includes zero)."""
    return mode == "contradicted" or (mode == "undecided" and seed == 1)


def planted(mode: str, utterances: int = 400) -> cl.Evidence:
    """Numbers for which every claim holds, is contradicted, or is undecided."""
    ev = cl.Evidence.empty()
    cells, smooth, impact = [], [], []
    for cid, (arch, _, seed) in CK.items():
        flip = _flip(mode, seed)
        for k in range(2):
            lstm_share = ([0.3, 0.45] if flip else [0.9, 0.8])[k]  # LSTM near 0, falling with depth
            gru_out = ([0.7, 0.5] if flip else [0.5, 0.7])[k]  # GRU near +-1, rising with depth
            cells.append((cid, {"layer": k + 1, "share_inside_2": lstm_share if arch == "lstm" else 1.0,
                                "share_outside_0_7": gru_out if arch == "gru" else 0.3,
                                "min_c": -0.99 if arch == "gru" else -40.0,
                                "max_c": (1.3 if mode == "contradicted" else 1.0) if arch == "gru" else 40.0}))
            sm = {"lstm": [0.5, 0.5] if flip else [0.2, 0.2], "gru": [0.3, 0.4] if flip else [0.4, 0.3]}[arch][k]
            smooth.append((cid, {"layer": k + 1, "smoothness": sm}))
            im = {"lstm": [30.0, 40.0], "gru": [50.0, 60.0] if flip else [5.0, 6.0]}[arch][k]
            impact.append((cid, {"layer": k + 1, "impact_frames": im, "censored": 0.0}))
    ev.cells, ev.smoothness, ev.impact = (_frame(t, r) for t, r in ((ev.cells, cells), (ev.smoothness, smooth),
                                                                     (ev.impact, impact)))
    memory = []  # per-unit memory, medians over units: GRU and lazy LSTM shorter than LSTM (or longer)
    for arch in ("lstm", "gru", "lstm_lazy"):
        for seed in SEEDS:
            flip = _flip(mode, seed)
            frames = {"lstm": 20.0, "gru": 30.0 if flip else 8.0, "lstm_lazy": 30.0 if flip else 12.0}[arch]
            memory += [{"checkpoint_id": f"{arch}-2-s{seed}", "arch": arch, "depth": 2, "residual": False, "seed": seed,
                        "layer": k + 1, "implied_tau_median": frames, "measured_frames_median": frames + k}
                       for k in range(2)]
    ev.memory = pl.DataFrame(memory, schema=ev.memory.schema)
    ev.ablation = pl.DataFrame([{"checkpoint_id": cid, "arch": arch, "depth": 2, "residual": False, "seed": seed,
                                 "layer": 0, "acc_drop_excess": -0.2 if _flip(mode, seed) else 0.1}
                                for cid, (arch, _, seed) in CK.items()], schema=ev.ablation.schema)

    # error rates: deeper, lazy and residual each 3 points better (or worse), or no different at all
    sign = {"holds": 1, "contradicted": -1, "undecided": 0}[mode]
    rate = lambda cell, n, res: 0.30 - sign * (0.03 * n + 0.03 * (cell == "lstm_lazy") + 0.03 * res)  # noqa: E731
    points = [(c, n, False) for c in ("lstm", "gru") for n in (1, 2, 4, 6)] + [("lstm_lazy", n, False) for n in (1, 2, 4)]
    points += [(c, n, True) for c in ("lstm", "gru") for n in (4, 6)]
    results, utts = [], []
    ref = np.full(utterances, 20)
    for c, n, r in points:
        for s in SEEDS:
            run = f"{c}_L{n}{'_res' if r else ''}_s{s}"
            rng = np.random.default_rng(zlib.crc32(f"{mode}{run}".encode()))
            errors = rng.binomial(ref, rate(c, n, r))
            results.append({"study": "s", "run": run, "cell": c, "layers": n, "residual": r, "seed": s, "corpus": "x",
                            "test_per": errors.sum() / ref.sum(), "test_frame_acc": 0.5})
            utts += [{"study": "s", "run": run, "utt_id": f"u{u:04d}", "ref_len": 20, "errors": int(e)}
                     for u, e in enumerate(errors)]
    ev.results = pl.DataFrame(results, schema=ev.results.schema)
    ev.utterances = pl.DataFrame(utts, schema=ev.utterances.schema)
    return ev


EXPECTED = {"holds": cl.HOLDS, "contradicted": cl.CONTRADICTED, "undecided": cl.UNDECIDED}


@pytest.mark.parametrize("claim", cl.CLAIMS, ids=lambda f: f.__name__)
def test_each_verdict_follows_its_numbers(claim):
    got = {mode: claim(planted(mode)) for mode in MODES}
    for mode, c in got.items():
        if claim is cl.gru_bounded and mode == "undecided":  # a census of a bound: never undecided
            assert c.verdict == cl.HOLDS
            continue
        assert c.verdict == EXPECTED[mode], (mode, c.effect, c.ci_low, c.ci_high, c.note, c.numbers)
        assert c.numbers and c.test and c.n_seeds == 3
        d = json.loads(cl.to_json([c]))[0]
        assert {"key", "statement", "verdict", "effect", "ci_low", "ci_high", "n_seeds", "n_utterances", "test"} <= set(d)
        assert d["verdict"] == c.verdict and d["effect"] == pytest.approx(c.effect)
    if claim.__name__.endswith("_error"):  # the bootstrap over utterances and seeds
        assert got["holds"].n_utterances == 400 and got["holds"].p_direction > 0.99
        assert "paired bootstrap over 400 test utterances and 3 seeds" in got["holds"].test
    empty = claim(cl.Evidence.empty())
    assert empty.verdict == cl.NOT_MEASURED and not empty.numbers and empty.effect is None


def test_fewer_than_three_seeds_is_undecided_and_says_so():
    ev = planted("holds")
    for name in ("cells", "smoothness", "impact"):
        setattr(ev, name, getattr(ev, name).filter(pl.col("seed") < 2))
    c = cl.gru_smoother_higher(ev)
    assert c.verdict == cl.UNDECIDED and c.n_seeds == 2 and c.ci_low is None
    assert "2 seeds: an interval over seeds needs at least 3" in c.note
    assert c.effect < 0  # the effect is still printed, in the paper's direction
    ev.results = ev.results.filter(pl.col("seed") < 2)  # error claims: the bootstrap over utterances still decides
    assert cl.lazy_lowers_error(ev).verdict == cl.HOLDS and cl.lazy_lowers_error(ev).n_seeds == 2


def test_error_claims_need_the_same_test_set():
    ev = planted("holds")
    ev.results = ev.results.with_columns(pl.when(pl.col("cell") == "lstm_lazy").then(pl.lit("y"))
                                         .otherwise(pl.col("corpus")).alias("corpus"))
    c = cl.lazy_lowers_error(ev)
    assert c.verdict == cl.NOT_MEASURED and "different corpora" in c.note


def _simulate(rng, delta: float, seeds: int = 3, utterances: int = 300, seed_sd: float = 0.003):
    """Errors of two systems (per-utterance difficulty shared, per-seed offsets) whose true
    difference of error rates is ``delta``."""
    ref = rng.integers(10, 40, utterances)
    difficulty = rng.normal(0, 0.05, utterances)
    errors = [[rng.binomial(ref, np.clip(p + difficulty + rng.normal(0, seed_sd), 0, 1)) for _ in range(seeds)]
              for p in (0.15, 0.15 + delta)]
    return np.asarray(errors), ref


def test_bootstrap_covers_a_planted_difference():
    rng = np.random.default_rng(2026)
    covered = sum(c.ci_low <= 0.01 <= c.ci_high for c in
                  (bootstrap_contrast(*_simulate(rng, 0.01), [-1, 1], n_resamples=1000, seed=i) for i in range(100)))
    assert covered >= 90
    large = [bootstrap_contrast(*_simulate(rng, 0.05), [-1, 1], n_resamples=1000, seed=i) for i in range(20)]
    assert all(c.ci_low > 0 and c.p_negative < 0.01 for c in large)
    none = bootstrap_contrast(*_simulate(rng, 0.0, seeds=1), [-1, 1], seed=0)
    assert none.n_seeds == 1 and "and" not in none.test and none.ci_low < 0 < none.ci_high


def test_bootstrap_effect_is_the_contrast_of_the_error_rates():
    errors = np.array([[[1, 2, 3], [2, 2, 2]], [[0, 1, 1], [1, 1, 0]]])  # 2 systems x 2 seeds x 3 utterances
    ref = np.array([10, 10, 20])
    c = bootstrap_contrast(errors, ref, [-1, 1])
    per = errors.sum(axis=(1, 2)) / (2 * ref.sum())
    assert c.effect == pytest.approx(per[1] - per[0]) and c.ci_low <= c.effect <= c.ci_high
    with pytest.raises(ValueError):
        bootstrap_contrast(errors, ref[:2], [-1, 1])


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


def _plant_store(store: Store, mode: str) -> None:
    """Planted captures (layer_stats made by the capture's own UnitSummary from planted cell
    values) and analysis rows (analysis_summary) in a real store."""
    from cluster.summaries import UnitSummary

    ev = planted(mode)
    for cid, (arch, depth, seed) in CK.items():
        summary = UnitSummary(arch, 3)
        cells = ev.cells.filter(pl.col("checkpoint_id") == cid).sort("layer")
        values = {}
        for r in cells.iter_rows(named=True):
            out07 = r["share_outside_0_7"] if arch == "gru" else 1 - r["share_inside_2"]
            v = _layer_values(r["share_inside_2"], out07, r["min_c"], r["max_c"])
            values[f"L{r['layer']}.c"] = np.repeat(v[:, None], 4, axis=1).astype(np.float32)
        summary.update(values, np.ones(1000, dtype=np.int64))
        store.ingest(cid, "capture", SUMMARY_VERSION, {"layer_stats": summary.layer_stats_frame(cid)},
                              checkpoint={"arch": arch, "layers": depth, "hidden": 4, "residual": False, "seed": seed})
        for name, df, metrics in (("temporal_trace", ev.smoothness, ["smoothness"]),
                                  ("memory_robustness", ev.impact, ["impact_frames", "censored"])):
            rows = [{"layer": r["layer"], "metric": m, "value": r[m]}
                    for r in df.filter(pl.col("checkpoint_id") == cid).iter_rows(named=True) for m in metrics]
            store.log_started(cid, name, 1)
            store.ingest_output(Output(name, 1, cid, summary_frame(rows, cid, name, 1)))


@pytest.mark.parametrize("mode", MODES)
def test_verdicts_from_numbers_in_the_store(tmp_path, mode):
    store = Store(tmp_path / "s.duckdb")
    _plant_store(store, mode)
    claims = {c.key: c for c in cl.evaluate(cl.gather(store, list(CK)))}
    from_store = ("gru_bounded", "lstm_near_zero", "lstm_concentration_falls", "gru_pm1_rises",
                  "lstm_smoother_than_gru", "gru_smoother_higher", "gru_impact_shorter")
    for key in from_store:
        want = cl.HOLDS if key == "gru_bounded" and mode == "undecided" else EXPECTED[mode]
        assert claims[key].verdict == want, (key, claims[key].numbers)
        assert claims[key].n_seeds == 3
    for key in ("lazy_lowers_error", "residual_lowers_error", "deeper_lowers_error"):  # no trial results given
        assert claims[key].verdict == cl.NOT_MEASURED
    text = cl.format_claims(list(claims.values()))
    assert f"[{EXPECTED[mode]}] LSTM cell values concentrate near 0" in text
    assert "effect: smallest share of c in (-2, 2)" in text and "Student's t over 3 seeds" in text


@pytest.mark.slow
def test_real_capture_gru_is_bounded(captured):
    ev = cl.gather(captured["store"], [captured["gru"], captured["lstm"]])
    c = cl.gru_bounded(ev)
    assert c.verdict == cl.HOLDS and c.numbers[0].startswith(captured["gru"])
    assert cl.lstm_near_zero(ev).verdict in (cl.HOLDS, cl.CONTRADICTED, cl.UNDECIDED)  # measured
