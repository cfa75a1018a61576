"""What every importer hands the writer: utterances with their audio, phone and word intervals.

An importer only reads its format; the checks that every source shares live here, so that a gap, an
overlap or an empty transcript is refused with the same message whatever the format: the file and the
interval at fault, in one line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cluster.data import features as F
from cluster.data import phones as P
from cluster.data.importers.phonesets import PhoneSet
from cluster.data.kaldi import CorpusError

GAP_TOLERANCE = 0.001  # s: float rounding between one interval's end and the next one's start
AUDIO_TOLERANCE = 0.025  # s: an alignment may end this far past the audio (one analysis window)


@dataclass(frozen=True)
class Interval:
    label: str
    start: float  # seconds from the utterance's start
    end: float


@dataclass(frozen=True)
class Audio:
    """Where an utterance's samples are: a span of a file (read with soundfile) or of a lhotse
    ``Recording`` (read with lhotse, given as its ``to_dict()``)."""

    path: str  # named in errors: the file, or the recording's source
    offset: float = 0.0  # s into the file / recording
    duration: float | None = None  # None: to the end
    channel: int = 0
    recording: dict | None = None


@dataclass(frozen=True)
class SourceUtterance:
    utt_id: str
    speaker: str
    text: str
    audio: Audio
    phones: tuple[Interval, ...]
    words: tuple[Interval, ...] | None  # None: the source has no word timings
    origin: str  # the file the alignment came from
    split: str | None = None  # the source's own split, where it has one


def _span(iv: Interval) -> str:
    return f"{iv.label!r} {iv.start:.3f}-{iv.end:.3f} s"


# An utterance id names files (its wav copy, its rows): nothing that could climb out of the corpus folder
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def check_ids(utts: list[SourceUtterance]) -> None:
    seen: dict[str, str] = {}
    for u in utts:
        if u.utt_id and not SAFE_ID.fullmatch(u.utt_id):
            raise CorpusError(f"{u.origin}: utterance id {u.utt_id!r}: only letters, digits and _ . + - "
                              f"(not first) are taken (it names files inside the corpus)")
        for what, value in (("utterance id", u.utt_id), ("speaker id", u.speaker)):
            if not value or any(c.isspace() for c in value):
                raise CorpusError(f"{u.origin}: {what} {value!r} is empty or holds whitespace "
                                  f"(Kaldi tables are space-separated)")
        if u.utt_id in seen:
            raise CorpusError(f"{u.origin}: utterance {u.utt_id} appears twice (also in {seen[u.utt_id]})")
        seen[u.utt_id] = u.origin


def check_audio_files(utts: list[SourceUtterance]) -> None:
    """Every file an utterance's audio comes from is a regular file, checked before any Ray cluster
    starts for the import: a missing one is bad input (exit 2) found at once, not from a shard after
    a private cluster was started for it (whose start or teardown under load can fail on its own,
    with exit 1). ``load_audio`` checks again: a file can go between the plan and its shard."""
    seen: set[str] = set()
    for u in utts:
        a = u.audio
        if a.recording is not None or a.path in seen:
            continue
        require_audio_file(a.path, u.utt_id)
        seen.add(a.path)


def require_audio_file(path: str, utt_id: str) -> None:
    """A regular file, or bad input naming it and the utterance: a fifo or device would block or never end."""
    if not Path(path).is_file():
        raise CorpusError(f"{path}: utterance {utt_id}: audio file not found")


def mapped_segments(u: SourceUtterance, phone_set: PhoneSet) -> list[F.Segment]:
    """The phone intervals checked and mapped: contiguous (gaps and overlaps up to ``GAP_TOLERANCE``
    are closed), positive durations, every label mapped. Audio length is checked later, with the audio."""
    if not u.text.strip():
        raise CorpusError(f"{u.origin}: utterance {u.utt_id}: empty transcript")
    if not u.phones:
        raise CorpusError(f"{u.origin}: utterance {u.utt_id}: no phone intervals")
    out: list[F.Segment] = []
    prev: Interval | None = None
    for iv in u.phones:
        if not (np.isfinite(iv.start) and np.isfinite(iv.end)) or iv.end <= iv.start or iv.start < -GAP_TOLERANCE:
            raise CorpusError(f"{u.origin}: utterance {u.utt_id}: phone interval {_span(iv)} has no positive "
                              f"duration inside the utterance")
        if prev is not None:
            if iv.start < prev.end - GAP_TOLERANCE:
                raise CorpusError(f"{u.origin}: utterance {u.utt_id}: phone intervals overlap: {_span(prev)} "
                                  f"and {_span(iv)}")
            if iv.start > prev.end + GAP_TOLERANCE:
                raise CorpusError(f"{u.origin}: utterance {u.utt_id}: gap between phone intervals {_span(prev)} "
                                  f"and {_span(iv)}")
        target = phone_set.map(iv.label)
        if target is None:
            raise CorpusError(f"{u.origin}: utterance {u.utt_id}: phone {iv.label!r} at {iv.start:.3f}-{iv.end:.3f} s "
                              f"has no mapping to {phone_set.description}; map it with --phone-map")
        start = out[-1].end if out else max(iv.start, 0.0)
        if target == "":  # merged into the phone before (TIMIT's q); at the very start, into the next
            if out:
                out[-1] = F.Segment(out[-1].phone, out[-1].start, iv.end)
            else:
                out.append(F.Segment("", start, iv.end))
        elif out and out[-1].phone == "":
            out[-1] = F.Segment(target, out[-1].start, iv.end)
        else:
            out.append(F.Segment(target, start, iv.end))
        prev = iv
    if out[-1].phone == "":
        raise CorpusError(f"{u.origin}: utterance {u.utt_id}: only merged labels ({u.phones[0].label!r}), no phone")
    return out


def checked_words(u: SourceUtterance) -> list[Interval] | None:
    """Labelled word intervals in order, not overlapping (gaps are pauses and are fine)."""
    if u.words is None:
        return None
    words = [w for w in u.words if w.label.strip() and w.label.strip() != "<eps>"]
    for a, b in zip(words, words[1:]):
        if b.start < a.end - GAP_TOLERANCE:
            raise CorpusError(f"{u.origin}: utterance {u.utt_id}: word intervals overlap: {_span(a)} and {_span(b)}")
    for w in words:
        if any(c.isspace() for c in w.label.strip()) or w.end <= w.start:
            raise CorpusError(f"{u.origin}: utterance {u.utt_id}: word interval {_span(w)} holds whitespace or "
                              f"has no positive duration")
    return words


def fit_to_audio(u: SourceUtterance, segments: list[F.Segment], duration: float) -> tuple[list[F.Segment], float]:
    """Segments covering exactly [0, duration]: an alignment ending past the audio by more than
    ``AUDIO_TOLERANCE`` is refused; unaligned audio at either edge becomes SIL. Returns the segments
    and the seconds so filled."""
    end = segments[-1].end
    if end > duration + AUDIO_TOLERANCE:
        raise CorpusError(f"{u.origin}: utterance {u.utt_id}: alignment ends at {end:.3f} s, after the end of its "
                          f"audio ({duration:.3f} s, {u.audio.path}) by more than {AUDIO_TOLERANCE} s "
                          f"(last interval {segments[-1].phone!r} {segments[-1].start:.3f}-{end:.3f} s)")
    out, filled = list(segments), 0.0
    if out[0].start > GAP_TOLERANCE:
        filled += out[0].start
        out.insert(0, F.Segment(P.SIL, 0.0, out[0].start))
    if duration - end > GAP_TOLERANCE:
        filled += duration - end
        out.append(F.Segment(P.SIL, end, duration))
    return out, filled
