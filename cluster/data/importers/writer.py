"""The one writer of imported corpora: checked utterances in, the embedded corpus's layout out.

Per split a Kaldi data directory (``feats.scp``, ``phones.scp``, ``pdf.scp``, ``text``, ``utt2spk``,
``spk2utt``, ``wav.scp`` + ``wav/`` where kept, ``words.ctm`` where the source has word timings), and at
the top ``phones.txt``, ``cmvn.ark`` (training-set statistics) and ``manifest.json``. Features are the
embedded corpus's (``cluster.data.features.fbank``: 16 kHz, 40 log-Mel, 25/10 ms, seeded ~1 LSB dither)
computed from the 16-bit wave that is also stored, so they can be recomputed from it bit for bit.

Audio is read with soundfile (wav, flac, NIST SPHERE) or, for lhotse manifests, with lhotse; audio at
another rate is resampled to 16 kHz with soxr (its HQ setting) and the manifest says how many were.
Features run in shards as Ray tasks. Everything goes to a temporary folder beside ``out`` that is
checked with ``check_corpus`` and renamed into place only when complete; on any failure it is removed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import kaldiio
import numpy as np
import ray
import soundfile as sf
import soxr

from cluster.data import features as F
from cluster.data.importers.source import Audio, SourceUtterance, checked_words, fit_to_audio, require_audio_file
from cluster.data.kaldi import (MANIFEST, CorpusError, check_corpus, cmvn_stats_matrix, move_into_place,
                                save_shard_arks, staging_dir, write_kaldi_tables)
from cluster.data.importers.phonesets import PhoneSet
from cluster.data.phones import STATES_PER_PHONE
from cluster.errors import GatelensError
from cluster.runtime import ensure_ray

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class ImportOptions:
    seed: int = 0  # dither and, where the source has no splits, the speaker split
    keep_wavs: str = "test"  # none | test | all: 16 kHz wavs for the explorer's audio
    shard_size: int = 100
    overwrite: bool = False


def load_audio(u: SourceUtterance) -> tuple[np.ndarray, int]:
    """Mono samples on the int16 scale (float64) and their rate; any failure names file and utterance."""
    a: Audio = u.audio
    where = f"{a.path}: utterance {u.utt_id}"
    try:
        if a.recording is not None:
            from lhotse import Recording  # deferred: lhotse imports torch (a second); only lhotse sources need it

            rec = Recording.from_dict(dict(a.recording))  # from_dict pops its keys
            x = np.asarray(rec.load_audio(offset=a.offset, duration=a.duration, channels=a.channel), dtype=np.float64)
            return x.reshape(-1) * 32768.0, int(rec.sampling_rate)
        require_audio_file(a.path, u.utt_id)
        with sf.SoundFile(a.path) as f:
            rate, total = f.samplerate, f.frames
            start = int(round(a.offset * rate))
            n = total - start if a.duration is None else int(round(a.duration * rate))
            if start + n > total + round(0.025 * rate) or start >= total:
                raise CorpusError(f"{where}: the utterance ({a.offset:.3f} s + {n / rate:.3f} s) runs past the end "
                                  f"of the audio ({total / rate:.3f} s)")
            if not 0 <= a.channel < f.channels:
                raise CorpusError(f"{where}: channel {a.channel} of a {f.channels}-channel file")
            f.seek(start)
            x = f.read(min(n, total - start), dtype="float64", always_2d=True)[:, a.channel]
        return x * 32768.0, int(rate)
    except CorpusError:
        raise
    except Exception as e:  # libsndfile, lhotse and audioread raise assorted errors on bad audio
        raise CorpusError(f"{where}: cannot read audio: {type(e).__name__}: {e}") from None


def render(u: SourceUtterance, segments: list[F.Segment], phone_ids: dict[str, int], seed: int):
    """(int16 wave, fbank, phone ids, target ids, source rate, seconds of edge filled as SIL)."""
    x, rate = load_audio(u)
    if x.size == 0:
        raise CorpusError(f"{u.audio.path}: utterance {u.utt_id}: no audio samples")
    segments, filled = fit_to_audio(u, segments, x.size / rate)
    if rate != F.SAMPLE_RATE:
        x = soxr.resample(x, rate, F.SAMPLE_RATE, quality="HQ")
    wave = F.to_int16(x)
    feats = F.fbank(wave, F.dither_seed(seed, u.utt_id))
    if feats.shape[0] == 0:
        raise CorpusError(f"{u.audio.path}: utterance {u.utt_id}: {wave.size} samples is shorter than one frame")
    phones, states = F.frame_labels(segments, feats.shape[0], phone_ids, STATES_PER_PHONE)
    targets = ((phones - 1) * STATES_PER_PHONE + states).astype(np.int32)
    return wave, feats, phones, targets, rate, filled


def import_shard(items: list[tuple[SourceUtterance, list[F.Segment]]], phone_ids: dict[str, int], seed: int,
                 tmp_root: str, split: str, shard: int, keep_wav: bool) -> dict:
    """One shard's archives and statistics; a bad utterance comes back as ``{"error": message}``."""
    root = Path(tmp_root)
    if not root.is_dir():  # the import failed elsewhere and its folder is gone
        return {"error": f"{root}: the import's folder was removed"}
    feats, phones, targets, wav_lines, samples = {}, {}, {}, [], 0
    rates: Counter = Counter()
    filled, filled_utts = 0.0, 0
    try:
        for u, segments in items:
            wave, feats[u.utt_id], phones[u.utt_id], targets[u.utt_id], rate, f = render(u, segments, phone_ids, seed)
            samples += wave.size
            rates[rate] += 1
            filled, filled_utts = filled + f, filled_utts + (f > 0)
            if keep_wav:
                rel = f"{split}/wav/{u.utt_id}.wav"
                (root / split).mkdir(exist_ok=True)
                (root / split / "wav").mkdir(exist_ok=True)
                sf.write(root / rel, wave, F.SAMPLE_RATE, subtype="PCM_16")
                wav_lines.append(f"{u.utt_id} {rel}\n")
    except CorpusError as e:
        return {"error": str(e)}
    scp = save_shard_arks(root / split / "data", shard, {"feats": feats, "phones": phones, "pdf": targets}, root)
    stacked = np.concatenate(list(feats.values())).astype(np.float64)
    return {"scp": scp, "wav": "".join(wav_lines), "frames": int(stacked.shape[0]), "samples": samples,
            "sum": stacked.sum(0), "sumsq": np.square(stacked).sum(0), "rates": dict(rates),
            "filled_seconds": filled, "filled_utterances": filled_utts,
            "phone_frames": np.bincount(np.concatenate(list(phones.values())), minlength=len(phone_ids) + 1)}


