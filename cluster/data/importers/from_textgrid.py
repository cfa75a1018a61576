"""Montreal Forced Aligner output: ``.TextGrid`` files with "words" and "phones" tiers (or one speaker's
"NAME - words" / "NAME - phones"), read with praatio.

MFA mirrors its input corpus: one sub-folder per speaker (a file at the top is its own speaker), the
audio (``.wav`` or ``.flac``, same relative path and stem) beside the TextGrid or under ``audio_root``
(MFA's input folder). Empty intervals are read as such (silence) rather than dropped, so a tier covers
its whole file; the words tier becomes the corpus's word alignment and, joined, its transcript (an
MFA ``.lab`` / ``.txt`` beside the audio stands in where a file has no words tier). The source has no
splits: they are made by speaker.
"""

from __future__ import annotations

from pathlib import Path

from praatio import textgrid

from cluster.data.importers.source import Audio, Interval, SourceUtterance
from cluster.data.kaldi import CorpusError

AUDIO_SUFFIXES = (".wav", ".flac", ".WAV", ".FLAC")


def _tier(tg, path: Path, name: str, required: bool):
    names = {n.lower(): n for n in tg.tierNames}
    suffixed = [n for n in names if n.endswith(f" - {name}")]  # MFA's "SPEAKER - phones" in multi-speaker files
    if name not in names and len(suffixed) == 1:
        name = suffixed[0]
    if name not in names:
        if required:
            raise CorpusError(f"{path}: no {name!r} tier (has {', '.join(map(repr, tg.tierNames)) or 'none'})")
        return None
    tier = tg.getTier(names[name])
    if not hasattr(tier, "entries") or tier.entries and len(tier.entries[0]) != 3:
        raise CorpusError(f"{path}: tier {names[name]!r} is not an interval tier")
    return tuple(Interval(e.label, float(e.start), float(e.end)) for e in tier.entries)


def read_textgrids(folder: str | Path, audio_root: str | Path | None = None) -> tuple[list[SourceUtterance], list[str]]:
    folder = Path(folder)
    if not folder.is_dir():
        raise CorpusError(f"{folder}: not a folder of TextGrids")
    audio_root = Path(audio_root) if audio_root else folder
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() == ".textgrid" and p.is_file())
    if not paths:
        raise CorpusError(f"{folder}: no .TextGrid files")
    utts, from_lab = [], 0
    for path in paths:
        rel = path.relative_to(folder)
        speaker = rel.parts[0] if len(rel.parts) > 1 else path.stem
        utt_id = path.stem if path.stem.startswith(speaker) else f"{speaker}-{path.stem}"
        try:
            tg = textgrid.openTextgrid(str(path), includeEmptyIntervals=True)
        except Exception as e:  # praatio raises assorted errors on a malformed file
            raise CorpusError(f"{path}: not a readable TextGrid: {type(e).__name__}: {e}") from None
        phones = _tier(tg, path, "phones", True)
        words = _tier(tg, path, "words", False)
        audio = next((audio_root / rel.parent / (path.stem + s) for s in AUDIO_SUFFIXES
                      if (audio_root / rel.parent / (path.stem + s)).is_file()), None)
        if audio is None:
            raise CorpusError(f"{path}: utterance {utt_id}: no audio {rel.parent / path.stem}.wav or .flac "
                              f"under {audio_root}")
        if words is not None:
            text = " ".join(w.label.strip() for w in words if w.label.strip() and w.label.strip() != "<eps>")
        else:
            lab = next((audio.with_suffix(s) for s in (".lab", ".txt") if audio.with_suffix(s).is_file()), None)
            text = " ".join(lab.read_text(encoding="utf-8", errors="replace").split()) if lab else ""
            from_lab += bool(lab)
        utts.append(SourceUtterance(utt_id, speaker, text, Audio(str(audio)), phones, words, str(path)))
    notes = [f"transcripts from .lab/.txt files (no words tier): {from_lab}"] if from_lab else []
    return utts, notes
