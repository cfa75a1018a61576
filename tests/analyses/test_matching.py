"""Matching across seeds and checkpoints: linear CKA and the Hungarian unit assignment, on planted
matrices and on a real checkpoint against a permuted copy of itself."""

import numpy as np
import polars as pl
import pytest
import torch
from scipy.stats import ortho_group

from analyses import matching as mt

from analysis_helpers import png_is_drawn, save_model


def test_cka_of_a_layer_with_itself_a_rotation_and_a_scaling_is_one():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 16)) @ rng.normal(size=(16, 16))
    q = ortho_group.rvs(16, random_state=1)
    assert mt.linear_cka(x, x) == pytest.approx(1.0)
    assert mt.linear_cka(x, x @ q) == pytest.approx(1.0)
    assert mt.linear_cka(x, 3.0 * x + 5.0) == pytest.approx(1.0)
    assert mt.linear_cka(x, rng.normal(size=(500, 16))) < 0.2  # unrelated frames
    with pytest.raises(ValueError):
        mt.linear_cka(x, x[:10])


def test_matching_recovers_a_permutation_with_sign_flips():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 12))
    perm = rng.permutation(12)
    signs = np.where(rng.random(12) < 0.5, -1.0, 1.0)
    y = x[:, perm] * signs  # unit j of y is unit perm[j] of x, maybe negated
    unit_b, corr = mt.match_units(x, y)
    inverse = np.argsort(perm)
    assert np.array_equal(unit_b, inverse)
    assert np.allclose(corr, signs[inverse])
    const = np.column_stack([x[:, :3], np.ones(400)])  # a constant unit correlates with nothing
    assert np.all(mt.correlations(const, const)[3] == 0)


def _permuted(model, layer: int, perm: np.ndarray) -> None:
    """Reorder the units of layer ``layer`` (1-based): its rows, its recurrent columns, the next
    layer's (or the output's) input columns. The function computed is unchanged."""
    p = torch.as_tensor(perm)
    with torch.no_grad():
        for name, w in model.layers[layer - 1].named_parameters():
            w.copy_(w[p])
            if w.dim() == 2 and not name.endswith("x"):  # recurrent: units on both sides
                w.copy_(w[:, p])
        if layer < len(model.layers):
            for name, w in model.layers[layer].named_parameters():
                if w.dim() == 2 and name.endswith("x"):
                    w.copy_(w[:, p])
        else:
            model.output.weight.copy_(model.output.weight[:, p])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_checkpoint_and_its_permuted_copy(small_corpus, tmp_path, cell):
    from cluster.models import load_checkpoint, save_checkpoint
    from cluster.data.kaldi import read_corpus

    a_path = save_model(small_corpus, tmp_path / "runs" / "a" / "checkpoint_1" / "model.pt", cell, layers=2, hidden=8)
    model, _ = load_checkpoint(a_path)
    perm = np.random.default_rng(2).permutation(8)
    _permuted(model, 1, perm)
    b_path = save_checkpoint(tmp_path / "runs" / "b" / "checkpoint_1" / "model.pt", model,
                             read_corpus(small_corpus).identity,
                             extra={"stamps": {"config": {"corpus": str(small_corpus)}}})
    (va, _), (vb, _) = (mt._values(str(p), str(small_corpus), "test", 3) for p in (a_path, b_path))
    assert np.allclose(va[1][:, perm], vb[1], atol=1e-5) and np.allclose(va[2], vb[2], atol=1e-5)

    point = (cell, 2, 8, False, "last", "fp32")
    runs = [{"name": n, "point": point, "cell": cell, "layers": 2, "residual": False, "seed": s,
             "corpus": str(small_corpus), "final": (f"{cell}-{n}", str(p)), "first": None}
            for n, s, p in (("a", 0, a_path), ("b", 1, b_path))]
    out = mt.run({"study": "mini", "runs": runs}, mt.MatchingParams(utterances=3), tmp_path / "figs")
    sims, match = out.tables["layer_similarity"], out.tables["unit_match"]
    assert set(sims["kind"]) == {"seed"}
    diag = sims.filter(pl.col("layer_a") == pl.col("layer_b"))["cka"].to_numpy()
    assert np.allclose(diag, 1.0, atol=1e-6)  # the same information, in other coordinates
    l1 = match.filter(pl.col("layer") == 1).sort("unit_a")
    assert np.array_equal(l1["unit_b"].to_numpy(), np.argsort(perm)) and np.allclose(l1["corr"], 1.0, atol=1e-5)
    l2 = match.filter(pl.col("layer") == 2).sort("unit_a")
    assert np.array_equal(l2["unit_b"].to_numpy(), np.arange(8))  # the next layer is untouched
    summary = out.summary.filter((pl.col("layer") == 0) & (pl.col("metric") == "matched_abs_corr"))
    assert summary["value"][0] == pytest.approx(1.0) and summary["label"][0] == "seed:a~b"
    assert png_is_drawn(out.figures[0].path)


def test_pairs_by_seed_cell_and_epoch():
    def r(cell, layers, seed, first=None):
        return {"name": f"{cell}{layers}s{seed}", "point": (cell, layers), "cell": cell, "layers": layers,
                "residual": False, "seed": seed, "final": (f"{cell}{layers}s{seed}", "f"), "first": first}

    runs = [r("lstm", 2, 0, ("e1", "e")), r("lstm", 2, 1), r("lstm", 2, 2), r("gru", 2, 0), r("gru", 2, 1), r("gru", 1, 0)]
    got = {(p["kind"], p["a"]["name"], p["b"]["name"]) for p in mt.pairs(runs)}
    assert got == {("seed", "lstm2s0", "lstm2s1"), ("seed", "lstm2s0", "lstm2s2"), ("seed", "lstm2s1", "lstm2s2"),
                   ("seed", "gru2s0", "gru2s1"), ("epoch", "lstm2s0@first", "lstm2s0"),
                   ("cell", "lstm2s0", "gru2s0"), ("cell", "lstm2s1", "gru2s1")}
