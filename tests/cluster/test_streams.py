"""Carried-state streams: the schedule scores every frame once, seeded, with equal steps per rank;
a stream forward over windows equals each utterance's whole forward (the resets are exact)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cluster.errors import InputError
from cluster.models import ModelConfig, build_model
from cluster.streams import StreamBatches, carry, stream_schedule
from cluster.train import TrainConfig

LENGTHS = np.random.default_rng(3).integers(1, 60, 41)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_frame_is_scored_once_and_every_rank_takes_the_same_steps(world):
    per_rank = [stream_schedule(LENGTHS, 4, 7, seed=1, epoch=2, rank=r, world_size=world) for r in range(world)]
    assert len({len(s) for s in per_rank}) == 1
    seen = np.zeros((len(LENGTHS), LENGTHS.max()), dtype=int)
    for steps in per_rank:
        for k, st in enumerate(steps):
            assert st.frames_all == sum(s[k].frames for s in per_rank)
            assert ((st.end - st.start) <= 7).all()
            for u, s, e in zip(st.utt, st.start, st.end):
                if u >= 0:
                    seen[u, s:e] += 1
                else:
                    assert s == e == 0
    for u, n in enumerate(LENGTHS):
        assert (seen[u, :n] == 1).all() and (seen[u, n:] == 0).all()


def test_each_stream_walks_its_utterances_in_order_and_windows_follow_on():
    steps = stream_schedule(LENGTHS, 3, 5, seed=0, epoch=1)
    for b in range(3):
        prev = None
        for st in steps:
            u, s = st.utt[b], st.start[b]
            if prev is not None and u >= 0 and prev[0] == u:
                assert s == prev[1]  # the next window of the same utterance starts where the last ended
            elif u >= 0:
                assert s == 0 and (prev is None or prev[1] == LENGTHS[prev[0]])  # a new one starts after the last ends
            prev = (u, st.end[b]) if u >= 0 else prev


def test_orders_are_seeded_per_epoch_and_per_seed():
    def order(seed, epoch):
        return [tuple(st.utt.tolist()) for st in stream_schedule(LENGTHS, 4, 9, seed, epoch)]

    assert order(0, 1) == order(0, 1)
    assert order(0, 1) != order(0, 2) and order(0, 1) != order(1, 1)
    with pytest.raises(ValueError, match="too few for 3 workers"):
        stream_schedule(np.ones(2, int), 2, 4, 0, 1, 0, 3)
    with pytest.raises(InputError, match="chunk_width=-1"):
        TrainConfig(chunk_width=-1)


@pytest.mark.parametrize("cell", ["lstm", "gru", "lstm_lazy", "lstm_fused"])
def test_a_stream_forward_over_windows_equals_each_utterances_whole_forward(cell):
    """Windows of 6 frames on 2 streams over 5 utterances: every utterance's logits equal its whole
    forward, so each reset at an utterance start is exact and each window edge splices real neighbours;
    a nonzero state planted where an utterance starts changes them (the check can fail)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(cell=cell, layers=2, hidden=12, num_targets=9), torch.zeros(40), torch.ones(40))
    rng = np.random.default_rng(5)
    feats = [rng.standard_normal((n, 40)).astype(np.float32) for n in (13, 6, 4, 17, 9)]
    targets = [rng.integers(0, 9, len(f)) for f in feats]
    lengths = np.array([len(f) for f in feats])
    with torch.no_grad():
        whole = [model(torch.from_numpy(f)) for f in feats]

    def streamed(plant: bool):
        out = [torch.zeros(n, 9) for n in lengths]
        batches = StreamBatches(feats, targets, lambda f: model.splice(torch.from_numpy(f)[None]))
        states = None
        for st in stream_schedule(lengths, 2, 6, seed=0, epoch=1):
            x, lens, y, fresh = batches(st, 6)
            states = carry(states, fresh)
            if plant and states is not None:
                states = [tuple(torch.where(fresh[:, None], torch.full_like(s, 0.5), s) for s in layer)
                          for layer in states]
            logits, states = model(x, lens, spliced=True, state=states)
            for b, (u, s, e) in enumerate(zip(st.utt, st.start, st.end)):
                if u >= 0:
                    out[u][s:e] = logits[b, : e - s]
                    assert (y[b, : e - s] == torch.from_numpy(targets[u][s:e])).all()
                assert (y[b, e - s:] == -100).all()  # padding gets no loss
        return out

    with torch.no_grad():
        for w, s in zip(whole, streamed(False)):
            torch.testing.assert_close(s, w, rtol=1e-5, atol=1e-5)
        planted = streamed(True)
    assert any(not torch.allclose(p, w, atol=1e-3) for p, w in zip(planted[1:], whole[1:]))


def test_carry_detaches_and_zeroes_fresh_rows_exactly():
    s = torch.randn(3, 4, requires_grad=True) * 2
    (out,), = carry([(s,)], torch.tensor([False, True, False]))
    assert not out.requires_grad and (out[1] == 0).all() and torch.equal(out[[0, 2]], s.detach()[[0, 2]])
