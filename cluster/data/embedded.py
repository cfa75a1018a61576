"""The embedded corpus: English sentences spoken by eSpeak NG, aligned by its own phoneme events.

``prepare_embedded(out_dir, utterances, seed)`` writes a Kaldi data directory per split
(``train/``, ``dev/``, ``test/``) plus ``phones.txt``, ``cmvn.ark`` and ``manifest.json`` at the
top, so that ``cluster.data.kaldi.read_corpus`` serves it exactly like a real Kaldi corpus.

Speakers are an eSpeak voice variant with a pitch and pitch range; each utterance also draws a
speaking rate. Dev and test voices are never heard in training, and every sentence belongs to
exactly one split. Generation runs in fixed-order shards, each a Ray task that synthesises in a fresh
single-threaded child process, because eSpeak's output depends on what its process synthesised
before and on libc's process-wide ``rand()`` (which a Ray worker's own threads may draw from):
the same seed gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from importlib import resources
from importlib.metadata import version
from pathlib import Path

import kaldiio
import numpy as np
import ray
from scipy.io import wavfile

from cluster.data import features as F
from cluster.data import phones as P
from cluster.data.espeak import SAMPLE_RATE as ESPEAK_RATE
from cluster.data.espeak import Synthesizer, Voice
from cluster.data.kaldi import (CorpusError, MANIFEST, cmvn_stats_matrix, move_into_place, save_shard_arks,
                                staging_dir, write_kaldi_tables)
from cluster.errors import InputError
from cluster.runtime import ensure_ray

SPLITS = ("train", "dev", "test")
SPLIT_SHARE = {"train": 0.8, "dev": 0.1, "test": 0.1}
# Human-sounding en-us variants; robotic/whisper/croak ones are left out. Dev and test voices are
# disjoint from training (notes: m7, f4, f5, klatt4 unseen in training).
VOICES = {
    "train": ["m1", "m2", "m3", "m4", "m5", "m6", "f1", "f2", "klatt", "klatt2", "klatt3", "klatt5",
              "Alex", "Andy", "Annie", "adam", "announcer", "aunty", "belinda", "benjamin", "boris",
              "caleb", "david", "ed", "grandma", "gustave", "ian", "john", "linda", "max", "norbert",
              "paul", "quincy", "rob", "robert", "shelby", "steph", "travis", "victor", "zac"],
    "dev": ["m8", "f3", "klatt6", "Michael", "grandpa", "steph2"],
    "test": ["m7", "f4", "f5", "klatt4", "edward", "mike2"],
}
PERSONAS_PER_VOICE = 3
PITCH, RANGE, RATE = (20, 80), (20, 80), (130, 230)
MIN_CLOSURE = 44  # samples at 22.05 kHz (2 ms): shorter zero runs are ordinary zero crossings
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class Planned:
    utt_id: str
    split: str
    speaker: str
    sentence: str
    voice: Voice


def load_sentences() -> list[str]:
    text = resources.files("cluster.data").joinpath("sentences.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def kaldi_text(sentence: str) -> str:
    """Kaldi ``text`` convention: upper-case words, punctuation dropped (apostrophes kept)."""
    return " ".join(re.sub(r"[^A-Za-z' ]+", " ", sentence).upper().split())


# The largest corpus generated in one go: its plan (one record per utterance) and every shard's
# result stay in this process's memory until the tables are written.
MAX_UTTERANCES = 1_000_000


def plan(utterances: int, seed: int) -> list[Planned]:
    """Every utterance of the corpus, in the fixed order in which it is generated."""
    if utterances < len(SPLITS):
        raise InputError(f"--utterances must be at least {len(SPLITS)} (one per split), got {utterances}")
    if utterances > MAX_UTTERANCES:
        raise InputError(f"--utterances {utterances}: at most {MAX_UTTERANCES:,} (~{MAX_UTTERANCES * 2.6 / 3600:,.0f} h "
                         f"of speech; the plan and the CMVN statistics are held in memory)")
    if seed < 0:
        raise InputError(f"--seed {seed}: a seed is a non-negative integer")
    rng = np.random.default_rng(seed)
    sentences = load_sentences()
    order = rng.permutation(len(sentences))
    n_dev = n_test = max(1, round(utterances * SPLIT_SHARE["dev"]))
    counts = {"train": utterances - n_dev - n_test, "dev": n_dev, "test": n_test}
    cut1 = int(len(order) * SPLIT_SHARE["train"])
    cut2 = cut1 + int(len(order) * SPLIT_SHARE["dev"])
    pools = {"train": order[:cut1], "dev": order[cut1:cut2], "test": order[cut2:]}
    out = []
    for split in SPLITS:
        personas = [
            (f"{v}-p{p:02d}r{r:02d}", v, int(p), int(r))
            for v in VOICES[split]
            for p, r in zip(rng.integers(*PITCH, PERSONAS_PER_VOICE, endpoint=True),
                            rng.integers(*RANGE, PERSONAS_PER_VOICE, endpoint=True))
        ]
        pool = pools[split]
        for k in range(counts[split]):
            spk, variant, pitch, prange = personas[int(rng.integers(len(personas)))]
            rate = int(rng.integers(*RATE, endpoint=True))
            # cycling the pool only repeats a sentence within its own split
            sentence = sentences[pool[k % len(pool)]]
            out.append(Planned(f"{spk}-{split}{k:06d}", split, spk, sentence,
                               Voice(variant, pitch, prange, rate)))
    return out


def segments_from_events(audio: np.ndarray, events: list[tuple[str, int]], utt_id: str) -> list[F.Segment]:
    """Phone segments (ARPAbet, seconds) from eSpeak phoneme events.

    A segment runs from its event to the next one. Linking marks merge into the segment before;
    two-phone symbols split at the midpoint; an unvoiced stop whose event fires at the burst is
    moved back to the start of the exact-zero closure before it (notes: median 39 ms).
    """
    spans: list[list] = []  # [mnemonic, start_sample, end_sample]
    for k, (mnemonic, start) in enumerate(events):
        end = events[k + 1][1] if k + 1 < len(events) else len(audio)
        if mnemonic == P.LINK:
            if spans:
                spans[-1][2] = max(spans[-1][2], end)
            continue
        if end > start:
            spans.append([mnemonic, start, end])
    for k in range(1, len(spans)):
        mnemonic, start, _ = spans[k]
        if P.strip_stress(mnemonic) in P.UNVOICED_STOPS:
            prev_start = spans[k - 1][1]
            nonzero = np.flatnonzero(audio[prev_start:start] != 0)
            closure_start = prev_start + (nonzero[-1] + 1 if nonzero.size else 1)
            if start - closure_start >= MIN_CLOSURE:
                spans[k][1] = closure_start
                spans[k - 1][2] = closure_start
    segments = []
    for mnemonic, start, end in spans:
        try:
            phones = P.to_arpabet(mnemonic)
        except KeyError:
            raise CorpusError(f"utterance {utt_id}: eSpeak phoneme {mnemonic!r} has no ARPAbet entry "
                              f"in cluster/data/phones.py") from None
        bounds = np.linspace(start, end, len(phones) + 1) / ESPEAK_RATE
        segments += [F.Segment(p, float(bounds[i]), float(bounds[i + 1])) for i, p in enumerate(phones)]
    if not segments:
        raise CorpusError(f"utterance {utt_id}: eSpeak produced no phoneme events")
    return segments


def render(p: Planned, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One utterance: (int16 16 kHz wave, fbank [T, 40], phone ids [T], target ids [T])."""
    spoken = Synthesizer.get().speak(p.sentence, p.voice, rand_seed=F.dither_seed(seed, p.utt_id)[1] ^ seed)
    segments = segments_from_events(spoken.audio, spoken.events, p.utt_id)
    wave = F.to_int16(F.normalise_level(F.resample_22050_to_16k(spoken.audio)))
    feats = F.fbank(wave, F.dither_seed(seed, p.utt_id))
    if feats.shape[0] == 0:
        raise CorpusError(f"utterance {p.utt_id}: {wave.size} samples is shorter than one frame")
    phone_ids, states = F.frame_labels(segments, feats.shape[0], P.PHONE_ID, P.STATES_PER_PHONE)
    targets = ((phone_ids - 1) * P.STATES_PER_PHONE + states).astype(np.int32)
    return wave, feats, phone_ids, targets


