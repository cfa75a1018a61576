"""Splits by speaker: no speaker in two splits, every split non-empty, shares followed, seeded."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from cluster.data.importers.source import Audio, SourceUtterance
from cluster.data.importers.splits import by_speaker, parse_shares
from cluster.errors import InputError


def utts(counts: list[int]) -> list[SourceUtterance]:
    return [SourceUtterance(f"s{k}-{i}", f"s{k}", "x", Audio("a.wav"), (), None, "f")
            for k, n in enumerate(counts) for i in range(n)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 30), min_size=3, max_size=40), st.integers(0, 5))
def test_no_speaker_in_two_splits_and_none_empty(counts, seed):
    us = utts(counts)
    split = by_speaker(us, (80, 10, 10), seed)
    per_speaker = {}
    for u in us:
        per_speaker.setdefault(u.speaker, set()).add(split[u.utt_id])
    assert all(len(v) == 1 for v in per_speaker.values())
    assert set(split.values()) == {"train", "dev", "test"}
    assert by_speaker(us, (80, 10, 10), seed) == split  # seeded


def test_shares_are_followed_with_many_speakers():
    us = utts([5] * 200)
    split = list(by_speaker(us, (80, 10, 10), 0).values())
    assert abs(split.count("train") / len(split) - 0.8) < 0.02 and abs(split.count("test") / len(split) - 0.1) < 0.02


def test_bad_shares_and_too_few_speakers_are_refused():
    for text in ("80,20", "80,10,5", "0,50,50", "a,b,c"):
        with pytest.raises(InputError, match="--splits"):
            parse_shares(text)
    with pytest.raises(InputError, match="2 speaker"):
        by_speaker(utts([3, 3]), (80, 10, 10), 0)
