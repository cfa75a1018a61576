"""Claims: every verdict follows its numbers. Numbers planted for a claim (with a planted seed
spread) give "holds", the same numbers the other way "contradicted", no difference "no effect",
seeds that disagree "undecided", none "not measured"; through a real store as well. The family
correction, the minimum seed count, NaN seeds and zero-width intervals, and the grouping of runs
and checkpoints are each checked."""

import json
import math
import re
import zlib
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from analyses import claims as cl
from analyses.common import Output, summary_frame
from cluster.summaries import SUMMARY_VERSION
from service.store import Store

SEEDS = (0, 1, 2)
ARCHS = ("gru", "lstm", "lstm_lazy")
CK = {f"{arch}-2-s{s}": (arch, 2, s) for arch in ARCHS for s in SEEDS}
MODES = ("holds", "contradicted", "no effect", "undecided")
EXPECTED = {"holds": cl.HOLDS, "contradicted": cl.CONTRADICTED, "no effect": cl.NO_EFFECT, "undecided": cl.UNDECIDED}


def _sign(mode: str, seed: int) -> float:
    """The planted effect's sign for this seed: the paper's, the other, none, or the paper's but
    for one seed of three (a mean of the right sign whose interval includes zero)."""
    return {"holds": 1.0, "contradicted": -1.0, "no effect": 0.0}.get(mode, -1.0 if seed == 1 else 1.0)


def _jitter(seed: int) -> float:
    """A planted seed-to-seed spread, small against every margin (zero spread decides nothing)."""
    return 0.003 * (seed - 1)


def _rows(arch: str, seed: int, **values) -> list[dict]:
    return [{"checkpoint_id": f"{arch}-2-s{seed}", "arch": arch, "depth": 2, "hidden": 8, "residual": False,
             "seed": seed, "layer": k + 1, **{name: v[k] for name, v in values.items()}} for k in range(2)]


def planted(mode: str, utterances: int = 400) -> cl.Evidence:
    """Numbers for which every claim holds, is contradicted, has no effect, or is undecided."""
    ev = cl.Evidence.empty()
    cells, smooth, impact, memory, ablation = [], [], [], [], []
    for seed in SEEDS:
        s, e = _sign(mode, seed), _jitter(seed)
        lstm_share = [0.7, 0.7 - (0.1 * s + e)]  # falling with depth (slope -0.1 s - e)
        excess = 0.2 * s + e  # above the normal reference
        gru_out = [0.5, 0.5 + 0.1 * s + e]
        bands = {}
        for a in cl.LSTM_BANDS:
            bands[cl._band_key("share_inside", a)] = lstm_share
            bands[cl._band_key("normal_inside", a)] = [x - excess for x in lstm_share]
        cells += _rows("lstm", seed, **bands, **{cl._band_key("share_outside", b): [0.3, 0.3] for b in cl.GRU_BANDS},
                       min_c=[-40.0, -40.0], max_c=[40.0, 40.0])
        cells += _rows("gru", seed, **{cl._band_key("share_inside", a): [1.0, 1.0] for a in cl.LSTM_BANDS},
                       **{cl._band_key("normal_inside", a): [1.0, 1.0] for a in cl.LSTM_BANDS},
                       **{cl._band_key("share_outside", b): gru_out for b in cl.GRU_BANDS},
                       min_c=[-0.99, -0.99], max_c=[1.3 if mode == "contradicted" else 1.0] * 2)
        gru_sm = [0.5, 0.5 - (0.1 * s + e)]
        smooth += _rows("gru", seed, smoothness=gru_sm)
        smooth += _rows("lstm", seed, smoothness=[np.mean(gru_sm) - 0.2 * s + e] * 2)
        impact_cols = ["impact_frames"] + [cl._impact(f) for f in cl.IMPACT_FRACTIONS]
        impact += _rows("lstm", seed, **{c: [30.0, 30.0] for c in impact_cols})
        impact += _rows("gru", seed, **{c: [30.0 - 20 * s + 100 * e] * 2 for c in impact_cols})
        memory += _rows("lstm", seed, implied_tau_median=[20.0, 20.0], measured_frames_median=[20.0, 21.0])
        memory += _rows("gru", seed, implied_tau_median=[8.0, 8.0], measured_frames_median=[20 - 10 * s + 100 * e,
                                                                                             21 - 10 * s + 100 * e])
        memory += _rows("lstm_lazy", seed, implied_tau_median=[8.0, 8.0],
                        measured_frames_median=[20 - 8 * s + 100 * e, 21 - 8 * s + 100 * e])
        for arch in ARCHS:
            ablation.append({"checkpoint_id": f"{arch}-2-s{seed}", "arch": arch, "depth": 2, "hidden": 8,
                             "residual": False, "seed": seed, "layer": 0, "specificity_excess": 0.1 * s + e,
                             "acc_drop_excess": 0.1 * s + e})
    ev.cells, ev.smoothness, ev.impact, ev.memory, ev.ablation = (
        pl.DataFrame(rows, schema=t.schema) for rows, t in ((cells, ev.cells), (smooth, ev.smoothness),
                                                             (impact, ev.impact), (memory, ev.memory),
                                                             (ablation, ev.ablation)))
    ev.results, ev.utterances = planted_errors(mode, utterances)
    return ev


