"""Figs. 7, 10: the smoothness number, and traces of real checkpoints from the raw sample and
from the model."""

import numpy as np
import polars as pl
import pytest

from analyses import temporal_trace as tt

from analysis_helpers import FAST, png_is_drawn


def test_a_smooth_path_scores_lower_than_a_jagged_one():
    rng = np.random.default_rng(0)
    t = np.linspace(0, 2 * np.pi, 300)
    basis = rng.standard_normal((4, 64))
    smooth = np.stack([np.sin(t), np.cos(t), np.sin(2 * t), np.cos(3 * t)], 1) @ basis  # a slow curve in 64-D
    jagged = smooth[rng.permutation(len(smooth))]  # the same points, visited in random order
    s, j = tt.smoothness(smooth), tt.smoothness(jagged)
    assert s["mean_distance"] == pytest.approx(j["mean_distance"])  # same point set: only the order differs
    assert s["smoothness"] < 0.1 < 0.9 < j["smoothness"]
    walk = np.cumsum(rng.standard_normal((300, 64)) * 0.05, axis=0)  # small steps
    noise = rng.standard_normal((300, 64))  # independent frames score about 1
    assert tt.smoothness(walk)["smoothness"] < tt.smoothness(noise)["smoothness"]
    assert tt.smoothness(noise)["smoothness"] == pytest.approx(1.0, abs=0.05)


@pytest.mark.slow
def test_the_embedding_on_one_thread_is_the_default_threads_embedding():
    """embed runs t-SNE on one OpenMP thread (the Ray task's CPU); the coordinates are those of
    scikit-learn's default threads, bit for bit."""
    from sklearn.manifold import TSNE

    x = np.cumsum(np.random.default_rng(2).normal(size=(80, 16)), 0).astype(np.float32)
    got = tt.embed(x, perplexity=30.0, seed=0, max_iter=250)
    want = TSNE(n_components=2, perplexity=float(min(30.0, (80 - 1) / 3)), init="pca", learning_rate="auto",
                random_state=0, max_iter=250).fit_transform(x)
    assert got.shape == (80, 2) and np.array_equal(got, want)


@pytest.mark.slow
def test_trace_from_the_raw_sample(captured, tmp_path):
    store, cid = captured["store"], captured["lstm"]
    params = tt.TraceParams(**FAST["temporal_trace"])
    inputs = tt.load(store, cid, params)
    assert inputs["source"] == "raw_sample" and len(inputs["utterances"]) == 2
    out = tt.run(inputs, params, tmp_path)
    (fig,) = out.figures
    assert [p.split(" (")[0] for p in fig.panels] == ["layer 1", "layer 2"] and png_is_drawn(fig.path)
    traces = out.tables["traces"]
    drawn = out.params["drawn"]
    frames = len(inputs["utterances"][drawn][1][0])
    assert traces.height == 2 * frames and traces["utt_id"].unique().to_list() == [drawn]
    assert traces.filter(pl.col("frame") > 0)["step"].is_nan().sum() == 0 and traces["x"].std() > 0
    per_utt = out.summary.filter((pl.col("metric") == "smoothness") & (pl.col("label") != ""))
    assert per_utt.height == 2 * 2 and ((per_utt["value"] > 0) & (per_utt["value"] < 1.5)).all()
    written = store.ingest_output(out)
    assert written["traces"] == traces.height
    assert store.query("SELECT count(*) AS n FROM traces WHERE checkpoint_id = ?", [cid])["n"][0] == traces.height


@pytest.mark.slow
def test_model_run_matches_the_raw_sample(captured, tmp_path):
    """An utterance outside the raw sample is traced by running the checkpoint; on a sampled
    utterance both sources agree (float16 sample vs float32 run)."""
    store, cid = captured["store"], captured["gru"]
    sampled = tt.load(store, cid, tt.TraceParams(utterances=1))
    utt = next(iter(sampled["utterances"]))
    from_sample = tt.run(sampled, tt.TraceParams(utterances=1, tsne_iter=250), tmp_path)
    other = tt.TraceParams(utterances=1, tsne_iter=250)
    inputs = tt.load(store, cid, other)
    inputs = {"checkpoint": inputs["checkpoint"], "source": "model", "corpus": None, "wanted": [utt]}
    from_model = tt.run(inputs, other, tmp_path)
    get = lambda o: o.summary.filter((pl.col("metric") == "smoothness") & (pl.col("label") == utt)).sort("layer")["value"]  # noqa: E731
    np.testing.assert_allclose(get(from_sample), get(from_model), rtol=2e-3)
    unsampled = tt.load(store, cid, tt.TraceParams(utt_id="not-in-the-sample"))
    assert unsampled["source"] == "model" and unsampled["wanted"][0] == "not-in-the-sample"
