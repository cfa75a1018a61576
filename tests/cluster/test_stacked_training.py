"""Stacked training is the same training: seed s in a stack of 3 equals seed s trained alone.

In-process (no Ray): the loop's own per-epoch functions (``epoch_of_seeds``, ``train_epoch``) on a
few utterances of the session's corpus, tiny shapes, several optimizer steps, clipping active and
one seed's learning rate changed between epochs.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from cluster.data.kaldi import read_corpus
from cluster.decode import estimate_graph
from cluster.train import SplitData, TrainConfig, epoch_of_seeds, load_split, make_seed, seed_configs, train_epoch

SEEDS = (0, 1, 2)


def _short(split: SplitData, n: int) -> SplitData:
    """The split's first n utterances, each cut to its first 20-44 frames (of unequal lengths, so
    batches pad): tiny shapes, the same code."""
    cut = [20 + 6 * (i % 5) for i in range(n)]
    return SplitData(split.utt_ids[:n], [f[:c] for f, c in zip(split.feats, cut)],
                     [t[:c] for t, c in zip(split.targets, cut)], [p[:c] for p, c in zip(split.phones, cut)])


@pytest.fixture(scope="module")
def data(small_corpus):
    return _load(small_corpus)


def _load(corpus_dir):
    corpus = read_corpus(corpus_dir)
    train = _short(load_split(corpus, "train", 12), 12)
    dev = _short(load_split(corpus, "dev", 6), 6)
    graph = estimate_graph(zip(train.phones, train.targets), corpus.num_targets, phone_symbols=corpus.phones)
    return corpus, train, dev, graph


def _seeds(corpus, config: TrainConfig):
    return [make_seed(c, corpus.num_targets, corpus.cmvn_mean, corpus.cmvn_std) for c in seed_configs(config)]


def _assert_same(a, b, what: str):
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-5), f"{what}: {name} differs by {(p - q).abs().max():.2e}"


@pytest.mark.parametrize("cell,chunk_width,stream_loss", [("lstm", 0, "frames"), ("gru", 0, "frames"),
                                                           ("lstm_lazy", 0, "frames"), ("gru", 7, "frames"),
                                                           ("lstm", 7, "slots")])
def test_a_seed_in_a_stack_of_three_trains_as_it_trains_alone(data, cell, chunk_width, stream_loss):
    """Two epochs (8 steps of whole utterances; more, of unequal counts per seed, on streams), the
    gradient clipped at every step, seed 1's learning rate cut after the first epoch."""
    corpus, train, _, _ = data
    config = TrainConfig(cell=cell, layers=2, hidden=8, batch_size=3, chunk_width=chunk_width, clip=0.05, lr=3e-3,
                         stack_seeds=SEEDS, epochs=2, stream_loss=stream_loss)
    stacked = _seeds(corpus, config)
    alone = [_seeds(corpus, replace(config, stack_seeds=(), seed=s))[0] for s in SEEDS]
    for s in range(3):
        _assert_same(stacked[s], alone[s], f"seed {SEEDS[s]} before training")
    assert not torch.allclose(stacked[0].model.output.weight, stacked[1].model.output.weight)  # own initialisation
    norms = []
    clip = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **k):  # the clipping really cuts the gradient
        norm = clip(params, max_norm, *a, **k)
        norms.append(float(norm))
        return norm

    torch.nn.utils.clip_grad_norm_ = spy
    try:
        for epoch in (1, 2):
            sums = train_epoch(stacked, train, config, epoch)
            solo = [train_epoch([r], train, config, epoch)[0] for r in alone]
            for s in range(3):
                assert sums[s][1] == solo[s][1] == train.frames  # every training frame scored once
                assert sums[s][0] == pytest.approx(solo[s][0], rel=1e-4)
            if epoch == 1:
                for r in (stacked[1], alone[1]):
                    r.opt.param_groups[0]["lr"] *= 0.25
    finally:
        torch.nn.utils.clip_grad_norm_ = clip
    assert min(norms) > config.clip
    for s in range(3):
        _assert_same(stacked[s], alone[s], f"{cell} seed {SEEDS[s]} after two epochs")
        for p, q in zip(stacked[s].opt.state_dict()["state"].values(), alone[s].opt.state_dict()["state"].values()):
            assert int(p["step"]) == int(q["step"]) and torch.allclose(p["exp_avg_sq"], q["exp_avg_sq"], rtol=1e-3,
                                                                       atol=1e-9)
    # the seeds did diverge from one another (own data order and initialisation)
    assert not torch.allclose(stacked[0].model.output.bias, stacked[2].model.output.bias)


