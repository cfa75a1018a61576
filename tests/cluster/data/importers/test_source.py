"""The checks every source shares, on hand-made intervals: contiguity within 1 ms, TIMIT's merged q,
unaligned edges labelled SIL, alignments past the audio, word tiers."""

from __future__ import annotations

import pytest

from cluster.data.importers.phonesets import PhoneSet
from cluster.data.importers.source import (Audio, Interval, SourceUtterance, check_ids, checked_words,
                                           fit_to_audio, mapped_segments)
from cluster.data.kaldi import CorpusError


def utt(phones, words=None, text="a word", utt_id="u1") -> SourceUtterance:
    return SourceUtterance(utt_id, "spk", text, Audio("a.wav"), tuple(Interval(*p) for p in phones),
                           None if words is None else tuple(Interval(*w) for w in words), "src.txt")


def test_sub_millisecond_gaps_close_and_q_merges_into_the_phone_before():
    segs = mapped_segments(utt([("q", 0.0, 0.05), ("aa", 0.05, 0.2), ("q", 0.2, 0.25), ("t", 0.2504, 0.3)]),
                           PhoneSet("timit"))
    assert [(s.phone, s.start, s.end) for s in segs] == [("AA", 0.0, 0.25), ("T", 0.25, 0.3)]


def test_edges_without_phones_become_sil_and_an_alignment_past_the_audio_is_refused():
    u = utt([("AH1", 0.1, 0.3), ("T", 0.3, 0.5)])
    segs, filled = fit_to_audio(u, mapped_segments(u, PhoneSet("arpabet")), 0.6)
    assert [(s.phone, s.start, s.end) for s in segs] == [("SIL", 0.0, 0.1), ("AH", 0.1, 0.3), ("T", 0.3, 0.5),
                                                         ("SIL", 0.5, 0.6)]
    assert filled == pytest.approx(0.2)
    fit_to_audio(u, mapped_segments(u, PhoneSet("arpabet")), 0.48)  # within the 25 ms tolerance
    with pytest.raises(CorpusError, match=r"src.txt: utterance u1: alignment ends at 0.500 s, after the end of "
                                          r"its audio \(0.450 s, a.wav\)"):
        fit_to_audio(u, mapped_segments(u, PhoneSet("arpabet")), 0.45)


@pytest.mark.parametrize("phones, message", [
    ([("AH", 0.0, 0.1), ("T", 0.102, 0.2)], r"gap between phone intervals 'AH' 0.000-0.100 s and 'T' 0.102-0.200 s"),
    ([("AH", 0.0, 0.1), ("T", 0.098, 0.2)], r"phone intervals overlap: 'AH' 0.000-0.100 s and 'T' 0.098-0.200 s"),
    ([("AH", 0.0, 0.1), ("T", 0.1, 0.1)], r"phone interval 'T' 0.100-0.100 s has no positive duration"),
    ([("AH", 0.0, 0.1), ("XX", 0.1, 0.2)], r"phone 'XX' at 0.100-0.200 s has no mapping to ARPAbet-39 \+ SIL"),
    ([], r"no phone intervals"),
])
def test_bad_phone_intervals_are_named(phones, message):
    with pytest.raises(CorpusError, match=r"^src.txt: utterance u1: " + message):
        mapped_segments(utt(phones), PhoneSet("arpabet"))


def test_empty_transcripts_overlapping_words_and_bad_ids_are_refused():
    with pytest.raises(CorpusError, match="utterance u1: empty transcript"):
        mapped_segments(utt([("AH", 0, 1)], text="  "), PhoneSet("arpabet"))
    with pytest.raises(CorpusError, match="word intervals overlap: 'a' 0.000-0.500 s and 'b' 0.400-0.900 s"):
        checked_words(utt([("AH", 0, 1)], words=[("a", 0.0, 0.5), ("", 0.5, 0.6), ("b", 0.4, 0.9)]))
    assert [w.label for w in checked_words(utt([("AH", 0, 1)], words=[("a", 0, 0.5), ("", 0.5, 0.6), ("b", 0.6, 1)]))] \
        == ["a", "b"]
    for bad in ("a b", "../../x", ".hidden", "a/b"):  # an id names files inside the corpus
        with pytest.raises(CorpusError, match=f"utterance id {bad!r}: only letters, digits"):
            check_ids([utt([], utt_id=bad)])
    with pytest.raises(CorpusError, match="utterance u1 appears twice"):
        check_ids([utt([]), utt([])])
