"""Fig. 8: alignment of the clean and noisy streams, and the impact duration of models with no
memory, perfect memory, and a real capture."""

import numpy as np
import polars as pl
import pytest

from analyses import memory_robustness as mr

from analysis_helpers import FAST, capture_into, no_memory, perfect_memory, png_is_drawn, save_model


def test_alignment_and_impact_duration():
    ref, s, e = mr.alignment(t_clean=100, at=4000, frames_inserted=20)
    assert (s, e) == (23, 45) and len(ref) == 120
    assert ref[22] == 22 and (ref[23:45] == -1).all() and ref[45] == 25 and ref[-1] == 99
    mean = np.concatenate([np.zeros(20), [np.nan] * 5, [1.0, 0.5, 0.2, 0.09, 0.05, 0.0, 0.0]])
    d = mr.impact_duration(mean, end=26, fraction=0.1, floor=1e-3)  # peak 1.0 (frame 25); < 0.1 at 28
    assert (d["impact_frames"], d["censored"], d["peak"]) == (2.0, 0.0, 1.0)
    d = mr.impact_duration(np.full(40, 0.5), end=30, fraction=0.1, floor=1e-3)
    assert (d["impact_frames"], d["censored"]) == (10.0, 1.0)  # never falls: censored at the frames observed
    assert mr.impact_duration(np.full(40, 1e-7), end=30, fraction=0.1, floor=1e-3)["impact_frames"] == 0


@pytest.mark.slow
def test_streams_match_outside_the_noise(small_corpus):
    """Features of the noisy stream equal the clean ones before the segment and, shifted, after it."""
    from cluster.data.features import dither_seed
    from cluster.data.kaldi import read_corpus

    corpus = read_corpus(small_corpus)
    wavs = mr.wav_paths(corpus, "test")
    utt = sorted(wavs)[0]
    wave = mr.read_wav(wavs[utt])
    clean, noisy = mr.streams(wave, at=160 * 40, length=160 * 25, kind="pink", snr_db=0.0, noise_seed=[0, 1],
                              dither_seed=dither_seed(7, utt), sources=None)
    np.testing.assert_array_equal(clean, corpus.split("test").load(utt).feats)  # the stored features, bit for bit
    ref, s, e = mr.alignment(len(clean), 160 * 40, 25)
    assert len(noisy) == len(clean) + 25
    np.testing.assert_allclose(noisy[:s], clean[:s], atol=1e-3)
    np.testing.assert_allclose(noisy[e:], clean[ref[e:]], atol=1e-3)
    assert np.abs(noisy[s + 3:e - 3] - clean[s + 3:s + 3 + (e - s - 6)]).mean() > 1.0  # the noise is there


def _impact(store, cid, tmp_path, **kw):
    params = mr.RobustnessParams(**(FAST["memory_robustness"] | kw))
    return mr.run(mr.load(store, cid, params), params, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_model_without_memory_recovers_at_once(captured, small_corpus, tmp_path, cell):
    from service.store import Store

    store = Store(tmp_path / "s.duckdb")
    cid = capture_into(store, save_model(small_corpus, tmp_path / "m.pt", cell, edit=no_memory), sample=0)
    out = _impact(store, cid, tmp_path)
    layers = out.summary.filter((pl.col("metric") == "impact_frames") & (pl.col("layer") > 0) & (pl.col("label") == ""))
    assert layers["value"].to_list() == [0.0, 0.0]  # the median over conditions
    each = out.summary.filter((pl.col("metric") == "impact_frames") & (pl.col("label") != ""))
    assert each.height == 2 * 3 * 3 * 2 and (each["value"] == 0).all()  # 2 layers x 3 utterances x 3 noises x 2 points
    peak = out.summary.filter(pl.col("metric") == "peak")["value"]
    assert (peak > 0.05).all()  # the noise did change the cells while it was in the input
    pre = out.summary.filter(pl.col("metric") == "pre_noise_max")["value"]
    assert (pre == 0).all()


@pytest.mark.slow
def test_a_model_with_perfect_memory_never_recovers(captured, small_corpus, tmp_path):
    from service.store import Store

    store = Store(tmp_path / "s.duckdb")
    cid = capture_into(store, save_model(small_corpus, tmp_path / "m.pt", "lstm", edit=perfect_memory), sample=0)
    out = _impact(store, cid, tmp_path)
    s = out.summary.filter((pl.col("layer") > 0) & (pl.col("label") != ""))
    assert (s.filter(pl.col("metric") == "censored")["value"] == 1.0).all()
    agg = out.summary.filter((pl.col("layer") > 0) & (pl.col("label") == ""))
    assert agg.filter(pl.col("metric") == "impact_at_least")["value"].to_list() == [1.0, 1.0]  # a lower bound only
    frames_after = s.filter(pl.col("metric") == "frames_after")["value"]
    assert s.filter(pl.col("metric") == "impact_frames")["value"].to_list() == frames_after.to_list()
    assert (frames_after > 50).all()


@pytest.mark.slow
def test_rows_and_figure_of_a_real_capture(captured, tmp_path):
    store, cid = captured["store"], captured["lstm"]
    out = _impact(store, cid, tmp_path, noise="babble", snr_db=5.0)
    (fig,) = out.figures
    assert [p.split(":")[0] for p in fig.panels] == ["layer 1", "layer 2", "mean |difference| over units"]
    assert png_is_drawn(fig.path)
    rows = out.tables["noise_impact"]
    n = out.params["noise_frames"]
    assert n == 20 and rows["noise"].unique().to_list() == ["babble"] and rows["snr_db"].unique().to_list() == [5.0]
    assert len(out.params["conditions"]) == 3 * 2  # 3 utterances x 2 insertion points, babble only
    per_layer = rows.filter((pl.col("layer") == 1) & (pl.col("utt_id") == out.params["utt_id"])
                            & (pl.col("noise_start") == out.params["noise_start"]))
    inside = per_layer.filter(pl.col("mean_abs_diff").is_nan())  # frames overlapping the segment
    assert n <= inside.height <= n + 3 and inside["frame"].min() == out.params["noise_start"]
    written = store.ingest_output(out)
    assert written["noise_impact"] == rows.height
    assert store.query("SELECT count(*) AS n FROM noise_impact WHERE checkpoint_id = ?", [cid])["n"][0] == rows.height