def planted_errors(mode: str, utterances: int = 400, seeds=SEEDS, study: str = "s"):
    """Test errors per utterance: deeper, lazy and residual each 3 points better (or worse, or no
    different). Within a seed every system shares the utterances' errors (a paired design), plus
    a rare +-1 per utterance and system: the per-seed contrasts differ by a few hundredths of a point."""
    points = [(c, n, False) for c in ("lstm", "gru") for n in (1, 2, 4, 6)] + [("lstm_lazy", n, False) for n in (1, 2, 4)]
    points += [(c, n, True) for c in ("lstm", "gru") for n in (4, 6)]
    ref = np.full(utterances, 20)
    results, utts = [], []
    for s in seeds:
        base = np.random.default_rng(zlib.crc32(f"{mode}{study}{s}".encode())).binomial(ref, 0.5)
        sign = _sign(mode, s)
        for c, n, r in points:
            run = f"{c}_L{n}{'_res' if r else ''}_s{s}"
            rng = np.random.default_rng(zlib.crc32(f"{mode}{study}{run}".encode()))
            shift = -sign * (0.03 * n + 0.03 * (c == "lstm_lazy") + 0.03 * r) * 20  # errors per utterance
            errors = np.clip(base + np.round(shift).astype(int) + rng.choice([-1, 0, 1], utterances, p=[.01, .98, .01]),
                             0, ref)
            results.append({"study": study, "run": run, "cell": c, "layers": n, "hidden": 16, "residual": r,
                            "lazy_layers": "last" if c == "lstm_lazy" else None, "precision": "fp32", "seed": s,
                            "corpus": "x", "test_per": errors.sum() / ref.sum(), "test_frame_acc": 0.5})
            utts += [{"study": study, "run": run, "utt_id": f"u{u:04d}", "ref_len": 20, "errors": int(x)}
                     for u, x in enumerate(errors)]
    return pl.DataFrame(results, schema=cl.RESULTS), pl.DataFrame(utts, schema=cl.UTTERANCES)


@pytest.mark.parametrize("claim", cl.CLAIMS, ids=lambda f: f.__name__)
def test_each_verdict_follows_its_numbers(claim):
    got = {mode: claim(planted(mode)) for mode in MODES}
    for mode, c in got.items():
        if claim is cl.gru_bounded:  # a sanity check: a census of a bound, holds unless a value exceeds it
            assert c.kind == cl.SANITY and c.verdict == (cl.CONTRADICTED if mode == "contradicted" else cl.HOLDS)
            continue
        assert c.verdict == EXPECTED[mode], (mode, c.effect, c.ci_low, c.ci_high, c.p_value, c.note, c.numbers)
        assert c.numbers and c.test and c.n_seeds == 3 and c.kind == cl.FINDING
        assert (c.paper_quote is None) != (c.ours is None) and c.margin > 0 and c.margin_reason
        d = json.loads(cl.to_json([c]))[0]
        assert {"p_value", "p_holm", "margin", "paper_quote", "ours", "sensitivity"} <= set(d)
        assert d["verdict"] == c.verdict and d["effect"] == pytest.approx(c.effect)
        if mode == "holds":
            assert c.p_value < 0.025 and c.p_holm == pytest.approx(c.p_value)  # a family of one
        if mode in ("holds", "contradicted"):
            assert not c.ci_low <= 0 <= c.ci_high
        if mode == "no effect":
            assert -c.margin < c.ci_low and c.ci_high < c.margin
    if claim.__name__.endswith("_error"):
        assert got["holds"].n_utterances == 400 and "Student's t over 3 seeds of 1 group" in got["holds"].test
    empty = claim(cl.Evidence.empty())
    assert empty.verdict == cl.NOT_MEASURED and not empty.numbers and empty.effect is None


