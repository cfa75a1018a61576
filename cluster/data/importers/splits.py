"""train / dev / test: the source's own splits where it has them, else seeded by speaker.

A speaker split puts every speaker's utterances in one split (so dev and test voices are never heard
in training, as in the embedded corpus): speakers are shuffled with the seed and taken in that order
until each split holds its share of the utterances.
"""

from __future__ import annotations

import numpy as np

from cluster.data.importers.source import SourceUtterance
from cluster.data.importers.writer import SPLITS
from cluster.errors import InputError

DEFAULT_SHARES = (80, 10, 10)


def parse_shares(text: str) -> tuple[int, int, int]:
    """``--splits 80,10,10``: three positive percentages of the utterances that add up to 100."""
    try:
        shares = tuple(int(p) for p in text.split(","))
    except ValueError:
        shares = ()
    if len(shares) != 3 or min(shares) <= 0 or sum(shares) != 100:
        raise InputError(f"--splits {text!r}: three positive whole percentages train,dev,test adding up to 100, "
                         f"e.g. 80,10,10")
    return shares  # type: ignore[return-value]


def by_speaker(utts: list[SourceUtterance], shares: tuple[int, int, int], seed: int) -> dict[str, str]:
    """utt -> split, no speaker in two splits; each split gets at least one speaker."""
    counts: dict[str, int] = {}
    for u in utts:
        counts[u.speaker] = counts.get(u.speaker, 0) + 1
    speakers = sorted(counts)
    if len(speakers) < len(SPLITS):
        raise InputError(f"the source has {len(speakers)} speaker(s); a split by speaker needs at least "
                         f"{len(SPLITS)} (one per split)")
    order = [speakers[i] for i in np.random.default_rng(seed).permutation(len(speakers))]
    total, bounds = len(utts), np.cumsum(shares) / 100.0
    split_of_speaker, taken = {}, 0
    for k, spk in enumerate(order):
        split = next(i for i, b in enumerate(bounds) if (taken + counts[spk] / 2) / total <= b + 1e-12)
        needed = [i for i in range(len(SPLITS)) if i > split and i not in split_of_speaker.values()]
        if len(order) - k <= len(needed):  # as many speakers left as later splits without one
            split = needed[0]
        split_of_speaker[spk] = split
        taken += counts[spk]
    missing = set(range(len(SPLITS))) - set(split_of_speaker.values())
    for i in sorted(missing):  # an earlier split was skipped: give it the last speaker of the busiest split
        busiest = max(range(len(SPLITS)), key=lambda j: sum(1 for v in split_of_speaker.values() if v == j))
        spk = next(s for s in reversed(order) if split_of_speaker[s] == busiest)
        split_of_speaker[spk] = i
    return {u.utt_id: SPLITS[split_of_speaker[u.speaker]] for u in utts}


def from_source(utts: list[SourceUtterance], where: str) -> dict[str, str]:
    """utt -> the source's own split; each of train, dev and test must hold an utterance."""
    out = {u.utt_id: u.split for u in utts if u.split in SPLITS}
    empty = [s for s in SPLITS if s not in out.values()]
    if empty:
        raise InputError(f"{where}: the source's own splits leave {', '.join(empty)} empty; pass --splits "
                         f"(e.g. 80,10,10) to split by speaker instead")
    return out


def choose(utts: list[SourceUtterance], shares: tuple[int, int, int] | None, seed: int, where: str) -> tuple[dict[str, str], str]:
    """The split of every utterance and a line saying how it was made: ``shares`` (an explicit
    ``--splits``) or a source without splits means by speaker."""
    if shares is None and any(u.split for u in utts):
        return from_source(utts, where), "the source's own"
    shares = shares or DEFAULT_SHARES
    return by_speaker(utts, shares, seed), f"by speaker, {','.join(map(str, shares))} % of utterances, seed {seed}"
