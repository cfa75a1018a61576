"""Carried-state stream training (Kaldi nnet1's multi-stream truncated BPTT): B streams per worker,
each walking through its own utterances in windows of ``chunk_width`` frames.

A stream's recurrent state (every layer's) is carried, detached, from one window to the next of the
same utterance and is exactly zero where an utterance starts. A window never spans two utterances:
an utterance's last window is shorter (padded, no loss), and the stream's next window starts the
next utterance from zero state. Each utterance is spliced whole once, so a window's edge frames see
its real neighbours: a stream's forward of an utterance equals the whole-utterance forward.

Hand-written because no library schedules streams this way (torch's samplers hand out whole
items): the schedule is plain numpy, computed alike on every rank, so every rank takes the same
number of steps and each step's loss can be normalised by the frames scored on all ranks together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Step:
    """One training step of this rank's streams: row b scores frames [start[b], end[b]) of utterance
    utt[b] (-1: the stream has run out of utterances; it scores nothing). ``frames_all``: the frames
    this step scores on every rank together (the loss's denominator, so DDP's gradient average is the
    mean over all of them)."""

    utt: np.ndarray
    start: np.ndarray
    end: np.ndarray
    frames_all: int

    @property
    def frames(self) -> int:
        return int((self.end - self.start).sum())


def stream_schedule(lengths: np.ndarray, streams: int, chunk_width: int, seed: int, epoch: int,
                    rank: int = 0, world_size: int = 1) -> list[Step]:
    """This rank's steps for one epoch.

    The utterances are shuffled (seeded by seed and epoch); streams * world_size streams take them
    in that order, a stream taking the next one when its current one ends (stream g belongs to rank
    g mod world_size). The epoch ends when every utterance is done: every frame is scored once, and
    every rank takes the same number of steps (the last few have some streams idle).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if streams < 1 or chunk_width < 1:
        raise ValueError(f"streams={streams} and chunk_width={chunk_width} must be at least 1")
    if len(lengths) < world_size:
        raise ValueError(f"{len(lengths)} utterances: too few for {world_size} workers")
    order = np.random.default_rng([seed, epoch]).permutation(len(lengths))
    n = streams * world_size
    utt = np.full(n, -1, dtype=np.int64)
    pos = np.zeros(n, dtype=np.int64)
    nxt, steps = 0, []
    while True:
        for g in np.flatnonzero((utt < 0) | (pos >= lengths[np.maximum(utt, 0)])):
            utt[g], pos[g] = (order[nxt], 0) if nxt < len(order) else (-1, 0)
            nxt += nxt < len(order)
        active = utt >= 0
        if not active.any():
            return steps
        end = np.where(active, np.minimum(pos + chunk_width, lengths[np.maximum(utt, 0)]), 0)
        start = np.where(active, pos, 0)
        mine = slice(rank, None, world_size)
        steps.append(Step(utt[mine].copy(), start[mine].copy(), end[mine].copy(), int((end - start).sum())))
        pos = end


class StreamBatches:
    """Assembles a rank's steps into model input: x [chunk_width, B, input_dim] (windows of each
    utterance's spliced frames), lengths [B] (an idle row's is 1, as packed sequences need a frame:
    it scores nothing), targets y [B, chunk_width] (padding: ignore_index) and ``fresh`` [B] (True
    where the row starts an utterance or is idle: its state must be zero).

    ``splice`` maps one utterance's features [T, F] to its spliced frames [T, 1, input_dim] (the
    model's own splice, CMVN included); each utterance is spliced once, when its stream starts it,
    and dropped when its last window is out.
    """

    def __init__(self, feats: list[np.ndarray], targets: list[np.ndarray], splice, ignore_index: int = -100):
        self.feats, self.targets, self.splice, self.ignore = feats, targets, splice, ignore_index
        self.spliced: dict[int, torch.Tensor] = {}

    def __call__(self, step: Step, width: int):
        rows = len(step.utt)
        y = torch.full((rows, width), self.ignore, dtype=torch.long)
        x, lengths = None, torch.ones(rows, dtype=torch.long)
        for b, (u, s, e) in enumerate(zip(step.utt.tolist(), step.start.tolist(), step.end.tolist())):
            if u < 0:
                continue
            if s == 0 or u not in self.spliced:
                self.spliced[u] = self.splice(self.feats[u])
            frames = self.spliced[u]
            if x is None:
                x = frames.new_zeros(width, rows, frames.shape[2])
            x[: e - s, b] = frames[s:e, 0]
            y[b, : e - s] = torch.from_numpy(self.targets[u][s:e].astype(np.int64))
            lengths[b] = e - s
            if e >= len(self.feats[u]):
                del self.spliced[u]
        if x is None:  # every stream of this rank is idle (the epoch's last steps): a step of padding
            dim = self.splice(self.feats[0][:1]).shape[2]
            x = torch.zeros(width, rows, dim)
        return x, lengths, y, torch.from_numpy(step.start == 0) | torch.from_numpy(step.utt < 0)


def carry(states, fresh: torch.Tensor):
    """Each layer's state, detached (truncated BPTT), and exactly zero in the rows marked fresh."""
    if states is None:
        return None
    keep = ~fresh.reshape(-1, 1)
    return [tuple(torch.where(keep.to(s.device), s.detach(), torch.zeros((), dtype=s.dtype, device=s.device))
                  for s in layer) for layer in states]