def test_the_claims_that_are_ours_say_so():
    ours = {c.key for c in cl.evaluate(planted("holds")) if c.ours}
    assert ours == {"gru_memory_shorter", "lazy_memory_shorter", "responsible_units_needed"}


def _words(text: str) -> str:
    return re.sub(r"\s+([.,;:])", r"\1", " ".join(text.replace("$", "").split()))


def test_every_quote_is_the_papers_sentence():
    text = Path(__file__).resolve().parents[3] / "shared" / "paper" / "visualization-analysis-for-recurrent-networks.md"
    if not text.is_file():
        pytest.skip(f"{text}: the paper is not beside the checkout")
    paper = _words(text.read_text())
    quoted = 0
    for c in cl.evaluate(planted("holds")):
        if c.paper_quote and not c.paper_quote.startswith("Table 1"):
            for part in c.paper_quote.split(" [...] "):
                assert _words(part) in paper, (c.key, part)
                quoted += 1
    assert quoted >= 10


def test_the_family_is_holm_adjusted():
    claims = cl.evaluate(planted("holds"))
    findings = [c for c in claims if c.kind == cl.FINDING]
    assert len(findings) == 12 and all(c.verdict == cl.HOLDS for c in findings)
    p = np.array([c.p_value for c in findings])
    order = np.argsort(p)
    assert findings[order[0]].p_holm == pytest.approx(min(1.0, 12 * p[order[0]]))
    assert all(c.p_holm >= c.p_value for c in findings)
    # a finding that passes on its own (p < 0.025) fails at the family's level
    weak = cl.lstm_smoother_than_gru(planted("holds"))
    weak.p_value = 0.02
    alone = cl.decide_family([weak])[0].verdict
    others = [cl.lazy_lowers_error(planted("undecided")) for _ in range(3)]  # p-values well above 0.02
    together = cl.decide_family([weak, *others])[0]
    assert alone == cl.HOLDS and together.verdict == cl.UNDECIDED and together.p_holm == pytest.approx(0.08)
    strong = [cl.lazy_lowers_error(planted("holds")) for _ in range(3)]  # Holm steps down past strong ones
    assert cl.decide_family([weak, *strong])[0].verdict == cl.HOLDS
    text = cl.format_claims(claims)
    assert "== Sanity checks" in text and text.index("== Findings") < text.index("== Sanity checks")
    assert "Holm" in text and "paper: \"" in text and "ours: " in text


def test_every_claim_needs_three_seeds():
    ev = planted("holds")
    for name in ("cells", "smoothness", "impact", "memory", "ablation"):
        setattr(ev, name, getattr(ev, name).filter(pl.col("seed") < 2))
    ev.results = ev.results.filter(pl.col("seed") < 2)
    for c in cl.evaluate(ev):
        if c.kind == cl.SANITY:
            continue
        assert c.verdict == cl.UNDECIDED and c.n_seeds == 2 and c.ci_low is None, (c.key, c.verdict)
        assert "needs at least 3" in c.note
        assert c.effect * c.direction > 0  # the effect is still printed, in the expected direction


def test_nan_seeds_are_not_seeds_and_zero_spread_decides_nothing():
    ev = planted("holds")
    ev.smoothness = ev.smoothness.with_columns(
        pl.when(pl.col("seed") == 1).then(float("nan")).otherwise(pl.col("smoothness")).alias("smoothness"))
    c = cl.gru_smoother_higher(ev)
    assert c.n_seeds == 2 and c.verdict == cl.UNDECIDED and "needs at least 3" in c.note
    same = planted("holds")
    same.ablation = same.ablation.with_columns(pl.lit(0.1).alias("specificity_excess"))
    c = cl.responsible_units_needed(same)
    assert c.effect == pytest.approx(0.1) and c.verdict == cl.UNDECIDED and "zero spread" in c.note
    assert c.ci_low is None and c.p_value is None


