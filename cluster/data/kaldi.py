"""Kaldi data directories: the one reader for the embedded corpus and for real (e.g. WSJ) corpora.

A corpus is described by a manifest (``manifest.json``, or a hand-written TOML/JSON file that
points into an existing Kaldi setup)::

    name = "wsj"
    root = "/data/kaldi/egs/wsj/s5"     # relative paths resolve here (default: the manifest's folder)
    phones = "data/lang/phones.txt"
    num_targets = 3377                  # pdf count: targets must lie in [0, num_targets)
    cmvn = "data/train/cmvn_global.ark" # optional: global stats; computed from train feats if absent
    frame_tolerance = 2                 # optional: |frames(feats) - frames(alignment)| allowed
    [splits.train]
    feats = "data/train_si284/feats.scp"
    targets = "exp/tri4b_ali/pdf.ark"   # ali-to-pdf output (ark or scp; a list of files is fine)
    phones = "exp/tri4b_ali/phones.ark" # ali-to-phones --per-frame=true output
    [splits.dev]
    ...

Every error names the file and, where there is one, the utterance at fault.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import shutil
import tomllib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterator

import kaldiio
import numpy as np

from cluster.errors import InputError
from cluster.processes import owner, owner_alive

MANIFEST = "manifest.json"
DEFAULT_FRAME_TOLERANCE = 2


class CorpusError(InputError, ValueError):
    """A corpus that cannot be used as it is; the message names the file and utterance."""


@dataclass(frozen=True)
class Alignment:
    """Frame-level labels of one utterance, as ali-to-phones --per-frame and ali-to-pdf give them."""

    utt_id: str
    phones: np.ndarray  # int32 [T], ids of phones.txt
    targets: np.ndarray  # int32 [T], in [0, num_targets)


@dataclass(frozen=True)
class Utterance:
    utt_id: str
    feats: np.ndarray  # float32 [T, feat_dim]
    phones: np.ndarray
    targets: np.ndarray
    speaker: str | None = None


# ---------------------------------------------------------------------------------------- writing

def cmvn_stats_matrix(total: np.ndarray, total_sq: np.ndarray, count: int) -> np.ndarray:
    """Kaldi's global CMVN stats layout (compute-cmvn-stats): [[sum..., count], [sum_sq..., 0]]."""
    return np.stack([np.append(total, count), np.append(total_sq, 0.0)]).astype(np.float64)


def write_kaldi_tables(split_dir: Path, utts: dict[str, tuple[str, str]], scp: dict[str, str],
                       wav_scp: str | None) -> None:
    """``text``, ``utt2spk``, ``spk2utt``, and the given scp tables, each sorted by key as Kaldi wants."""
    split_dir.mkdir(parents=True, exist_ok=True)
    ids = sorted(utts)

    def sorted_lines(text: str) -> str:
        return "".join(sorted(line + "\n" for line in text.splitlines() if line))

    (split_dir / "text").write_text("".join(f"{u} {utts[u][1]}\n" for u in ids))
    (split_dir / "utt2spk").write_text("".join(f"{u} {utts[u][0]}\n" for u in ids))
    spk2utt: dict[str, list[str]] = {}
    for u in ids:
        spk2utt.setdefault(utts[u][0], []).append(u)
    (split_dir / "spk2utt").write_text("".join(f"{s} {' '.join(us)}\n" for s, us in sorted(spk2utt.items())))
    for name, lines in scp.items():
        (split_dir / f"{name}.scp").write_text(sorted_lines(lines))
    if wav_scp is not None:
        (split_dir / "wav.scp").write_text(sorted_lines(wav_scp))


def save_shard_arks(data_dir: Path, shard: int, tables: dict[str, dict[str, np.ndarray]], root: Path) -> dict[str, str]:
    """``{name}.{shard:03d}.ark`` per table under ``data_dir``; returns each one's scp lines with
    paths relative to ``root`` (the corpus root), so that the corpus can be moved as a folder."""
    data_dir.mkdir(parents=True, exist_ok=True)
    scp = {}
    for name, table in tables.items():
        ark = data_dir / f"{name}.{shard:03d}.ark"
        kaldiio.save_ark(str(ark), table, scp=str(ark.with_suffix(".scp")))
        scp[name] = ark.with_suffix(".scp").read_text().replace(f"{root}/", "")
        ark.with_suffix(".scp").unlink()
    return scp