def generate_shard(items: list[Planned], seed: int, tmp_root: str, split: str, shard: int,
                   keep_wav: bool) -> dict:
    """Synthesise and write one shard's archives; returns its scp lines and statistics.

    Must run in a fresh process (see module docstring).
    """
    root = Path(tmp_root)
    data = root / split / "data"
    data.mkdir(parents=True, exist_ok=True)
    feats, phones, targets, wav_lines, samples = {}, {}, {}, [], 0
    for p in items:
        wave, feats[p.utt_id], phones[p.utt_id], targets[p.utt_id] = render(p, seed)
        samples += wave.size
        if keep_wav:
            wav_rel = f"{split}/wav/{p.utt_id}.wav"
            (root / split / "wav").mkdir(exist_ok=True)
            wavfile.write(root / wav_rel, F.SAMPLE_RATE, wave)
            wav_lines.append(f"{p.utt_id} {wav_rel}\n")
    scp = save_shard_arks(data, shard, {"feats": feats, "phones": phones, "pdf": targets}, Path(tmp_root))
    stacked = np.concatenate(list(feats.values())).astype(np.float64)
    return {
        "scp": scp,
        "wav": "".join(wav_lines),
        "frames": int(stacked.shape[0]),
        "samples": samples,
        "sum": stacked.sum(0),
        "sumsq": np.square(stacked).sum(0),
        "phone_frames": np.bincount(np.concatenate(list(phones.values())), minlength=len(P.PHONES) + 1),
    }


