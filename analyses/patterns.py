"""Per-frame views of a layer for the unit explorer: a unit's top frames, a unit order, and
LSTMVis's select-and-match of hidden-state patterns, for speech frames instead of text tokens.

All functions take the per-frame values of one layer and quantity as ``[T, H]`` arrays, one per
utterance (``{utt_id: values}``), as a capture gives them, and return plain numbers; the explorer
(``service/explorer``) serves them and draws nothing here.

Pattern select (the span a person brushed, frames ``start..end-1`` of one utterance): a unit is
*on* at a frame when its value exceeds ``threshold``; the selected units are those on for at least
``inside`` of the span's frames and for at most ``outside`` of the ``margin`` frames on each side
(LSTMVis selects the cells over the threshold throughout the selection and below it just before
and after; the two fractions relax "throughout" and "below" for speech, where a phone's edges are
blurred by the 25 ms window). Match: frames where at least ``min_share`` of the selected units are
on, grouped into runs of consecutive frames; a run of ``min_frames`` or more is a match, ranked by
its length times its mean share.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.cluster.hierarchy import leaves_list, linkage


@dataclass(frozen=True)
class Frame:
    utt_id: str
    frame: int
    value: float


def top_frames(values: dict[str, np.ndarray], unit: int, k: int = 10, by: str = "abs",
               spacing: int = 10) -> list[Frame]:
    """The ``k`` frames where ``unit`` is most active over the utterances, at least ``spacing``
    frames apart within an utterance (one event per peak, not its neighbours). ``by``: "abs" (|v|,
    for c and m, whose sign is arbitrary), "high" (v, for gates), "low" (-v)."""
    if by not in ("abs", "high", "low"):
        raise ValueError(f"by must be abs, high or low, not {by!r}")
    cands = []
    for utt_id, v in values.items():
        x = np.asarray(v[:, unit], dtype=np.float64)
        score = np.abs(x) if by == "abs" else (x if by == "high" else -x)
        order = np.argsort(-score, kind="stable")
        taken: list[int] = []
        for t in order:  # greedy peak picking: the best frame, then the best one far enough from it
            if len(taken) == k:
                break
            if all(abs(int(t) - s) >= spacing for s in taken):
                taken.append(int(t))
        cands += [(float(score[t]), utt_id, t, float(x[t])) for t in taken]
    cands.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [Frame(u, t, v) for _, u, t, v in cands[:k]]


def order_units(values: np.ndarray, how: str, scores: np.ndarray | None = None) -> np.ndarray:
    """A permutation of the H units of ``values`` [T, H] for a heatmap: "index" (as stored),
    "variance" (most variable first, over these frames), "score" (by ``scores`` [H], highest first:
    e.g. responsibility for a phone), "cluster" (average-linkage on 1 - |correlation|, leaf
    order: units that move together, or exactly against each other, sit together: a gated unit's
    sign carries no meaning, as in the matching analysis)."""
    H = values.shape[1]
    if how == "index":
        return np.arange(H)
    if how == "variance":
        return np.argsort(-values.astype(np.float64).var(axis=0), kind="stable")
    if how == "score":
        if scores is None or len(scores) != H:
            raise ValueError(f"ordering by score needs {H} scores")
        return np.argsort(-np.nan_to_num(np.asarray(scores, np.float64), nan=-np.inf), kind="stable")
    if how == "cluster":
        x = values.astype(np.float64)
        x = x - x.mean(axis=0)
        norm = np.linalg.norm(x, axis=0)
        live = norm > 0  # a constant unit has no correlation with anything: it goes last
        if live.sum() < 2:
            return np.concatenate([np.flatnonzero(live), np.flatnonzero(~live)])
        z = x[:, live] / norm[live]
        dist = np.clip(1.0 - np.abs(z.T @ z), 0.0, 1.0)
        iu = np.triu_indices(dist.shape[0], 1)
        leaves = leaves_list(linkage(dist[iu], method="average"))
        return np.concatenate([np.flatnonzero(live)[leaves], np.flatnonzero(~live)])
    raise ValueError(f"unknown unit order {how!r}: index, variance, score or cluster")


@dataclass(frozen=True)
class Selection:
    units: list[int]  # selected units, most clearly on first
    inside: list[float]  # share of the span's frames each is on
    outside: list[float]  # share of the margin frames each is on


def select_pattern(values: np.ndarray, start: int, end: int, threshold: float, margin: int = 5,
                   inside: float = 0.9, outside: float = 0.1) -> Selection:
    """The units on inside frames ``start..end-1`` of ``values`` [T, H] and off around them."""
    T = values.shape[0]
    if not 0 <= start < end <= T:
        raise ValueError(f"span {start}..{end} is not inside the utterance's {T} frames")
    on = np.asarray(values, dtype=np.float32) > threshold
    share_in = on[start:end].mean(axis=0)
    around = np.concatenate([on[max(0, start - margin):start], on[end:end + margin]])
    share_out = around.mean(axis=0) if len(around) else np.zeros(on.shape[1])
    keep = np.flatnonzero((share_in >= inside) & (share_out <= outside))
    keep = keep[np.lexsort((share_out[keep], -share_in[keep]))]
    return Selection([int(u) for u in keep], [float(share_in[u]) for u in keep], [float(share_out[u]) for u in keep])


@dataclass(frozen=True)
class Match:
    utt_id: str
    start: int
    end: int  # exclusive
    share: float  # mean share of the selected units on over the run

    @property
    def score(self) -> float:
        return (self.end - self.start) * self.share


def match_pattern(values: dict[str, np.ndarray], units: list[int], threshold: float, min_share: float = 0.8,
                  min_frames: int = 3, limit: int = 20) -> list[Match]:
    """Runs of frames, over the utterances, where at least ``min_share`` of ``units`` are on."""
    if not units:
        return []
    idx = np.asarray(units)
    found = []
    for utt_id, v in values.items():
        share = (np.asarray(v[:, idx], dtype=np.float32) > threshold).mean(axis=1)
        hit = np.concatenate([[False], share >= min_share, [False]])
        edges = np.flatnonzero(hit[1:] != hit[:-1])
        for s, e in zip(edges[::2], edges[1::2]):
            if e - s >= min_frames:
                found.append(Match(utt_id, int(s), int(e), float(share[s:e].mean())))
    found.sort(key=lambda m: (-m.score, m.utt_id, m.start))
    return found[:limit]


def segments(phones: np.ndarray) -> list[tuple[int, int, int]]:
    """(start, end, phone id) runs of a per-frame phone sequence: the alignment tier."""
    phones = np.asarray(phones)
    if phones.size == 0:
        return []
    cut = np.flatnonzero(phones[1:] != phones[:-1]) + 1
    starts = np.concatenate([[0], cut])
    ends = np.concatenate([cut, [phones.size]])
    return [(int(s), int(e), int(phones[s])) for s, e in zip(starts, ends)]