OTHER_HOST_LIFE = 86400.0  # seconds: longer than any corpus write takes


def _changed(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def staging_dir(out: Path) -> Path:
    """A fresh sibling folder, named for this process (``host:pid.start``), to write the corpus
    ``out`` into before ``move_into_place``. What killed writers of ``out`` left is cleared first:
    their staging folders are removed, and a corpus one had moved aside (killed between the two
    renames of ``move_into_place``) is put back where no new one took its place. A writer on
    another host sharing the storage cannot be asked whether it runs: its folders are left alone
    for ``OTHER_HOST_LIFE`` seconds after they last changed."""
    for left in sorted(out.parent.glob(f".{glob.escape(out.name)}.*-*")):
        kind, _, proc = left.name[len(out.name) + 2:].partition("-")
        if kind not in ("tmp", "old") or owner_alive(proc, OTHER_HOST_LIFE, _changed(left)):
            continue
        if kind == "old" and not out.exists():
            left.rename(out)
        else:
            shutil.rmtree(left, ignore_errors=True)
    tmp = out.parent / f".{out.name}.tmp-{owner()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def move_into_place(tmp: Path, out: Path) -> None:
    """A complete corpus folder ``tmp`` becomes ``out``, replacing what was there only at the end."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{owner()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)


# ---------------------------------------------------------------------------------------- reading

def read_phones_txt(path: Path) -> dict[int, str]:
    if not path.is_file():
        raise CorpusError(f"{path}: phone table not found")
    table: dict[int, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise CorpusError(f"{path}:{n}: expected 'SYMBOL ID', got {line!r}")
        table[int(parts[1])] = parts[0]
    if not table:
        raise CorpusError(f"{path}: phone table is empty")
    return table


def is_pipe(text: str) -> bool:
    """A Kaldi rxfilename that runs a command (``cmd |`` or ``| cmd``) or reads stdin (``-``):
    kaldiio hands such a name to a shell."""
    t = text.strip()
    return t.endswith("|") or t.startswith("|") or t == "-"


PIPES_REFUSED = ("a Kaldi pipe runs a shell command, so it is refused unless the corpus manifest says "
                 "allow_pipes = true and the command is given --allow-pipes")


def _resolve_entry(entry: str, root: Path) -> str:
    """An scp value with a relative path made absolute against ``root`` (pipes left alone)."""
    if entry.rstrip().endswith("|") or entry.startswith("/"):
        return entry
    path, sep, rest = entry.partition(":")
    return str(root / path) + sep + rest


def read_scp(path: Path, root: Path, allow_pipes: bool = False) -> dict[str, str]:
    """key -> rxfilename; pipes only when ``allow_pipes`` (see ``PIPES_REFUSED``)."""
    if not path.is_file():
        raise CorpusError(f"{path}: file not found")
    out: dict[str, str] = {}
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise CorpusError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, _, value = line.strip().partition(" ")
        if not value:
            raise CorpusError(f"{path}:{n}: line has a key but no value: {line!r}")
        if is_pipe(value) and not allow_pipes:
            raise CorpusError(f"{path}:{n}: utterance {key}: {value.strip()!r}: {PIPES_REFUSED}")
        out[key] = _resolve_entry(value.strip(), root)
    if not out:
        raise CorpusError(f"{path}: empty scp (no utterances)")
    return out


def read_words_ctm(path: Path) -> dict[str, list[tuple[float, float, str]]]:
    """utt -> [(start, end, word)] in seconds from a word CTM (``utt channel start duration word``,
    times from the utterance's start), as corpus import writes ``words.ctm``."""
    out: dict[str, list[tuple[float, float, str]]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        f = line.split()
        if not f:
            continue
        try:
            start, dur = (float(f[2]), float(f[3])) if len(f) == 5 else (math.nan,) * 2
        except ValueError:
            start = dur = math.nan
        if not (math.isfinite(start) and math.isfinite(dur)):
            raise CorpusError(f"{path}:{n}: expected 'UTT CHANNEL START DURATION WORD', got {line[:80]!r}")
        out.setdefault(f[0], []).append((start, start + dur, f[4]))
    return out


def _load_entry(source: Path, key: str, entry: str) -> np.ndarray:
    try:
        return kaldiio.load_mat(entry)
    except FileNotFoundError as e:
        raise CorpusError(f"{source}: utterance {key}: archive {e.filename or entry} not found") from None
    except Exception as e:  # kaldiio raises assorted errors on truncated or corrupt data
        raise CorpusError(f"{source}: utterance {key}: cannot read {entry} "
                          f"(truncated or corrupt archive?): {type(e).__name__}: {e}") from None


def read_int_vectors(paths: list[Path], root: Path, allow_pipes: bool = False) -> dict[str, np.ndarray]:
    """Per-frame int vectors (alignments) from ark or scp files, binary or text."""
    out: dict[str, np.ndarray] = {}
    for path in paths:
        if not path.is_file():
            raise CorpusError(f"{path}: file not found")
        if path.suffix == ".scp":
            items = ((k, _load_entry(path, k, v)) for k, v in read_scp(path, root, allow_pipes).items())
        else:
            items = _iter_ark(path)
        n = 0
        for key, vec in items:
            vec = np.asarray(vec)
            if vec.ndim != 1 or not np.issubdtype(vec.dtype, np.integer):
                raise CorpusError(f"{path}: utterance {key}: expected an int vector per frame, "
                                  f"got {vec.dtype} array of shape {vec.shape}")
            if key in out:
                raise CorpusError(f"{path}: utterance {key} appears twice")
            out[key] = vec.astype(np.int32)
            n += 1
        if n == 0:
            raise CorpusError(f"{path}: empty archive (no utterances)")
    return out


def _iter_ark(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    last = None
    try:
        for key, vec in kaldiio.load_ark(str(path)):
            last = key
            yield key, vec
    except CorpusError:
        raise
    except Exception as e:
        where = f"after utterance {last}" if last else "at its first utterance"
        raise CorpusError(f"{path}: truncated or corrupt archive {where}: {type(e).__name__}: {e}") from None


class Split:
    """One split of a corpus: feats, alignments, speakers; iterates ``Utterance`` in key order."""

    def __init__(self, corpus: "Corpus", name: str, spec: dict):
        self.corpus, self.name, self.spec = corpus, name, spec
        for field in ("feats", "targets", "phones"):
            if field not in spec:
                raise CorpusError(f"{corpus.manifest_path}: split {name!r} lacks the field {field!r}")

    def _paths(self, field: str) -> list[Path]:
        value = self.spec[field]
        return [self.corpus.path(v) for v in ([value] if isinstance(value, str) else value)]

    @cached_property
    def feats_scp(self) -> dict[str, str]:
        return read_scp(self._paths("feats")[0], self.corpus.root, self.corpus.allow_pipes)

    @cached_property
    def alignments(self) -> dict[str, Alignment]:
        """Alignments of the utterances that have features, after the consistency checks on ids."""
        targets = read_int_vectors(self._paths("targets"), self.corpus.root, self.corpus.allow_pipes)
        phones = read_int_vectors(self._paths("phones"), self.corpus.root, self.corpus.allow_pipes)
        feats = self.feats_scp
        tgt_file, ph_file, ft_file = self._paths("targets")[0], self._paths("phones")[0], self._paths("feats")[0]
        problems = []
        for label, have, lack, have_file, lack_file in (
            ("features but no target alignment", feats, targets, ft_file, tgt_file),
            ("a target alignment but no features", targets, feats, tgt_file, ft_file),
            ("features but no phone alignment", feats, phones, ft_file, ph_file),
            ("a phone alignment but no features", phones, feats, ph_file, ft_file),
        ):
            missing = sorted(set(have) - set(lack))
            if missing:
                problems.append(f"{len(missing)} of {len(have)} utterances have {label} "
                                f"({have_file} vs {lack_file}; e.g. {', '.join(missing[:3])})")
        if problems and not self.corpus.skip_unaligned:
            raise CorpusError(f"split {self.name}: " + "; ".join(problems)
                              + ". Pass --skip-unaligned (skip_unaligned=True) to use only the complete ones.")
        self.skipped = len(set(feats) - (set(targets) & set(phones)))
        return {k: Alignment(k, phones[k], targets[k]) for k in sorted(feats) if k in targets and k in phones}

    @property
    def utt_ids(self) -> list[str]:
        return list(self.alignments)

    def __len__(self) -> int:
        return len(self.alignments)

    @cached_property
    def utt2spk(self) -> dict[str, str]:
        if not self.spec.get("utt2spk"):
            return {}
        path = self.corpus.path(self.spec["utt2spk"])
        if not path.is_file():
            raise CorpusError(f"{path}: file not found")
        return dict(line.split(maxsplit=1) for line in path.read_text().splitlines() if line.strip())

    def load(self, utt_id: str) -> Utterance:
        """One utterance, checked: feature dim, frame counts within tolerance, label ranges."""
        c = self.corpus
        feats_file = self._paths("feats")[0]
        # a writable copy: torch.from_numpy refuses to share read-only buffers. A double beyond
        # float32's range becomes Inf here, refused below with the rest (no numpy warning first).
        with np.errstate(over="ignore"):
            feats = np.array(_load_entry(feats_file, utt_id, self.feats_scp[utt_id]), dtype=np.float32)
        if feats.ndim != 2 or feats.shape[0] == 0:
            raise CorpusError(f"{feats_file}: utterance {utt_id}: expected a non-empty [frames, dim] "
                              f"matrix, got shape {feats.shape}")
        if c.feat_dim is not None and feats.shape[1] != c.feat_dim:
            raise CorpusError(f"{feats_file}: utterance {utt_id}: feature dimension {feats.shape[1]} "
                              f"differs from {c.feat_dim} (the manifest's feat_dim or the first utterance's)")
        if not np.isfinite(feats).all():  # one pass per utterance; the detail only on failure
            raise CorpusError(_non_finite(feats_file, utt_id, feats))
        ali = self.alignments[utt_id]
        phones, targets = ali.phones, ali.targets
        t = feats.shape[0]
        for label, vec, field in (("target", targets, "targets"), ("phone", phones, "phones")):
            if abs(len(vec) - t) > c.frame_tolerance:
                raise CorpusError(f"{self._paths(field)[0]}: utterance {utt_id}: {len(vec)} {label} "
                                  f"frames vs {t} feature frames ({feats_file}); tolerance is "
                                  f"{c.frame_tolerance}")
        bad = targets[(targets < 0) | (targets >= c.num_targets)]
        if bad.size:
            raise CorpusError(f"{self._paths('targets')[0]}: utterance {utt_id}: target id {int(bad[0])} "
                              f"outside the declared range [0, {c.num_targets})")
        unknown = np.setdiff1d(np.unique(phones), c.phone_ids)
        if unknown.size:
            raise CorpusError(f"{self._paths('phones')[0]}: utterance {utt_id}: phone id {int(unknown[0])} "
                              f"is not in {c.path(c.manifest['phones'])}")
        return Utterance(utt_id, feats, _fit(phones, t), _fit(targets, t), self.utt2spk.get(utt_id))

    def __iter__(self) -> Iterator[Utterance]:
        for utt_id in self.utt_ids:
            yield self.load(utt_id)


def _non_finite(source: Path, utt_id: str, feats: np.ndarray) -> str:
    """Where a [frames, dim] matrix first holds NaN or +-Inf (frames and dims count from 0)."""
    bad = ~np.isfinite(feats)
    frame, dim = (int(i) for i in np.argwhere(bad)[0])  # row-major: the first frame, then its first dim
    v = feats[frame, dim]
    what = "NaN" if np.isnan(v) else ("+Inf" if v > 0 else "-Inf")
    frames = int(bad.any(axis=1).sum())
    return (f"{source}: utterance {utt_id}: frame {frame} holds {what} (dim {dim}); "
            f"{frames} of {len(feats)} frames hold NaN or Inf")


def _fit(labels: np.ndarray, t: int) -> np.ndarray:
    """Trim or pad (repeating the last label) an alignment to ``t`` frames."""
    if len(labels) >= t:
        return labels[:t]
    return np.concatenate([labels, np.full(t - len(labels), labels[-1], dtype=labels.dtype)])


def _typed(manifest_path: Path, m: dict, field: str, kind, default=None):
    """A manifest field of the right type, or a one-line CorpusError naming it."""
    value = m.get(field, default)
    ok = isinstance(value, kind) and not (kind in (int, (int, float)) and isinstance(value, bool))
    if value is not None and not ok:
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise CorpusError(f"{manifest_path}: field {field!r} must be {names}, not {type(value).__name__} {value!r}")
    return value


PATH_FIELDS = ("feats", "targets", "phones", "utt2spk", "spk2utt", "text", "wav", "words")  # a split's files


class Corpus:
    """A corpus manifest and its splits. ``allow_pipes``: the caller's consent to Kaldi pipes in
    its scp files; they run only when the manifest also says ``allow_pipes = true``."""

    def __init__(self, manifest_path: Path, skip_unaligned: bool | None = None, allow_pipes: bool = False):
        self.manifest_path = manifest_path
        raw = manifest_path.read_bytes()
        try:
            self.manifest = (tomllib.loads(raw.decode()) if manifest_path.suffix == ".toml"
                             else json.loads(raw))
        except (ValueError, UnicodeDecodeError) as e:
            raise CorpusError(f"{manifest_path}: not a valid {manifest_path.suffix[1:].upper()} "
                              f"manifest: {e}") from None
        self.sha256 = hashlib.sha256(raw).hexdigest()
        m = self.manifest
        if not isinstance(m, dict):
            raise CorpusError(f"{manifest_path}: a manifest is a table of fields, not a {type(m).__name__}")
        for field in ("phones", "num_targets", "splits"):
            if field not in m:
                raise CorpusError(f"{manifest_path}: manifest lacks the field {field!r}")
        for field in ("phones", "root", "name", "cmvn"):
            _typed(manifest_path, m, field, str)
        for field in ("num_targets", "feat_dim", "frame_tolerance"):
            _typed(manifest_path, m, field, int)
        _typed(manifest_path, m, "splits", dict)
        _typed(manifest_path, m, "skip_unaligned", bool)
        _typed(manifest_path, m, "allow_pipes", bool)
        if m["num_targets"] < 1:
            raise CorpusError(f"{manifest_path}: field 'num_targets' must be at least 1, not {m['num_targets']}")
        self.root = (manifest_path.parent / m.get("root", ".")).resolve()
        self.name = m.get("name", manifest_path.parent.name)
        self.num_targets = int(m["num_targets"])
        self.feat_dim = m.get("feat_dim")
        self.frame_tolerance = int(m.get("frame_tolerance", DEFAULT_FRAME_TOLERANCE))
        self.skip_unaligned = bool(m.get("skip_unaligned", False) if skip_unaligned is None else skip_unaligned)
        self.allow_pipes = bool(allow_pipes) and m.get("allow_pipes") is True
        self.phone_table = read_phones_txt(self.path(m["phones"]))
        self.phone_ids = np.array(sorted(self.phone_table), dtype=np.int64)
        for name, spec in m["splits"].items():
            if not isinstance(spec, dict):
                raise CorpusError(f"{manifest_path}: split {name!r} must be a table of fields, not {spec!r}")
            for field, value in spec.items():
                if field in PATH_FIELDS and value is not None and not (isinstance(value, str) or (
                        isinstance(value, list) and all(isinstance(v, str) for v in value))):
                    raise CorpusError(f"{manifest_path}: split {name!r} field {field!r} must be a path or a list "
                                      f"of paths, not {value!r}")
        self._splits = {name: Split(self, name, spec) for name, spec in m["splits"].items()}
        if "train" not in self._splits:
            raise CorpusError(f"{manifest_path}: manifest has no 'train' split")

    def path(self, rel: str) -> Path:
        """A file the manifest names (never a pipe: those are for scp entries only)."""
        if is_pipe(rel):
            raise CorpusError(f"{self.manifest_path}: {rel!r} is a Kaldi pipe, not a file; a manifest names "
                              f"files (pipes may stand only in scp entries, with allow_pipes)")
        return self.root / rel

    @property
    def split_names(self) -> list[str]:
        return list(self._splits)

    def split(self, name: str) -> Split:
        if name not in self._splits:
            raise CorpusError(f"{self.manifest_path}: no split {name!r} (has {', '.join(self._splits)})")
        return self._splits[name]

    @property
    def phones(self) -> list[str]:
        """Symbols indexed by phone id (gaps filled with '')."""
        out = [""] * (max(self.phone_table) + 1)
        for i, s in self.phone_table.items():
            out[i] = s
        return out

    @cached_property
    def _cmvn(self) -> tuple[np.ndarray, np.ndarray]:
        if self.manifest.get("cmvn"):
            path = self.path(self.manifest["cmvn"])
            if not path.is_file():
                raise CorpusError(f"{path}: CMVN statistics file not found")
            try:
                stats = next(iter(kaldiio.load_ark(str(path))))[1]
            except Exception as e:
                raise CorpusError(f"{path}: cannot read CMVN statistics: {e}") from None
            stats = np.asarray(stats, dtype=np.float64)
            if stats.ndim != 2 or stats.shape[0] != 2:
                raise CorpusError(f"{path}: CMVN statistics must be a 2 x (dim+1) matrix, got {stats.shape}")
        else:  # real corpora often ship per-speaker stats only: compute global ones from train
            total = total_sq = 0.0
            count = 0
            for utt in self.split("train"):
                f = utt.feats.astype(np.float64)
                total, total_sq, count = total + f.sum(0), total_sq + np.square(f).sum(0), count + len(f)
            stats = cmvn_stats_matrix(total, total_sq, count)
        count = stats[0, -1]
        mean = stats[0, :-1] / count
        var = np.maximum(stats[1, :-1] / count - mean ** 2, 1e-10)
        return mean.astype(np.float32), np.sqrt(var).astype(np.float32)

    @property
    def cmvn_mean(self) -> np.ndarray:
        return self._cmvn[0]

    @property
    def cmvn_std(self) -> np.ndarray:
        return self._cmvn[1]

    @property
    def identity(self) -> dict:
        """What a checkpoint must remember of its corpus: targets, phone table, CMVN."""
        return {
            "name": self.name,
            "manifest_sha256": self.sha256,
            "num_targets": self.num_targets,
            "feat_dim": self.feat_dim,
            "phones": self.phones,
            "cmvn_mean": self.cmvn_mean.tolist(),
            "cmvn_std": self.cmvn_std.tolist(),
        }


def read_corpus(path: str | os.PathLike, skip_unaligned: bool | None = None, allow_pipes: bool = False) -> Corpus:
    """A corpus from its directory (holding ``manifest.json``) or from a manifest file."""
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST
    if not p.is_file():
        raise CorpusError(f"{p}: corpus manifest not found")
    return Corpus(p.resolve(), skip_unaligned, allow_pipes)


def check_corpus(path: str | os.PathLike, skip_unaligned: bool | None = None, progress=None,
                 allow_pipes: bool = False) -> dict:
    """Read every utterance of every split through all checks; returns a summary."""
    corpus = read_corpus(path, skip_unaligned, allow_pipes)
    summary = {"name": corpus.name, "manifest": str(corpus.manifest_path), "phones": len(corpus.phone_table),
               "num_targets": corpus.num_targets, "splits": {}}
    for name in corpus.split_names:
        split = corpus.split(name)
        frames, speakers, dim, targets_seen = 0, set(), corpus.feat_dim, set()
        for k, utt in enumerate(split):
            if dim is None:
                corpus.feat_dim = dim = utt.feats.shape[1]  # later utterances must match the first
            frames += len(utt.feats)
            speakers.add(utt.speaker)
            targets_seen.update(np.unique(utt.targets).tolist())
            if progress:
                progress(name, k + 1, len(split))
        summary["splits"][name] = {"utterances": len(split), "skipped": split.skipped, "frames": frames,
                                   "hours": round(frames * corpus.manifest.get("frame_shift_ms", 10) / 1000 / 3600, 4), "speakers": len(speakers - {None}),
                                   "targets_seen": len(targets_seen)}
    summary["feat_dim"] = corpus.feat_dim
    return summary