def generate_shard_in_fresh_process(*args) -> dict:
    """``generate_shard`` in a new interpreter with no other threads (see module docstring)."""
    proc = subprocess.run([sys.executable, "-m", "cluster.data.embedded", "--shard"],
                          input=pickle.dumps(args), capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise CorpusError(f"shard {args[3]} of split {args[2]} failed:\n{proc.stderr.decode(errors='replace')}")
    return pickle.loads(proc.stdout)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def prepare_embedded(out_dir: str | os.PathLike, utterances: int = 3000, seed: int = 0,
                     shard_size: int = 500, keep_wavs: str = "test", overwrite: bool = False,
                     progress=None) -> dict:
    """Generate the corpus into ``out_dir``; returns the manifest.

    Everything is written to a sibling temporary directory and renamed into place at the end, so
    an interrupted run never leaves a half-written corpus, and an existing corpus is replaced only
    when ``overwrite`` is set and the new one is complete.
    """
    out = Path(out_dir).resolve()
    if keep_wavs not in ("none", "test", "all"):
        raise InputError(f"keep_wavs must be none, test or all, not {keep_wavs!r}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CorpusError(f"{out} already exists and is not empty; pass --overwrite to replace it")
    planned = plan(utterances, seed)
    tmp = staging_dir(out)
    t0 = time.time()
    try:
        ensure_ray()
        task = ray.remote(num_cpus=1)(generate_shard_in_fresh_process)
        shards: list[tuple[str, int, list[Planned]]] = []
        for split in SPLITS:
            items = [p for p in planned if p.split == split]
            shards += [(split, k // shard_size, items[k:k + shard_size]) for k in range(0, len(items), shard_size)]
        keep = {s: keep_wavs == "all" or (keep_wavs == "test" and s == "test") for s in SPLITS}
        refs = [task.remote(items, seed, str(tmp), split, k, keep[split]) for split, k, items in shards]
        done = 0
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            ray.get(ready)  # surface a failed shard at once, with its traceback
            done += 1
            if progress:
                progress(done, len(refs), time.time() - t0)
        results = ray.get(refs)
        manifest = _write_tables(tmp, planned, shards, results, seed, utterances, shard_size, keep)
        move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # after writing: the timing is reported, not stored, so the same seed gives the same bytes
    manifest["generation_seconds"] = time.time() - t0
    return manifest


def _write_tables(tmp: Path, planned: list[Planned], shards, results, seed: int, utterances: int,
                  shard_size: int, keep: dict[str, bool]) -> dict:
    (tmp / "phones.txt").write_text(P.phones_txt())
    splits = {}
    phone_frames = np.zeros(len(P.PHONES) + 1, dtype=np.int64)
    for split in SPLITS:
        items = [p for p in planned if p.split == split]
        res = [r for (s, _, _), r in zip(shards, results) if s == split]
        tables = {name: "".join(r["scp"][name] for r in res) for name in ("feats", "phones", "pdf")}
        wav = "".join(r["wav"] for r in res) if keep[split] else None
        write_kaldi_tables(tmp / split, {p.utt_id: (p.speaker, kaldi_text(p.sentence)) for p in items},
                           tables, wav)
        frames = sum(r["frames"] for r in res)
        phone_frames += sum(r["phone_frames"] for r in res)
        splits[split] = {
            "feats": f"{split}/feats.scp", "phones": f"{split}/phones.scp", "targets": f"{split}/pdf.scp",
            "text": f"{split}/text", "utt2spk": f"{split}/utt2spk", "spk2utt": f"{split}/spk2utt",
            "wav": f"{split}/wav.scp" if keep[split] else None,
            "utterances": len(items), "speakers": len({p.speaker for p in items}),
            "voices": VOICES[split], "frames": frames,
            "hours": round(sum(r["samples"] for r in res) / F.SAMPLE_RATE / 3600, 4),
        }
        if split == "train":
            kaldiio.save_ark(str(tmp / "cmvn.ark"), {"global": cmvn_stats_matrix(
                sum(r["sum"] for r in res), sum(r["sumsq"] for r in res), frames)})
    sentences = resources.files("cluster.data").joinpath("sentences.txt").read_bytes()
    manifest = {
        "format": "gatelens-corpus",
        "format_version": 1,
        "name": "embedded",
        "kind": "embedded",
        "root": ".",
        "phones": "phones.txt",
        "num_targets": P.NUM_TARGETS,
        "states_per_phone": P.STATES_PER_PHONE,
        "feat_dim": F.NUM_BINS,
        "frame_shift_ms": 10,
        "cmvn": "cmvn.ark",
        "splits": splits,
        "generator": {
            "version": GENERATOR_VERSION,
            "gatelens": version("gatelens"),
            "espeakng_loader": version("espeakng-loader"),
            "kaldi_native_fbank": version("kaldi-native-fbank"),
            "seed": seed,
            "utterances": utterances,
            "shard_size": shard_size,  # part of the identity: Klatt voices carry state within a shard
            "sentences_sha256": _sha256(sentences),
            "phone_frames": {P.PHONES[i - 1]: int(n) for i, n in enumerate(phone_frames) if i > 0},
        },
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def describe(manifest: dict, out: str | os.PathLike) -> str:
    """The short summary printed after generation."""
    lines = [f"embedded corpus -> {out}"]
    for split, s in manifest["splits"].items():
        lines.append(f"  {split:5s} {s['utterances']:6d} utts {s['speakers']:4d} speakers "
                     f"{s['frames']:9d} frames {s['hours']:7.3f} h  voices: {', '.join(s['voices'][:6])}"
                     f"{' ...' if len(s['voices']) > 6 else ''}")
    pf = manifest["generator"]["phone_frames"]
    seen = sum(1 for v in pf.values() if v > 0)
    lines.append(f"  phones seen: {seen}/{len(pf)}; targets: {manifest['num_targets']}; "
                 f"seed {manifest['generator']['seed']}")
    if manifest.get("generation_seconds"):
        hours = sum(s["hours"] for s in manifest["splits"].values())
        lines.append(f"  generated in {manifest['generation_seconds']:.1f} s "
                     f"({hours * 3600 / manifest['generation_seconds']:.0f}x real time)")
    return "\n".join(lines)


if __name__ == "__main__" and sys.argv[1:] == ["--shard"]:
    # the child of generate_shard_in_fresh_process: pickled arguments in, pickled result out
    result = generate_shard(*pickle.loads(sys.stdin.buffer.read()))
    sys.stdout.buffer.write(pickle.dumps(result))