def test_unstamped_checkpoints_are_left_out_not_one_replicate():
    ev = planted("holds")
    ev.smoothness = ev.smoothness.with_columns(pl.lit(None, pl.Int64).alias("seed"))  # every checkpoint unstamped
    c = cl.lstm_smoother_than_gru(ev)
    assert c.verdict == cl.NOT_MEASURED and c.n_seeds == 0 and "6 checkpoint(s) without a seed stamp" in c.note


def test_depth_slope_uses_layer_numbers():
    ev = planted("holds")
    # a 3-layer GRU whose layer 2 has no smoothness: the slope is over layers 1 and 3, not positions 1, 2
    rows = []
    for seed in SEEDS:
        for layer, v in ((1, 0.6), (3, 0.4 + _jitter(seed))):
            rows.append({"checkpoint_id": f"gru-3-s{seed}", "arch": "gru", "depth": 3, "hidden": 8, "residual": False,
                         "seed": seed, "layer": layer, "smoothness": v})
    ev.smoothness = pl.DataFrame(rows, schema=ev.smoothness.schema)
    c = cl.gru_smoother_higher(ev)
    assert c.effect == pytest.approx(-0.1, abs=0.01)  # (0.4 - 0.6) / 2, not / 1


def test_grid_points_differing_in_width_are_not_one_system():
    results, utts = planted_errors("holds")
    wide_r, wide_u = planted_errors("contradicted")
    wide_r = wide_r.with_columns(pl.lit(64, pl.Int64).alias("hidden"), (pl.col("run") + "_H64").alias("run"))
    wide_u = wide_u.with_columns((pl.col("run") + "_H64").alias("run"))
    ev = cl.Evidence.empty()
    ev.results, ev.utterances = pl.concat([results, wide_r]), pl.concat([utts, wide_u])
    c = cl.lazy_lowers_error(ev)
    # two groups (H16 holds, H64 contradicted): pooled, the mean is near zero; never one silently picked
    assert "2 group(s)" in c.test and abs(c.effect) < 0.5 and c.verdict != cl.HOLDS
    dup = cl.Evidence.empty()
    dup.results = pl.concat([results, results.filter(pl.col("cell") == "lstm").with_columns(
        (pl.col("run") + "_again").alias("run"))])
    dup.utterances = utts
    c = cl.deeper_lowers_error(dup)
    assert c.verdict == cl.NOT_MEASURED and "same grid point" in c.note


def test_seeds_are_intersected_per_study():
    r1, u1 = planted_errors("holds", study="a")
    r2, u2 = planted_errors("holds", study="b", seeds=(3, 4, 5))  # other seeds than study a's
    ev = cl.Evidence.empty()
    ev.results, ev.utterances = pl.concat([r1, r2]), pl.concat([u1, u2])
    c = cl.residual_lowers_error(ev)
    assert c.verdict == cl.HOLDS and c.n_seeds == 6 and "2 group(s)" in c.test


def test_error_claims_need_the_same_test_set():
    ev = planted("holds")
    ev.results = ev.results.with_columns(pl.when(pl.col("cell") == "lstm_lazy").then(pl.lit("y"))
                                         .otherwise(pl.col("corpus")).alias("corpus"))
    c = cl.lazy_lowers_error(ev)
    assert c.verdict == cl.NOT_MEASURED and "different corpora" in c.note


def test_sensitivity_reports_a_flip():
    ev = planted("holds")
    ev.impact = ev.impact.with_columns(pl.when(pl.col("arch") == "gru").then(pl.col("impact_frames@0.05") + 40)
                                       .otherwise(pl.col("impact_frames@0.05")).alias("impact_frames@0.05"))
    c = cl.gru_impact_shorter(ev)
    assert c.verdict == cl.HOLDS and c.sensitivity["fraction 0.05"]["verdict"] == cl.CONTRADICTED
    assert c.sensitivity["fraction 0.2"]["verdict"] == cl.HOLDS and c.flips
    steady = cl.lstm_near_zero(planted("holds"))
    assert set(steady.sensitivity) == {"(-1, 1)", "(-3, 3)"} and not steady.flips
    assert "flips at a neighbouring threshold" in cl.format_claims([c])


def _censor(df: pl.DataFrame, arch: str, flag: str, layer: int = 2) -> pl.DataFrame:
    """``arch``'s value at ``layer`` flagged a censored median (only a lower bound)."""
    return df.with_columns(pl.when((pl.col("arch") == arch) & (pl.col("layer") == layer)).then(1.0)
                           .otherwise(pl.col(flag).fill_null(0.0)).alias(flag))


