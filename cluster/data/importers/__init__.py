"""Bring your own speech: lhotse manifests, MFA TextGrids, TIMIT and Kaldi CTMs -> a gatelens corpus.

One module per source reads its format into ``SourceUtterance`` records (``source.py``); the phone
set (``phonesets.py``), the splits (``splits.py``) and the one writer (``writer.py``) are shared, so
that every source ends in the embedded corpus's layout, checked the same way.

    import_corpus("textgrid", "mfa_out/", "data/mine", audio_root="corpus/")
"""

from __future__ import annotations

import hashlib
import importlib
import os
from dataclasses import dataclass
from pathlib import Path

from cluster.data.importers import splits as S
from cluster.data.importers.phonesets import PhoneSet, read_phone_map
from cluster.data.importers.source import check_audio_files, check_ids, mapped_segments
from cluster.data.importers.writer import ImportOptions, describe, write_corpus
from cluster.errors import InputError

# kind -> (module, reader, the keyword arguments it takes); a reader and its library load only when used
READERS = {
    "lhotse": ("from_lhotse", "read_lhotse", ()),
    "textgrid": ("from_textgrid", "read_textgrids", ("audio_root",)),
    "timit": ("from_timit", "read_timit", ("keep_sa",)),
    "ctm": ("from_ctm", "read_ctm", ("data",)),
}
SOURCES = tuple(READERS)


def read_source(kind: str, source: str | os.PathLike, **kw):
    """(utterances, notes) of one source."""
    if kind not in READERS:
        raise InputError(f"--from {kind!r}: one of {', '.join(SOURCES)}")
    module, reader, args = READERS[kind]
    read = getattr(importlib.import_module(f"cluster.data.importers.{module}"), reader)
    return read(source, **{a: kw[a] for a in args if kw.get(a) is not None})


@dataclass
class ImportPlan:
    """A source read and checked (ids, splits, every interval and label): what ``write_corpus`` writes."""

    utts: list
    split_of: dict[str, str]
    phone_set: PhoneSet
    info: dict
    segments: list


def plan_import(kind: str, source: str | os.PathLike, out: str | os.PathLike, phone_map: str | None = None,
                shares: tuple[int, int, int] | None = None, seed: int = 0, **kw) -> ImportPlan:
    """Everything that needs no audio (beyond that its files exist), so that bad alignments and
    missing files fail before any work starts."""
    if kind not in READERS:
        raise InputError(f"--from {kind!r}: one of {', '.join(SOURCES)}")
    user_map = read_phone_map(phone_map) if phone_map else {}
    utts, notes = read_source(kind, source, **kw)
    check_ids(utts)
    split_of, how = S.choose(utts, shares, seed, str(source))
    kept = [u for u in utts if u.utt_id in split_of]
    check_audio_files(kept)
    phone_set = PhoneSet("timit" if kind == "timit" else "arpabet", user_map)
    info = {
        "kind": kind, "source": str(Path(source).resolve()), "name": Path(out).name, "splits": how,
        "phone_map": {"path": str(Path(phone_map).resolve()),
                      "sha256": hashlib.sha256(Path(phone_map).read_bytes()).hexdigest()} if phone_map else None,
        "notes": notes + ([f"utterances outside train/dev/test left out: {len(utts) - len(kept)}"]
                          if len(kept) < len(utts) and kind != "timit" else []),  # TIMIT's notes say why
    }
    return ImportPlan(kept, split_of, phone_set, info, [mapped_segments(u, phone_set) for u in kept])


def import_corpus(kind: str, source: str | os.PathLike, out: str | os.PathLike, phone_map: str | None = None,
                  shares: tuple[int, int, int] | None = None, options: ImportOptions = ImportOptions(),
                  progress=None, **kw) -> dict:
    """Read ``source``, check it, and write the corpus into ``out``; returns its manifest."""
    return write_corpus(plan_import(kind, source, out, phone_map, shares, options.seed, **kw), out, options, progress)


__all__ = ["SOURCES", "ImportOptions", "ImportPlan", "describe", "import_corpus", "plan_import", "read_source"]