def test_a_seed_that_stops_leaves_the_others_trajectories_unchanged(data):
    """Seed 1 stops after its first epoch (its last); seeds 0 and 2 go on in a stack of two and end
    where they end trained alone; seed 1 keeps its best-on-dev weights."""
    corpus, train, dev, graph = data
    config = TrainConfig(cell="gru", layers=1, hidden=8, batch_size=4, clip=0.5, lr=3e-3, epochs=3, patience=10,
                         stack_seeds=SEEDS)
    stacked = _seeds(corpus, config)
    stacked[1].config = replace(stacked[1].config, epochs=1)
    alone = [_seeds(corpus, replace(config, stack_seeds=(), seed=s))[0] for s in (0, 2)]
    stopped_at = {}
    for epoch in (1, 2, 3):
        active = [r for r in stacked if r.config.seed not in stopped_at]
        news, stopping = epoch_of_seeds(active, train, dev, graph, config, epoch)
        assert set(news) == {r.name for r in active}
        for r in stopping:
            stopped_at[r.config.seed] = epoch
        for r in alone:
            solo, _ = epoch_of_seeds([r], train, dev, graph, config, epoch)
            assert solo[r.name]["dev_frame_acc"] == pytest.approx(news[r.name]["dev_frame_acc"], abs=1e-6)
            assert solo[r.name]["dev_per"] == pytest.approx(news[r.name]["dev_per"], abs=1e-6)
    assert stopped_at == {1: 1, 0: 3, 2: 3}
    _assert_same(stacked[0], alone[0], "seed 0 after seed 1 stopped")
    _assert_same(stacked[2], alone[1], "seed 2 after seed 1 stopped")
    assert len(stacked[1].history) == 1 and stacked[1].best_state is not None
    for k, v in stacked[1].model.state_dict().items():
        assert torch.equal(v, stacked[1].best_state[k])  # not moved after it stopped


@pytest.mark.parametrize("chunk_width", [0, 7])
def test_a_seed_that_diverges_stops_alone_and_the_others_train_on_unchanged(data, chunk_width):
    """Seed 1's loss turns NaN in epoch 2 (a NaN planted in its output bias): it steps no more and
    stops with its epoch-1 weights as its best, the message naming its run, epoch and batch; seeds
    0 and 2 end where they end trained alone. A seed that diverges before any best epoch fails."""
    from cluster.train import final_metrics

    corpus, train, dev, graph = data
    config = TrainConfig(cell="gru", layers=1, hidden=8, batch_size=4, clip=0.5, lr=3e-3, epochs=3, patience=10,
                         stack_seeds=SEEDS, chunk_width=chunk_width)
    stacked = _seeds(corpus, config)
    alone = [_seeds(corpus, replace(config, stack_seeds=(), seed=s))[0] for s in (0, 2)]
    stopped_at = {}
    for epoch in (1, 2, 3):
        if epoch == 2:
            with torch.no_grad():
                stacked[1].model.output.bias[3] = float("nan")
            planted = {k: v.clone() for k, v in stacked[1].model.state_dict().items()}
        active = [r for r in stacked if r.config.seed not in stopped_at]
        news, stopping = epoch_of_seeds(active, train, dev, graph, config, epoch)
        for r in stopping:
            stopped_at[r.config.seed] = epoch
        for r in alone:
            solo, _ = epoch_of_seeds([r], train, dev, graph, config, epoch)
            assert solo[r.name]["dev_frame_acc"] == pytest.approx(news[r.name]["dev_frame_acc"], abs=1e-6)
    assert stopped_at == {1: 2, 0: 3, 2: 3}
    _assert_same(stacked[0], alone[0], "seed 0 beside a diverged seed")
    _assert_same(stacked[2], alone[1], "seed 2 beside a diverged seed")
    bad = stacked[1]
    assert bad.diverged and "epoch 2: the loss is nan" in bad.diverged and bad.name in bad.diverged
    assert not bad.failed and bad.done is False and bad.best_state is not None
    for k, v in bad.model.state_dict().items():
        assert torch.allclose(v, planted[k], rtol=0, atol=0, equal_nan=True), k  # no step after its loss turned NaN
    final = final_metrics(bad, {"per": 0.5, "frame_acc": 0.5})
    assert final["best_epoch"] == 1 and final["epoch"] == 2 and "loss is nan" in final["diverged"]

    early = _seeds(corpus, config)
    with torch.no_grad():
        early[0].model.output.bias[0] = float("inf")
    _, stopping = epoch_of_seeds(early, train, dev, graph, config, 1)
    assert [r.config.seed for r in stopping] == [0] and early[0].failed and early[0].done
    assert early[0].state()["failed"]