def test_a_censored_median_blocks_only_the_verdicts_it_could_undo():
    """GRU's impact is measured shorter in every seed; where GRU's medians are censored ("at
    least") its true impact may be longer still, so "holds" (GRU shorter) cannot rest on them and
    the claim is undecided, naming the seeds; where LSTM's are censored, LSTM's true impact can
    only be longer and "holds" stands. A sensitivity fraction without censoring keeps its own verdict."""
    ev = planted("holds")
    assert cl.gru_impact_shorter(ev).verdict == cl.HOLDS
    ev.impact = _censor(ev.impact, "gru", "impact_at_least")
    c = cl.gru_impact_shorter(ev)
    assert c.verdict == cl.UNDECIDED and c.p_value == 1.0 and c.p_holm_equiv is not None and c.p_equiv == 1.0
    assert "seed(s) 0, 1, 2 may lie above" in c.note and "(at least)" in "\n".join(c.numbers)
    assert c.sensitivity["fraction 0.2"]["verdict"] == cl.HOLDS and c.flips  # its own median is not censored
    ev = planted("holds")
    ev.impact = _censor(ev.impact, "lstm", "impact_at_least")
    c = cl.gru_impact_shorter(ev)
    assert c.verdict == cl.HOLDS and "may lie below" in c.note and c.p_against == 1.0
    # no effect needs both bounds: any censored median blocks it
    ev = planted("no effect")
    assert cl.gru_memory_shorter(ev).verdict == cl.NO_EFFECT
    ev.memory = _censor(ev.memory, "lstm", "measured_at_least", layer=1)
    assert cl.gru_memory_shorter(ev).verdict == cl.UNDECIDED


def test_a_per_checkpoint_claim_is_calibrated_through_its_own_code():
    """lstm_smoother_than_gru as the claims run it, under a planted null: LSTM and GRU smoothness
    equal in expectation, a per-checkpoint seed offset (sd 0.03) and per-layer noise (sd 0.01), two
    depths, 3 seeds; 1000 trials. False decisions within 3 binomial SE of 5 %."""
    rng = np.random.default_rng(22)
    trials, decided, covered = 1000, 0, 0
    template = cl.Evidence.empty().smoothness
    for _ in range(trials):
        rows = []
        for arch in ("lstm", "gru"):
            for depth in (2, 4):
                for seed in SEEDS:
                    offset = rng.normal(0, 0.03)
                    rows += [{"checkpoint_id": f"{arch}-{depth}-s{seed}", "arch": arch, "depth": depth, "hidden": 8,
                              "residual": False, "seed": seed, "layer": layer,
                              "smoothness": 0.4 + offset + rng.normal(0, 0.01)} for layer in range(1, depth + 1)]
        ev = cl.Evidence.empty()
        ev.smoothness = pl.DataFrame(rows, schema=template.schema)
        c = cl.lstm_smoother_than_gru(ev)
        assert c.n_seeds == 3
        decided += c.verdict in (cl.HOLDS, cl.CONTRADICTED)
        covered += c.ci_low <= 0 <= c.ci_high
    bound = 3 * math.sqrt(0.05 * 0.95 / trials)
    assert decided / trials <= 0.05 + bound and covered / trials >= 0.95 - bound


# ---------------------------------------------------------------------------------------------
# Through a real store


