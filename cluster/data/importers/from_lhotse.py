"""lhotse manifests: a ``CutSet``, or a ``RecordingSet`` + ``SupervisionSet``, in JSONL (gzipped or not).

Read with lhotse itself (``load_manifest``). One utterance per supervision; its phones are
``supervision.alignment["phone"]`` and its words, where present, ``alignment["word"]`` (lhotse's
``AlignmentItem`` symbol / start / duration, on the supervision's own clock). Audio comes only from
sources of type ``file`` or ``memory``: a ``command`` source runs a shell command and a ``url`` one
fetches from the network, so both are refused, and so are recordings with ``transforms`` (a reverb's
impulse response is a nested recording with sources of its own). ``file`` sources are read with
soundfile, not with lhotse's ``load_audio``: lhotse picks a backend by the file's name, and for
``.sph`` (and legacy ``.opus``) that backend runs the path through a shell. Only ``memory`` sources
(bytes inside the manifest) are decoded by lhotse.

``source`` is one manifest file (no splits: made by speaker) or a folder of them named as lhotse's
recipes name them, ``{corpus}_{cuts|recordings|supervisions}_{part}.jsonl[.gz]``: a part naming
train / dev (or valid) / test gives the split, and several parts may feed one split
(``train-clean-100`` + ``train-clean-360``).
"""

from __future__ import annotations

import re
from pathlib import Path

from cluster.data.importers.source import Audio, Interval, SourceUtterance
from cluster.data.kaldi import CorpusError

SAFE_SOURCES = {"file", "memory"}
_NAME = re.compile(r"^(?:(?P<corpus>.*?)_)?(?P<kind>cuts|recordings|supervisions)(?:_(?P<part>.+?))?\.jsonl(?:\.gz)?$")


def split_of_part(part: str | None, path: Path) -> str | None:
    if part is None:
        return None
    low = part.lower()
    for split, keys in (("train", ("train",)), ("dev", ("dev", "valid")), ("test", ("test", "eval"))):
        if any(k in low for k in keys):
            return split
    raise CorpusError(f"{path}: part {part!r} names none of train, dev (valid), test")


def _load(path: Path):
    # deferred: lhotse imports torch (a second); read_source loads this module only for lhotse sources
    from lhotse import load_manifest

    try:
        return load_manifest(path)
    except Exception as e:  # lhotse raises assorted errors on a malformed manifest
        raise CorpusError(f"{path}: not a readable lhotse manifest: {type(e).__name__}: {e}") from None


def _audio(recording, sup, path: Path, offset: float) -> Audio:
    """Where ``sup``'s samples are, once the recording's sources are checked (see the module note)."""
    if recording.transforms:
        raise CorpusError(f"{path}: recording {recording.id}: audio transforms are refused (their nested "
                          f"recordings would be loaded unchecked); import the untransformed audio")
    for s in recording.sources:
        if s.type not in SAFE_SOURCES:
            raise CorpusError(f"{path}: recording {recording.id}: audio source of type {s.type!r} is refused "
                              f"(gatelens reads only 'file' and 'memory' sources; 'command' runs a shell command)")
    channel = sup.channel[0] if isinstance(sup.channel, list) else (sup.channel or 0)
    start, duration = offset + sup.start, sup.duration
    kinds = {s.type for s in recording.sources}
    if kinds == {"memory"}:
        return Audio(f"recording {recording.id} (in memory)", start, duration, int(channel), recording.to_dict())
    if kinds != {"file"}:
        raise CorpusError(f"{path}: recording {recording.id}: mixes file and memory sources (not read)")
    for s in recording.sources:
        if channel in s.channels:
            return Audio(s.source, start, duration, s.channels.index(channel), None)
    raise CorpusError(f"{path}: supervision {sup.id}: channel {channel} is in none of recording "
                      f"{recording.id}'s sources")


def _utterance(sup, recording, origin: Path, offset: float, split: str | None,
               rec_path: Path | None = None) -> SourceUtterance:
    ali = sup.alignment or {}
    if "phone" not in ali:
        raise CorpusError(f"{origin}: supervision {sup.id}: no phone alignment (supervision.alignment['phone']; "
                          f"has {', '.join(ali) or 'none'})")

    def items(name):
        return tuple(Interval(str(a.symbol), a.start - sup.start, a.start + a.duration - sup.start) for a in ali[name])

    speaker = sup.speaker or sup.recording_id
    return SourceUtterance(sup.id, speaker, sup.text or "", _audio(recording, sup, rec_path or origin, offset),
                           items("phone"), items("word") if "word" in ali else None, str(origin), split)


def read_lhotse(source: str | Path) -> tuple[list[SourceUtterance], list[str]]:
    # deferred: as in _load
    from lhotse import CutSet, RecordingSet, SupervisionSet

    source = Path(source)
    if source.is_dir():
        # resolved: lhotse opens a name starting 'pipe:' through a shell
        files = sorted(p.resolve() for p in source.iterdir() if _NAME.match(p.name))
        if not files:
            raise CorpusError(f"{source}: no lhotse manifests (*_cuts_*.jsonl.gz, *_recordings_*.jsonl.gz, ...)")
    elif source.is_file():
        files = [source.resolve()]
    else:
        raise CorpusError(f"{source}: no such manifest file or folder")
    cuts, recordings, supervisions = [], {}, []
    for path in files:
        m = _NAME.match(path.name)
        split = split_of_part(m.group("part"), path) if m and source.is_dir() else None
        manifest = _load(path)
        if isinstance(manifest, CutSet):
            cuts.append((manifest, path, split))
        elif isinstance(manifest, RecordingSet):
            recordings.update({r.id: (r, path) for r in manifest})
        elif isinstance(manifest, SupervisionSet):
            supervisions.append((manifest, path, split))
        else:
            raise CorpusError(f"{path}: a {type(manifest).__name__}; expected cuts, recordings or supervisions")
    utts = []
    for cutset, path, split in cuts:
        for cut in cutset:
            if not hasattr(cut, "recording") or cut.recording is None:
                raise CorpusError(f"{path}: cut {cut.id}: a {type(cut).__name__} without one recording "
                                  f"(mixed and padded cuts are not read)")
            for sup in cut.supervisions:
                utts.append(_utterance(sup, cut.recording, path, cut.start, split))
    for supset, path, split in supervisions:
        for sup in supset:
            if sup.recording_id not in recordings:
                raise CorpusError(f"{path}: supervision {sup.id}: recording {sup.recording_id!r} is in no "
                                  f"recordings manifest beside it")
            rec, rec_path = recordings[sup.recording_id]
            utts.append(_utterance(sup, rec, path, 0.0, split, rec_path))
    if supervisions and not recordings:
        raise CorpusError(f"{source}: supervisions but no recordings manifest")
    if not utts:
        raise CorpusError(f"{source}: no supervisions")
    return utts, []