def words_ctm(utts: list[SourceUtterance]) -> str | None:
    """Kaldi CTM lines (``utt 1 start dur word``, seconds from the utterance's start), or None."""
    lines = []
    for u in utts:
        for w in checked_words(u) or []:
            lines.append(f"{u.utt_id} 1 {w.start:.3f} {w.end - w.start:.3f} {w.label.strip()}\n")
    return "".join(lines) if any(u.words is not None for u in utts) else None


def write_corpus(plan, out: str | os.PathLike, options: ImportOptions = ImportOptions(), progress=None) -> dict:
    """Compute features of a checked ``ImportPlan`` as Ray tasks, write and check the corpus, rename it
    into ``out``; returns the manifest (plus ``import_seconds`` and the check's summary)."""
    utts, split_of, phone_set, source = plan.utts, plan.split_of, plan.phone_set, plan.info
    out = Path(out).resolve()
    if options.keep_wavs not in ("none", "test", "all"):
        raise CorpusError(f"--keep-wavs must be none, test or all, not {options.keep_wavs!r}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not options.overwrite:
        raise CorpusError(f"{out} already exists and is not empty; pass --overwrite to replace it")
    checked = list(zip(utts, plan.segments))
    words = {s: words_ctm([u for u in utts if split_of[u.utt_id] == s]) for s in SPLITS}
    tmp = staging_dir(out)
    refs: list = []
    try:
        ensure_ray()
        t0 = time.time()  # after Ray's start: the import's own real-time factor
        task = ray.remote(num_cpus=1)(import_shard)
        shards = []
        for split in SPLITS:
            items = [c for c in checked if split_of[c[0].utt_id] == split]
            shards += [(split, k // options.shard_size, items[k:k + options.shard_size])
                       for k in range(0, len(items), options.shard_size)]
        keep = {s: options.keep_wavs == "all" or (options.keep_wavs == "test" and s == "test") for s in SPLITS}
        refs = [task.remote(items, phone_set.ids, options.seed, str(tmp), split, k, keep[split])
                for split, k, items in shards]
        results = []
        for k, ref in enumerate(refs):
            try:
                results.append(ray.get(ref))
            except ray.exceptions.RayError as e:  # a crash, not the input: exit status 1, its first line
                raise GatelensError(f"import shard {shards[k][1]} of split {shards[k][0]} failed: "
                                    f"{str(e).strip().splitlines()[-1]}") from None
            if "error" in results[-1]:
                raise CorpusError(results[-1]["error"])
            if progress:
                progress(k + 1, len(refs), time.time() - t0)
        manifest = _write_tables(tmp, utts, split_of, shards, results, words, phone_set, source, options, keep)
        summary = check_corpus(tmp)
        move_into_place(tmp, out)
    except BaseException:
        if refs:  # no task may write into the folder after it is removed
            for r in refs:
                ray.cancel(r)
            ray.wait(refs, num_returns=len(refs), timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest["import_seconds"] = time.time() - t0  # reported, not stored: the same input gives the same bytes
    manifest["check"] = summary
    return manifest


def _write_tables(tmp: Path, utts, split_of, shards, results, words, phone_set: PhoneSet, source: dict,
                  options: ImportOptions, keep: dict[str, bool]) -> dict:
    (tmp / "phones.txt").write_text(phone_set.phones_txt())
    splits, rates = {}, Counter()
    phone_frames = np.zeros(len(phone_set.symbols) + 1, dtype=np.int64)
    filled_s, filled_n = 0.0, 0
    for split in SPLITS:
        items = [u for u in utts if split_of[u.utt_id] == split]
        res = [r for (s, _, _), r in zip(shards, results) if s == split]
        tables = {name: "".join(r["scp"][name] for r in res) for name in ("feats", "phones", "pdf")}
        write_kaldi_tables(tmp / split, {u.utt_id: (u.speaker, " ".join(u.text.split())) for u in items}, tables,
                           "".join(r["wav"] for r in res) if keep[split] else None)
        if words[split] is not None:
            (tmp / split / "words.ctm").write_text(words[split])
        frames = sum(r["frames"] for r in res)
        phone_frames += sum(r["phone_frames"] for r in res)
        for r in res:
            rates.update({int(k): v for k, v in r["rates"].items()})
            filled_s, filled_n = filled_s + r["filled_seconds"], filled_n + r["filled_utterances"]
        splits[split] = {
            "feats": f"{split}/feats.scp", "phones": f"{split}/phones.scp", "targets": f"{split}/pdf.scp",
            "text": f"{split}/text", "utt2spk": f"{split}/utt2spk", "spk2utt": f"{split}/spk2utt",
            "wav": f"{split}/wav.scp" if keep[split] else None,
            "words": f"{split}/words.ctm" if words[split] is not None else None,
            "utterances": len(items), "speakers": len({u.speaker for u in items}), "frames": frames,
            "hours": round(sum(r["samples"] for r in res) / F.SAMPLE_RATE / 3600, 4),
        }
        if split == "train":
            kaldiio.save_ark(str(tmp / "cmvn.ark"), {"global": cmvn_stats_matrix(
                sum(r["sum"] for r in res), sum(r["sumsq"] for r in res), frames)})
    resampled = sum(n for r, n in rates.items() if r != F.SAMPLE_RATE)
    manifest = {
        "format": "gatelens-corpus", "format_version": 1, "name": source.get("name") or "imported",
        "kind": "imported", "root": ".", "phones": "phones.txt",
        "num_targets": len(phone_set.symbols) * STATES_PER_PHONE, "states_per_phone": STATES_PER_PHONE,
        "feat_dim": F.NUM_BINS, "frame_shift_ms": 10, "cmvn": "cmvn.ark", "splits": splits,
        "importer": {
            **source, "phone_set": phone_set.description, "seed": options.seed,
            "source_rates": {str(r): n for r, n in sorted(rates.items())},
            "resampled": {"utterances": resampled, "to": F.SAMPLE_RATE, "library": f"soxr {version('soxr')} (HQ)"}
            if resampled else None,
            "edges_filled_as_sil": {"utterances": filled_n, "seconds": round(filled_s, 3)},
            "versions": {p: version(p) for p in ("gatelens", "kaldi-native-fbank", "soundfile", "lhotse", "praatio", "soxr")},
            "phone_frames": {s: int(phone_frames[i]) for s, i in phone_set.ids.items()},
        },
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def describe(manifest: dict, out: str | os.PathLike) -> str:
    """The summary printed after an import."""
    imp = manifest["importer"]
    lines = [f"imported {imp['kind']} corpus {imp['source']} -> {out}", f"  phones: {imp['phone_set']}; "
             f"{manifest['num_targets']} targets; splits: {imp['splits']}"]
    for split, s in manifest["splits"].items():
        lines.append(f"  {split:5s} {s['utterances']:6d} utts {s['speakers']:4d} speakers {s['frames']:9d} frames "
                     f"{s['hours']:7.3f} h{'  + word alignment' if s.get('words') else ''}")
    if imp["resampled"]:
        lines.append(f"  resampled {imp['resampled']['utterances']} utterances to 16 kHz with {imp['resampled']['library']}"
                     f" (source rates: {', '.join(f'{r} Hz x{n}' for r, n in imp['source_rates'].items())})")
    edges = imp["edges_filled_as_sil"]
    if edges["utterances"]:
        lines.append(f"  unaligned audio at utterance edges labelled SIL: {edges['seconds']:.2f} s in "
                     f"{edges['utterances']} utterances")
    for note in imp.get("notes", []):
        lines.append(f"  {note}")
    if manifest.get("import_seconds"):
        hours = sum(s["hours"] for s in manifest["splits"].values())
        lines.append(f"  imported and checked in {manifest['import_seconds']:.1f} s "
                     f"({hours * 3600 / manifest['import_seconds']:.0f}x real time)")
    return "\n".join(lines)