def _plant_store(store: Store, mode: str, old_version_rows: bool = False) -> list[str]:
    """Planted summary rows of the current analyses' versions in a real store (and, if asked,
    contradicting rows of an older version that must be ignored); the checkpoints stamped with
    their seeds."""
    ev = planted(mode)
    ids = []
    analyses = (("temporal_trace", cl.temporal_trace.VERSION, ev.smoothness, ["smoothness"]),
                ("memory_robustness", cl.memory_robustness.VERSION, ev.impact,
                 [c for c in ev.impact.columns if c.startswith("impact_frames")]),
                ("unit_memory", cl.unit_memory.VERSION, ev.memory, ["implied_tau_median", "measured_frames_median"]))
    for cid, (arch, depth, seed) in CK.items():
        store.ingest(cid, "capture", SUMMARY_VERSION, checkpoint={"arch": arch, "layers": depth, "hidden": 8,
                                                                   "residual": False, "seed": seed})
        ids.append(cid)
        for name, version, df, metrics in analyses:
            rows = [{"layer": r["layer"], "metric": m, "value": r[m]}
                    for r in df.filter(pl.col("checkpoint_id") == cid).iter_rows(named=True) for m in metrics]
            if not rows:
                continue
            store.log_started(cid, name, version)
            store.ingest_output(Output(name, version, cid, summary_frame(rows, cid, name, version)))
            if old_version_rows:
                flipped = [{**r, "value": -r["value"] * 7} for r in rows]
                store.log_started(cid, name, version + 100)
                store.ingest_output(Output(name, version + 100, cid, summary_frame(flipped, cid, name, version + 100)))
                store.ingest_output(Output(name, version - 1, cid, summary_frame(flipped, cid, name, version - 1)))
        a = ev.ablation.filter(pl.col("checkpoint_id") == cid)
        if a.height:
            v = cl.unit_ablation.VERSION
            rows = [{"metric": m, "value": a[m][0]} for m in ("specificity_excess", "acc_drop_excess")]
            rows += [{"metric": "specificity_excess@k5", "value": a["specificity_excess"][0]},  # k's neighbours:
                     {"metric": "specificity_excess@k20", "value": -a["specificity_excess"][0]}]  # one flips
            store.log_started(cid, "unit_ablation", v)
            store.ingest_output(Output("unit_ablation", v, cid, summary_frame(rows, cid, "unit_ablation", v)))
    return ids


STORE_KEYS = ("lstm_smoother_than_gru", "gru_smoother_higher", "gru_impact_shorter", "gru_memory_shorter",
              "lazy_memory_shorter", "responsible_units_needed")


@pytest.mark.parametrize("mode", MODES)
def test_verdicts_from_numbers_in_the_store(tmp_path, mode):
    store = Store(tmp_path / "s.duckdb")
    ids = _plant_store(store, mode)
    results, utts = planted_errors(mode)
    claims = {c.key: c for c in cl.evaluate(cl.gather(store, ids, results, utts))}
    for key in (*STORE_KEYS, "lazy_lowers_error", "residual_lowers_error", "deeper_lowers_error"):
        assert claims[key].verdict == EXPECTED[mode], (key, claims[key].numbers, claims[key].note)
        assert claims[key].n_seeds == 3
    for key in ("lstm_near_zero", "lstm_concentration_falls", "gru_pm1_rises", "gru_bounded"):
        assert claims[key].verdict == cl.NOT_MEASURED  # no capture rows planted
    text = cl.format_claims(list(claims.values()))
    assert f"[{EXPECTED[mode]}] LSTM traces are smoother than GRU traces" in text
    assert "Student's t over 3 seeds" in text
    abl = claims["responsible_units_needed"]
    assert set(abl.sensitivity) == {"k = 5", "k = 20"} and "necessity over seeds" in abl.numbers[-1]
    if mode == "holds":
        assert abl.sensitivity["k = 5"]["verdict"] == cl.HOLDS and abl.sensitivity["k = 20"]["verdict"] == cl.CONTRADICTED
        assert abl.flips and "flips at a neighbouring threshold" in text
    d = {x["key"]: x for x in json.loads(cl.to_json(list(claims.values())))}
    assert d["lstm_smoother_than_gru"]["p_holm"] is not None and d["lstm_smoother_than_gru"]["margin"] == 0.05


def test_the_store_reads_one_version_of_each_analysis(tmp_path):
    store = Store(tmp_path / "s.duckdb")
    ids = _plant_store(store, "holds", old_version_rows=True)
    claims = {c.key: c for c in cl.evaluate(cl.gather(store, ids))}
    for key in STORE_KEYS:
        assert claims[key].verdict == cl.HOLDS, (key, claims[key].numbers)


def test_unstamped_checkpoints_in_the_store(tmp_path):
    store = Store(tmp_path / "s.duckdb")
    ids = []
    for arch in ("lstm", "gru"):
        for k in range(3):
            cid = f"{arch}-x{k}"
            store.ingest(cid, "capture", SUMMARY_VERSION, checkpoint={"arch": arch, "layers": 2, "hidden": 8,
                                                                       "residual": False})
            rows = [{"layer": layer, "metric": "smoothness", "value": (0.2 if arch == "lstm" else 0.5) + 0.01 * k}
                    for layer in (1, 2)]
            store.log_started(cid, "temporal_trace", cl.temporal_trace.VERSION)
            store.ingest_output(Output("temporal_trace", cl.temporal_trace.VERSION, cid,
                                       summary_frame(rows, cid, "temporal_trace", cl.temporal_trace.VERSION)))
            ids.append(cid)
    ev = cl.gather(store, ids)
    assert ev.unstamped == 6
    c = cl.lstm_smoother_than_gru(ev)  # once: all six were seed -1, one replicate, matched with each other
    assert c.verdict == cl.NOT_MEASURED and "without a seed stamp" in c.note