def test_seed_configs_are_each_seeds_own_run(tmp_path):
    config = TrainConfig(cell="gru", layers=1, hidden=16, stack_seeds=(0, 3), runs_dir=str(tmp_path))
    runs = seed_configs(config)
    assert [c.seed for c in runs] == [0, 3] and all(not c.stack_seeds and not c.runs_dir for c in runs)
    assert [c.run_dir for c in runs] == [str(tmp_path / "gru_L1_H16_s0"), str(tmp_path / "gru_L1_H16_s3")]
    assert seed_configs(replace(config, stack_seeds=())) == [replace(config, stack_seeds=())]
    with pytest.raises(Exception, match="stack_seeds"):
        TrainConfig(stack_seeds=(1, 1))


def _two_ranks(rank: int, corpus_dir: str, out: str, port: int) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    corpus, train, _, _ = _load(corpus_dir)
    config = TrainConfig(cell="gru", layers=1, hidden=8, batch_size=3, chunk_width=7, clip=0.05, stack_seeds=(0, 1))
    stacked = _seeds(corpus, config)
    alone = [_seeds(corpus, replace(config, stack_seeds=(), seed=s))[0] for s in (0, 1)]
    for epoch in (1, 2):
        train_epoch(stacked, train, config, epoch, rank, 2)
        for r in alone:
            train_epoch([r], train, config, epoch, rank, 2)
    for a, b in zip(stacked, alone):
        _assert_same(a, b, f"rank {rank}, seed {a.config.seed}")
    torch.save([r.model.state_dict() for r in stacked], f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_workers_average_each_seeds_gradients_and_agree(small_corpus, tmp_path):
    """Two gloo ranks (what Ray Train's workers run): a stack of two seeds on streams, whose step
    counts differ per seed, equals each seed trained alone on the same two ranks, and the ranks end
    with the same weights bit for bit."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_two_ranks, args=(str(small_corpus), str(tmp_path), port), nprocs=2)
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


@pytest.mark.parametrize("min_delta, stops_after", [(0.0, None), (0.5, 5)])
def test_end_epoch_stops_a_seed_whose_gain_falls_under_min_delta(min_delta, stops_after):
    """Patience 2: a seed still gaining 0.2 points an epoch goes on under the plain rule and stops
    once two epochs gained under ``min_delta`` points (the curve of a stream run near convergence)."""
    from cluster.train import end_epoch

    config = TrainConfig(cell="gru", layers=1, hidden=4, epochs=12, patience=2, min_delta=min_delta)
    run = make_seed(config, 5, torch.zeros(40), torch.ones(40))
    curve = [0.70, 0.76, 0.780, 0.782, 0.784, 0.786]
    stopped = next((e for e, acc in enumerate(curve, 1) if end_epoch(run, {"epoch": e, "dev_frame_acc": acc})), None)
    assert stopped == stops_after
    with pytest.raises(Exception, match="min_delta"):
        TrainConfig(min_delta=-1.0)


def test_newbob_halves_and_stops_each_seed_on_its_own_curve_and_resumes_halving():
    """schedule="newbob" per seed: seed 0's epoch 3 gains 0.3 points (< 0.5): its rate halves from
    epoch 4 on, and epoch 5's 0.05-point gain stops it; seed 1, still gaining 1+ point an epoch,
    keeps its rate. A seed's halving survives its saved state (a resumed worker halves on)."""
    from cluster.train import end_epoch

    config = TrainConfig(cell="gru", layers=1, hidden=4, epochs=12, lr=1e-3, schedule="newbob", stack_seeds=(0, 1),
                         patience=1)  # patience is not newbob's rule: a dip alone does not stop it
    runs = [make_seed(c, 5, torch.zeros(40), torch.ones(40)) for c in seed_configs(config)]
    curves = {0: [0.60, 0.70, 0.703, 0.709, 0.7095], 1: [0.60, 0.62, 0.64, 0.66, 0.68]}
    lrs, stopped = {0: [], 1: []}, {}
    for e in range(1, 6):
        for r in runs:
            if r.config.seed in stopped:
                continue
            if end_epoch(r, {"epoch": e, "dev_frame_acc": curves[r.config.seed][e - 1]}):
                stopped[r.config.seed] = e
            lrs[r.config.seed].append(r.opt.param_groups[0]["lr"])  # the rate of the next epoch
    assert stopped == {0: 5}
    assert lrs[0] == pytest.approx([1e-3, 1e-3, 5e-4, 2.5e-4, 2.5e-4])  # stopping does not halve again
    assert lrs[1] == pytest.approx([1e-3] * 5)
    # a dip while not halving starts halving (the gain over the best before is negative), no stop
    dip = make_seed(replace(config, stack_seeds=()), 5, torch.zeros(40), torch.ones(40))
    assert not any(end_epoch(dip, {"epoch": e, "dev_frame_acc": a}) for e, a in enumerate([0.65, 0.75, 0.66], 1))
    assert dip.halving and dip.opt.param_groups[0]["lr"] == pytest.approx(5e-4)
    again = make_seed(replace(config, stack_seeds=()), 5, torch.zeros(40), torch.ones(40))
    again.restore(dip.state())
    assert again.halving and again.opt.param_groups[0]["lr"] == pytest.approx(5e-4)
    assert not end_epoch(again, {"epoch": 4, "dev_frame_acc": 0.79})  # +4 points: on, halved again
    assert again.opt.param_groups[0]["lr"] == pytest.approx(2.5e-4)
    assert end_epoch(again, {"epoch": 5, "dev_frame_acc": 0.7905})
    with pytest.raises(Exception, match="newbob_stop"):
        TrainConfig(schedule="newbob", newbob_start=0.1, newbob_stop=0.5)



def test_stream_loss_slots_weighs_a_step_by_its_scored_share_of_the_batch():
    """stream_loss="slots": a step's summed CE is divided by its frame slots (streams x chunk_width
    x workers), so the epoch's last steps, where streams have run out, weigh by what they score;
    under "frames" by their own frames, so one stream left weighs as much as a full step."""
    from cluster.streams import stream_schedule
    from cluster.train import _stream_scale

    import numpy as np

    steps = stream_schedule(np.array([30, 12, 9, 7, 5]), streams=2, chunk_width=4, seed=0, epoch=1, rank=0,
                            world_size=2)
    full, tail = steps[0], steps[-1]
    assert full.frames_all == 16 and (tail.utt >= 0).sum() <= 1 and tail.frames_all < 16
    for world in (1, 2):
        frames = TrainConfig(chunk_width=4, batch_size=2)
        slots = replace(frames, stream_loss="slots")
        assert _stream_scale(frames, full, world) == pytest.approx(world / 16)
        assert _stream_scale(frames, tail, world) == pytest.approx(world / tail.frames_all)  # a full step's weight
        assert _stream_scale(slots, tail, world) == pytest.approx(1 / 8)  # per frame as in a full step
        assert _stream_scale(slots, full, world) == pytest.approx(1 / 8)
    with pytest.raises(Exception, match="stream_loss"):
        TrainConfig(stream_loss="mean")
