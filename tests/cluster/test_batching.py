import numpy as np
import pytest

from cluster.batching import bucket_batches, pad_batch


def test_ranks_take_disjoint_equal_length_lists_of_similar_length_batches():
    lengths = np.random.default_rng(0).integers(50, 500, 203)
    per_rank = [bucket_batches(lengths, 8, seed=1, epoch=3, rank=r, world_size=3) for r in range(3)]
    assert len({len(b) for b in per_rank}) == 1  # DDP needs the same step count on every rank
    seen = np.concatenate([np.concatenate(b) for b in per_rank])
    assert len(seen) == len(set(seen.tolist()))
    assert len(seen) >= 203 - 3 * 8  # at most a few batches left out
    spread = np.mean([np.ptp(lengths[b]) for bs in per_rank for b in bs])
    assert spread < 0.1 * np.ptp(lengths)  # bucketing: batches hold similar lengths


def test_order_is_seeded_and_changes_per_epoch():
    lengths = np.arange(100) % 37
    a = bucket_batches(lengths, 4, seed=0, epoch=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, bucket_batches(lengths, 4, seed=0, epoch=1)))
    assert not all(np.array_equal(x, y) for x, y in zip(a, bucket_batches(lengths, 4, seed=0, epoch=2)))
    with pytest.raises(ValueError, match="too few for 4 workers"):
        bucket_batches(np.ones(5), 4, 0, 0, 0, 4)


def test_pad_batch_marks_padding_with_ignore_index():
    feats = [np.ones((3, 2), np.float32), 2 * np.ones((5, 2), np.float32)]
    x, lengths, y = pad_batch(feats, [np.array([1, 2, 3]), np.array([4, 5, 6, 7, 8])])
    assert x.shape == (2, 5, 2) and lengths.tolist() == [3, 5]
    assert (x[0, 3:] == 0).all() and (y[0, 3:] == -100).all() and y[1].tolist() == [4, 5, 6, 7, 8]