@pytest.mark.slow
def test_real_capture_gru_is_bounded(captured):
    ev = cl.gather(captured["store"], [captured["gru"], captured["lstm"]])
    c = cl.gru_bounded(ev)
    assert c.verdict == cl.HOLDS and c.numbers[0].startswith(captured["gru"])
    near = cl.lstm_near_zero(ev)
    assert near.numbers and near.effect is not None and math.isfinite(near.effect)  # measured from real rows
    row = ev.cells.filter(pl.col("arch") == "lstm").row(0, named=True)
    assert 0 <= row["share_inside_1"] <= row["share_inside_2"] <= row["share_inside_3"] <= 1


def _lstm_cells(mode: str, seed: int, layer: int, rng) -> np.ndarray:
    """c values [frames, 4 units] of an LSTM layer: concentrated near 0 with a few great values,
    less so at layer 2 (holds); two bumps at +-2.5, more at 0 at layer 2 (contradicted); a normal
    distribution at both layers (no effect); undecided: seed 1 contradicted, the others hold."""
    if mode == "undecided":
        mode = "contradicted" if seed == 1 else "holds"
    n = (20000, 4)
    if mode == "no effect":
        return rng.normal(0, 1.5, n)
    near = rng.normal(0, 0.3, n)
    if mode == "holds":
        far = rng.choice([-1, 1], n) * rng.uniform(10, 40, n)
        return np.where(rng.random(n) < (0.05 if layer == 1 else 0.15 + 0.01 * seed), far, near)
    bumps = rng.choice([-1, 1], n) * rng.normal(2.5, 0.2, n)
    return np.where(rng.random(n) < (0.0 if layer == 1 else 0.1 + 0.01 * seed), near, bumps)


@pytest.mark.parametrize("mode", MODES)
def test_cell_claims_from_captures_in_the_store(tmp_path, mode):
    """Captured c values summarised by the capture's own UnitSummary into layer_stats of a real
    store: the range-share claims decide as planted, their neighbouring bands with them."""
    from cluster.summaries import UnitSummary

    store = Store(tmp_path / "s.duckdb")
    ids = []
    for seed in SEEDS:
        rng = np.random.default_rng(zlib.crc32(f"{mode}{seed}".encode()))
        summary = UnitSummary("lstm", 3)
        values = {f"L{layer}.c": _lstm_cells(mode, seed, layer, rng).astype(np.float32) for layer in (1, 2)}
        summary.update(values, np.ones(20000, dtype=np.int64))
        cid = f"lstm-2-s{seed}"
        store.ingest(cid, "capture", SUMMARY_VERSION, {"layer_stats": summary.layer_stats_frame(cid)},
                     checkpoint={"arch": "lstm", "layers": 2, "hidden": 4, "residual": False, "seed": seed})
        ids.append(cid)
    claims = {c.key: c for c in cl.evaluate(cl.gather(store, ids))}
    near, falls = claims["lstm_near_zero"], claims["lstm_concentration_falls"]
    assert near.verdict == EXPECTED[mode], (near.effect, near.ci_low, near.ci_high, near.numbers)
    assert falls.verdict == EXPECTED[mode], (falls.effect, falls.ci_low, falls.ci_high, falls.numbers)
    assert near.n_seeds == falls.n_seeds == 3 and claims["gru_bounded"].verdict == cl.NOT_MEASURED
    if mode == "holds":
        assert {s["verdict"] for s in near.sensitivity.values()} == {cl.HOLDS} and not near.flips
    if mode == "contradicted":  # the bumps at +-2.5 lie inside (-3, 3): that band says "near 0" and flips it
        assert near.sensitivity["(-1, 1)"]["verdict"] == cl.CONTRADICTED
        assert near.sensitivity["(-3, 3)"]["verdict"] == cl.HOLDS and near.flips
