"""Length-bucketed batches of whole utterances, split across data-parallel workers.

Hand-written rather than ``DistributedSampler`` because that samples *utterances*: here a batch is
a run of similar-length utterances (little padding, so the recurrence wastes few steps), and every
rank must take the same number of steps per epoch or DDP's all-reduce waits forever.
"""

from __future__ import annotations

import numpy as np
import torch


def bucket_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int,
                   rank: int = 0, world_size: int = 1) -> list[np.ndarray]:
    """Utterance indices of this rank's batches for one epoch.

    Utterances are sorted by length (ties broken by a seeded shuffle), cut into batches of
    ``batch_size``, the batch order is shuffled per epoch, and rank r takes batches r, r+W, ...
    up to the same count on every rank (the few left over are skipped this epoch; the shuffle
    changes which).
    """
    rng = np.random.default_rng([seed, epoch])
    jitter = rng.permutation(len(lengths))
    order = jitter[np.argsort(np.asarray(lengths)[jitter], kind="stable")]
    batches = [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
    batches = [batches[i] for i in rng.permutation(len(batches))]
    per_rank = len(batches) // world_size
    if per_rank == 0:
        raise ValueError(f"{len(lengths)} utterances make {len(batches)} batches of {batch_size}: "
                         f"too few for {world_size} workers")
    return batches[rank::world_size][:per_rank]


def pad_batch(feats: list[np.ndarray], targets: list[np.ndarray] | None = None, ignore_index: int = -100):
    """Stack utterances into ``x [B, T, D]``, ``lengths [B]`` and ``y [B, T]`` (padding = ignore_index)."""
    lengths = torch.tensor([len(f) for f in feats], dtype=torch.long)
    t_max, dim = int(lengths.max()), feats[0].shape[1]
    x = torch.zeros(len(feats), t_max, dim, dtype=torch.float32)
    for b, f in enumerate(feats):
        x[b, : len(f)] = torch.from_numpy(f)
    if targets is None:
        return x, lengths
    y = torch.full((len(feats), t_max), ignore_index, dtype=torch.long)
    for b, t in enumerate(targets):
        y[b, : len(t)] = torch.from_numpy(t.astype(np.int64))
    return x, lengths, y
