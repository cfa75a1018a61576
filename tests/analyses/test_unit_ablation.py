"""Unit ablation: a planted unit that alone carries one phone drops that phone's accuracy when
ablated and no other, and is ranked top for it; an ablation from a kept layer input equals a full
pass; the analysis on a real capture ranks on dev, measures on test, against its random control."""

from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
import torch

from analyses import unit_ablation as ua
from analyses.common import task_cpus_set
from cluster.models import Intervention, ModelConfig, build_model
from cluster.models.kernels import project_input


def _planted_model():
    """Two phones, two units: unit 0 tracks phone A's feature, unit 1 phone B's; the output reads
    unit 0 for A's target and unit 1 for B's."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(cell="lstm", layers=1, hidden=2, num_targets=2, context=0), torch.zeros(40),
                        torch.ones(40))
    layer = model.layers[0]
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        layer.b_i.fill_(10.0)  # input gate open, forget gate shut (sigmoid(-10)), output gate open
        layer.b_f.fill_(-10.0)
        layer.b_o.fill_(10.0)
        layer.W_cx[0, 0], layer.W_cx[1, 1] = 3.0, 3.0  # unit u follows feature u
        model.output.weight[0, 0], model.output.weight[1, 1] = 4.0, 4.0
        model.output.bias[0], model.output.bias[1] = -2.0, -1.5
    T = 200
    phones = np.where(np.arange(T) % 20 < 10, 0, 1)
    feats = np.zeros((T, 40), np.float32)
    feats[phones == 0, 0], feats[phones == 1, 1] = 1.0, 1.0
    return model, feats, phones


def test_a_planted_unit_carries_one_phone():
    """Zeroing unit 0 inside the recurrence costs A, not B: specific to A; and ranking on other
    utterances puts unit 0 first for A, unit 1 for B."""
    model, feats, phones = _planted_model()
    with torch.inference_mode():
        c = model.capture(torch.from_numpy(feats), dtype=torch.float32, values=("c",))["L1.c"]
        base = ua.per_phone(model(torch.from_numpy(feats)), phones, phones)
        assert c[phones == 0, 0].min() > 0.9 and c[phones == 1, 0].abs().max() < 1e-3
        cut = ua.per_phone(model(torch.from_numpy(feats), interventions={1: Intervention("c", [0], 0.0)}),
                           phones, phones)
        utt = SimpleNamespace(feats=feats, phones=phones, targets=phones)
        resp, means = ua.rank_units(model, [utt], ua.IrregularityRule.parse("abs>0.5"), [0, 1])
    acc = lambda r, p: r[p][1] / r[p][0]  # noqa: E731
    assert acc(base, 0) == acc(base, 1) == 1.0
    assert acc(cut, 0) < 0.1 and acc(cut, 1) == 1.0
    assert resp[1] == pytest.approx(np.eye(2)) and means[1] == pytest.approx([0.5, 0.5], abs=0.01)


@pytest.mark.parametrize("cell,residual", [("gru", False), ("gru", True), ("lstm", False), ("lstm_lazy", True)])
def test_an_ablation_from_a_kept_layer_input_is_the_full_pass(cell, residual):
    torch.manual_seed(1)
    model = build_model(ModelConfig(cell=cell, layers=3, hidden=8, num_targets=5, residual=residual),
                        torch.zeros(40), torch.ones(40))
    rng = np.random.default_rng(0)
    utts = [SimpleNamespace(feats=rng.normal(size=(n, 40)).astype(np.float32)) for n in (30, 17, 5, 29)]
    ivs = {1: Intervention("c", [0, 5], 0.0), 2: Intervention("c", [1, 4], 0.0), 3: Intervention("c", [2], 0.5)}
    with torch.inference_mode():
        # the default length groups, one batch, and groups out of the utterances' order
        for groups in (None, [range(4)], [[2, 0], [3], [1]]):
            passes = ua._Passes(model, utts, groups=groups)
            assert sorted(i for g in passes.groups for i in g) == [0, 1, 2, 3]
            # every layer twice and out of order: the kept projection is reused, never consumed or stale
            for layer in (2, 2, 3, 1, 3, 2):
                got = passes.ablated(layer, ivs[layer])
                assert got.shape == (sum(len(u.feats) for u in utts), 5)
                for b, u in enumerate(utts):
                    full = model(torch.from_numpy(u.feats))
                    assert torch.allclose(passes.frames_of(passes.base, b), full, atol=1e-5)
                    cut = model(torch.from_numpy(u.feats), interventions={layer: ivs[layer]})
                    assert torch.allclose(passes.frames_of(got, b), cut, atol=1e-5), (groups, layer, b)
                    assert not torch.allclose(cut, full, atol=1e-3)


def test_length_groups_are_the_cheapest_cut():
    """Against every cut of the sorted utterances into contiguous groups; and the two limits: no
    fixed cost per frame puts each length in its own group, a large one gives one batch."""
    import itertools

    rng = np.random.default_rng(3)
    for _ in range(20):
        lengths = rng.integers(1, 60, size=int(rng.integers(1, 8))).tolist()
        over = float(rng.choice([0.0, 0.5, 3.0, 40.0]))
        cost = lambda groups: sum(max(lengths[i] for i in g) * (over + len(g)) for g in groups)  # noqa: E731
        got = ua.length_groups(lengths, over)
        assert sorted(i for g in got for i in g) == list(range(len(lengths)))
        order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
        n = len(order)
        best = min(cost([order[a:b] for a, b in zip((0, *cuts), (*cuts, n))])
                   for r in range(n) for cuts in itertools.combinations(range(1, n), r))
        assert cost(got) == pytest.approx(best)
    assert len(ua.length_groups([5, 5, 9, 9, 30], 0.0)) == 3
    assert ua.length_groups([5, 5, 9, 9, 30], 1e6) == [[0, 1, 2, 3, 4]]


@pytest.mark.parametrize("cell", ["lstm", "gru", "lstm_lazy"])
def test_a_kept_input_projection_is_the_layers_own(cell):
    torch.manual_seed(2)
    model = build_model(ModelConfig(cell=cell, layers=2, hidden=8, num_targets=5), torch.zeros(40), torch.ones(40))
    layer = model.layers[-1]
    x = torch.randn(13, 3, layer.input_size)
    with torch.inference_mode():
        kept = project_input(layer, x)
        before = kept.clone()
        plain, _, _ = layer(x)
        again, _, _ = layer(x, projected=kept)
        assert torch.equal(plain, again)
        assert torch.equal(kept, before)  # the layer works on its own copy
        with pytest.raises(ValueError, match="does not fit"):
            layer(x[:5], projected=kept)
    with pytest.raises(RuntimeError, match="inference"):
        layer(x, projected=kept.clone())


@pytest.mark.slow
def test_ablation_of_a_real_capture(captured, tmp_path):
    params = ua.AblationParams(k=4, phones=3, repeats=2, utterances=6, rank_utterances=6, decode_utterances=3,
                               neighbour_ks=(2, 20))  # 20 is capped at a quarter of the 16 units: 4, the main k
    out = ua.run(ua.load(captured["store"], captured["lstm"], params), params, tmp_path)
    t = out.tables["unit_ablation"]
    assert set(t["ablated"]) == {"none", "top", "random"}
    top = t.filter(pl.col("ablated") == "top")
    assert top.height == 2 * 3 * 3 and all(len(u) == 4 for u in top["units"])  # 2 layers x 3 phones x 3 measured
    rand = t.filter(pl.col("ablated") == "random")
    for r in rand.iter_rows(named=True):  # the control never ablates the top units (a shared draw: anyone's)
        tops = top.filter((pl.col("layer") == r["layer"])
                          & ((pl.col("phone_id") == r["phone_id"]) if r["phone_id"] >= 0 else pl.lit(True)))["units"]
        assert not set(r["units"]) & {u for units in tops for u in units}
    # each draw is measured on every studied phone; one set of draws per layer when there is room for it
    assert rand.group_by("layer", "phone_id", "draw").len()["len"].to_list() == [3] * rand.select(
        "layer", "phone_id", "draw").unique().height
    s = out.summary
    assert set(s["metric"]) == {"acc_drop_top", "acc_drop_random", "acc_drop_excess", "per_rise_top", "per_rise_random",
                                "specificity_top", "specificity_random", "specificity_excess", "per",
                                "specificity_excess@k2", "specificity_excess_se", "acc_drop_excess_se"}
    se = s.filter(pl.col("metric") == "specificity_excess_se")["value"][0]
    assert 0 < se < 1  # the utterances resampled: a spread, and on an accuracy scale
    assert t["per"].is_between(0, 2).all() and t.filter(pl.col("ablated") == "none")["per"].n_unique() == 1
    assert s.filter(pl.col("layer") == 0)["value"].is_finite().all()
    # ranked on dev, measured on test: no utterance in both
    assert not set(out.params["measured_utterances"]) & set(out.params["ranking_utterances"])
    with pytest.raises(ua.AnalysisError, match="double-dip"):
        ua.load(captured["store"], captured["lstm"], ua.AblationParams(rank_split="test"))
    # a task of 2 CPUs runs the two layers side by side (the draws planned first): the same numbers
    with task_cpus_set(2):
        again = ua.run(ua.load(captured["store"], captured["lstm"], params), params, tmp_path / "two")
    assert again.tables["unit_ablation"].equals(t) and again.summary.equals(s)


def test_the_bootstrap_over_utterances_shrinks_as_one_over_root_n():
    """Identical utterances leave no spread; with varied ones, four copies of each halve the
    standard error (resampling n utterances: se ~ 1 / sqrt(n))."""
    rng = np.random.default_rng(3)
    U, P = 40, 3
    frames = rng.integers(20, 60, size=(U, P)).astype(float)
    base = np.floor(frames * 0.9)
    top = {p: base.copy() for p in range(P)}
    for p in range(P):
        top[p][:, p] = np.floor(frames[:, p] * rng.uniform(0.2, 0.8, U))  # a phone's top units cost it, unevenly
    rand = {p: [np.floor(frames * 0.85)] * 2 for p in range(P)}
    se1 = ua.bootstrap_se(frames, base, [(top, rand)], list(range(P)), seed=0)
    rep = lambda a: np.tile(a, (4, 1))  # noqa: E731
    se4 = ua.bootstrap_se(rep(frames), rep(base), [({p: rep(v) for p, v in top.items()},
                                                    {p: [rep(v) for v in vs] for p, vs in rand.items()})],
                          list(range(P)), seed=0)
    assert all(s > 0.005 for s in se1)
    assert se4 == pytest.approx(tuple(s / 2 for s in se1), rel=0.2)
    same = np.tile(frames[:1], (U, 1))
    flat = ua.bootstrap_se(same, np.floor(same * 0.9), [({p: np.floor(same * 0.5) for p in range(P)},
                                                          {p: [np.floor(same * 0.85)] for p in range(P)})],
                           list(range(P)), seed=0)
    assert flat == pytest.approx((0.0, 0.0), abs=1e-12)


def test_the_ablation_claims_two_cpus_only_where_its_threads_pay():
    claim = lambda hidden, layers: ua.ANALYSIS.cpus_for({"checkpoint": {"hidden": hidden, "layers": layers}})  # noqa: E731
    assert claim(512, 6) == claim(1024, 2) == 2
    assert claim(128, 6) == claim(512, 1) == claim(16, 2) == 1
