"""Kaldi phone CTMs (``utt chan start dur phone [conf]``) with the Kaldi data directory they align.

The CTM is utterance-level, as ``ali-to-phones --ctm-output`` writes it: times from the utterance's
start, keyed by utterance id. The data directory (``data``, default the CTM's folder) gives ``wav.scp``
(plain file paths: a Kaldi pipe would run a shell command, so it is refused), ``segments`` where
utterances are spans of recordings, ``utt2spk`` (else each utterance is its own speaker) and ``text``.
Relative paths in ``wav.scp`` resolve from the working directory, as Kaldi's scripts have it.
Phone labels may carry Kaldi's word-position suffixes (``AH1_B``); a CTM has no word timings here.
"""

from __future__ import annotations

import math
from pathlib import Path

from cluster.data.importers.source import Audio, Interval, SourceUtterance
from cluster.data.kaldi import CorpusError, is_pipe


def _table(path: Path, columns: int | None, required: bool = True) -> dict[str, list[str]]:
    """key -> the rest of each line (``columns``: how many fields after the key, None: the rest as one)."""
    if not path.is_file():
        if required:
            raise CorpusError(f"{path}: file not found")
        return {}
    out: dict[str, list[str]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        key, _, rest = line.strip().partition(" ")
        fields = [rest.strip()] if columns is None else rest.split()
        if columns is not None and len(fields) != columns:
            raise CorpusError(f"{path}:{n}: expected a key and {columns} fields, got {line!r}")
        if key in out:
            raise CorpusError(f"{path}:{n}: {key} appears twice")
        out[key] = fields
    return out


def read_ctm(ctm: str | Path, data: str | Path | None = None) -> tuple[list[SourceUtterance], list[str]]:
    ctm = Path(ctm)
    data = Path(data) if data else ctm.parent
    if not ctm.is_file():
        raise CorpusError(f"{ctm}: CTM file not found")
    wav_scp = _table(data / "wav.scp", None)
    for rec, (entry,) in wav_scp.items():
        if is_pipe(entry) or " " in entry:
            raise CorpusError(f"{data / 'wav.scp'}: recording {rec}: {entry!r} is a Kaldi pipe or command; corpus "
                              f"import reads audio files only (gatelens reads NIST SPHERE itself: name the .sph file)")
    segments = _table(data / "segments", 3, required=False)
    utt2spk = _table(data / "utt2spk", 1, required=False)
    text = _table(data / "text", None)
    phones: dict[str, list[Interval]] = {}
    for n, line in enumerate(ctm.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts or line.startswith(";;"):
            continue
        try:
            if len(parts) not in (5, 6):
                raise ValueError
            start, dur = float(parts[2]), float(parts[3])
            if not (math.isfinite(start) and math.isfinite(dur)):
                raise ValueError
        except ValueError:
            raise CorpusError(f"{ctm}:{n}: expected 'UTT CHANNEL START DURATION PHONE [CONF]', got {line!r}") from None
        phones.setdefault(parts[0], []).append(Interval(parts[4], start, start + dur))
    if not phones:
        raise CorpusError(f"{ctm}: no CTM lines")
    utts = []
    for utt_id in sorted(phones):
        if segments:
            if utt_id not in segments:
                raise CorpusError(f"{ctm}: utterance {utt_id} is not in {data / 'segments'} (an utterance-level "
                                  f"CTM is expected, as ali-to-phones --ctm-output writes it)")
            rec, t0, t1 = segments[utt_id]
            try:
                offset, end = float(t0), float(t1)
                if not (math.isfinite(offset) and math.isfinite(end)) or offset < 0 or 0 <= end <= offset:
                    raise ValueError
            except ValueError:
                raise CorpusError(f"{data / 'segments'}: utterance {utt_id}: start {t0!r} and end {t1!r} are not "
                                  f"a span of seconds (start >= 0, end > start, or end -1 for the recording's end)") from None
            duration = None if end < 0 else end - offset
        else:
            rec, offset, duration = utt_id, 0.0, None
        if rec not in wav_scp:
            raise CorpusError(f"{ctm}: utterance {utt_id}: recording {rec} is not in {data / 'wav.scp'}")
        ivs = sorted(phones[utt_id], key=lambda iv: iv.start)
        utts.append(SourceUtterance(utt_id, utt2spk.get(utt_id, [utt_id])[0], text.get(utt_id, [""])[0],
                                    Audio(str(Path(wav_scp[rec][0]).absolute()), offset, duration), tuple(ivs),
                                    None, str(ctm)))
    notes = [] if utt2spk else [f"no {data / 'utt2spk'}: every utterance is its own speaker"]
    return utts, notes
