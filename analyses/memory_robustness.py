"""Fig. 8: memory robustness, the change of the cell values caused by an inserted noise segment
(Sec. 4.4).

Per checkpoint, several conditions: ``utterances`` test utterances (a seeded draw of those whose
16 kHz wav the corpus keeps; the embedded corpus keeps them), each with a noise segment of each of
``NOISES`` (white, pink, babble; ``cluster.data.noise``) inserted at each of ``AT_FRACTIONS`` of
the utterance, at one SNR. ``utt_id``, ``noise`` and ``at_s`` restrict it to one of each. The
model runs once on the clean stream and once on all of an utterance's noisy streams as one batch
(they have one length), so 20 utterances x 6 conditions cost 20 clean and 20 batched passes.

Frame alignment. The segment is a whole number N of 10 ms frames and starts on a frame
boundary, so after it the noisy stream is the clean one shifted by N frames: noisy frame k
compares with clean frame k - N. Before the segment, frame k compares with clean frame k.
Frames whose 25 ms window overlaps the segment have no clean counterpart (NaN). The seeded
~1 LSB dither is laid out the same way (the clean stream's dither, with fresh dither for the
inserted samples), so aligned frames get identical features: differences after the segment
come from the model's memory alone.

Impact duration. The noise ends, for the model, at the first frame whose spliced input (+-
``context`` frames) holds no noise: end = (first frame after the segment) + context. Per
layer, mean_u |c_noisy - c_clean| is computed per frame; its peak is the largest value over all
aligned frames; the impact duration is the number of frames from ``end`` until the mean
difference first falls below max(fraction x peak, floor). ``floor`` is an absolute tolerance
for float rounding (a model without memory leaves ~1e-7). If it never falls below before the
utterance ends, the duration is censored: the frames observed, flagged ``censored``.

Aggregation over conditions, with censoring: a condition whose difference never falls below the
threshold before the utterance ends is censored (its duration is at least the frames observed),
so the per-layer impact is the Kaplan-Meier median over conditions (``analyses.stats.km_median``),
flagged ``impact_at_least`` when the survival curve never falls to one half; a plain median would count a
censored condition as ending where the utterance did.

Rows: the store's ``noise_impact`` table (per condition, layer and noisy frame: mean, max and RMS
of |difference| over units) and summary rows per condition (label "<utt>:<noise>:<snr>dB@<at>s")
and layer: impact_frames, censored, peak, threshold, frames_after, pre_noise_max (difference
before the noise could reach the model: should be 0), and impact_frames@<f> / censored@<f> for
each fraction of ``FRACTIONS`` (the claims' sensitivity); per layer (label ''): the Kaplan-Meier
medians impact_frames and impact_frames@<f>, impact_at_least and impact_at_least@<f> (1: the median is
only a lower bound; the claims heed it), censored_share, conditions; layer 0
(label ''): impact_frames averaged over layers.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import polars as pl
import torch
from scipy.io import wavfile

from analyses.common import (CHECKPOINT, Analysis, AnalysisError, FigureSpec, Output, Params, checkpoint_info,
                             corpus_for, figure_path, grid, save, shared, summary_frame)
from analyses.stats import km_median
from cluster.capture import CaptureConfig, load as load_model, open_corpus
from cluster.data.features import FRAME_SHIFT, SAMPLE_RATE, dither_seed, fbank
from cluster.data.kaldi import read_scp
from cluster.data.noise import KINDS, insert_noise
from cluster.tables import C, Table

NAME = "memory_robustness"
VERSION = 3  # 2: several utterances, noises and insertion points; Kaplan-Meier medians; 3: impact_at_least@<f>
FIGURE = FigureSpec("fig08_memory_robustness.png", "Fig. 8",
                    "Memory robustness: |c noisy - c clean| after an inserted noise segment")
NOISE_IMPACT = Table("noise_impact", "cell change caused by an inserted noise segment (Sec. 4.4, Fig. 8)", (
    C("checkpoint_id", "VARCHAR", key=True), C("analysis_version", "INTEGER", key=True),
    C("utt_id", "VARCHAR", key=True), C("noise", "VARCHAR", "white | pink | brown | babble", key=True),
    C("snr_db", "DOUBLE", key=True), C("noise_start", "INTEGER", "first frame of the inserted segment", key=True),
    C("noise_frames", "INTEGER"), C("layer", "INTEGER", key=True),
    C("frame", "INTEGER", "frame of the noisy utterance", key=True),
    C("mean_abs_diff", "DOUBLE", "mean over units of |c_noisy - c_clean| (Fig. 8)"), C("max_abs_diff", "DOUBLE"),
    C("rms_diff", "DOUBLE")),
    ("checkpoint_id", "analysis_version", "utt_id", "noise", "snr_db", "noise_start", "layer", "frame"))


# the impact fraction and its neighbours: each is measured (impact_frames@<fraction>) for the
# claims' sensitivity
FRACTIONS = (0.1, 0.05, 0.2)
NOISES = ("white", "pink", "babble")
AT_FRACTIONS = (0.25, 0.5)  # insertion points, as fractions of the utterance


@dataclass
class RobustnessParams(Params):
    utterances: int = 20  # test utterances (a seeded draw of those with a wav)
    utt_id: str | None = None  # only this utterance
    split: str = "test"
    noise: str | None = None  # only this noise (white | pink | brown | babble); default: each of NOISES
    snr_db: float = 0.0  # relative to the utterance's speech power
    noise_s: float = 0.3  # segment length, seconds (rounded to whole 10 ms frames)
    at_s: float | None = None  # only this insertion point, seconds; default: each of AT_FRACTIONS
    fraction: float = 0.1  # impact lasts until the mean difference falls below fraction x peak ...
    floor: float = 1e-3  # ... or below this absolute value, whichever is larger
    seed: int = 0  # the draw of utterances, and the noise seed (with the utterance id)
    babble_sources: int = 8  # other utterances of the split mixed into babble
    corpus: str | None = None  # default: the corpus the capture used


def load(store, checkpoint_id: str, params: RobustnessParams) -> dict:
    ck = checkpoint_info(store, checkpoint_id)
    if not ck.get("path"):
        raise AnalysisError(f"{store.path}: checkpoint {checkpoint_id} has no file path in the store")
    return {"checkpoint": ck, "corpus": corpus_for(store, checkpoint_id, params.corpus)}


# ---------------------------------------------------------------------------------------------
# The two streams


def wav_paths(corpus, split_name: str) -> dict[str, Path]:
    """{utt_id: wav file} of a split (its ``wav`` scp); pipes are refused (16 kHz files only)."""
    spec = corpus.split(split_name).spec
    if not spec.get("wav"):
        raise AnalysisError(f"{corpus.manifest_path}: split {split_name} keeps no wavs (the embedded corpus keeps "
                            f"the test split's; gatelens corpus --keep-wavs)")
    scp = corpus.path(spec["wav"])
    out = {}
    for utt, entry in read_scp(scp, corpus.root).items():
        if entry.rstrip().endswith("|"):
            raise AnalysisError(f"{scp}: utterance {utt} is a pipe; memory robustness reads 16 kHz wav files")
        out[utt] = Path(entry)
    return out


def read_wav(path: Path) -> np.ndarray:
    if not path.is_file():
        raise AnalysisError(f"{path}: wav file not found")
    rate, x = wavfile.read(path)
    if rate != SAMPLE_RATE or x.ndim != 1:
        raise AnalysisError(f"{path}: expected 16 kHz mono, got {rate} Hz with shape {x.shape}")
    return x.astype(np.float64)


def streams(wave: np.ndarray, at: int, length: int, kind: str, snr_db: float, noise_seed, dither_seed,
            sources: list[np.ndarray], clean: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(clean fbank [T, 40], noisy fbank [T + N, 40]) with the dither laid out alike (see above).

    ``features.fbank`` adds its own seeded dither d_f to whatever it is given; handing it
    noisy - d_f + d (in float64) makes it compute on noisy + d, with d the clean stream's dither
    around fresh dither for the inserted samples.
    """
    noisy = insert_noise(wave, at, length, kind, snr_db, noise_seed, sources)
    d_clean = np.random.default_rng(dither_seed).standard_normal(len(wave)).astype(np.float32)
    d_new = np.random.default_rng([*np.atleast_1d(noise_seed).tolist(), 1]).standard_normal(length).astype(np.float32)
    d = np.concatenate([d_clean[:at], d_new, d_clean[at:]]).astype(np.float64)
    d_f = np.random.default_rng(dither_seed).standard_normal(len(noisy)).astype(np.float32).astype(np.float64)
    # ``clean``: this wave's clean fbank already computed (it is the same for every condition)
    return (fbank(wave, dither_seed) if clean is None else clean), fbank(noisy - d_f + d, dither_seed)


def alignment(t_clean: int, at: int, frames_inserted: int, shift: int = 160, window: int = 400):
    """(ref [T + N], s, e): ref[k] = the clean frame noisy frame k compares with, -1 inside the
    segment; s = first noisy frame whose window overlaps it, e = first frame after it."""
    s = max(0, (at - window) // shift + 1)
    e = at // shift + frames_inserted
    k = np.arange(t_clean + frames_inserted)
    ref = np.where(k < s, k, np.where(k >= e, k - frames_inserted, -1))
    return ref, s, e


def impact_duration(mean_diff: np.ndarray, end: int, fraction: float, floor: float) -> dict:
    """Frames from ``end`` until mean_diff first falls below max(fraction x peak, floor); the peak
    over all aligned (non-NaN) frames. Censored when it never does."""
    peak = float(np.nanmax(mean_diff)) if np.isfinite(mean_diff).any() else 0.0
    threshold = max(fraction * peak, floor)
    after = mean_diff[end:]
    below = np.flatnonzero(after < threshold)
    censored = below.size == 0
    return {"impact_frames": float(len(after) if censored else below[0]), "censored": float(censored),
            "peak": peak, "threshold": threshold, "frames_after": float(len(after))}


# ---------------------------------------------------------------------------------------------


@dataclass
class NoisyPair:
    """One utterance run clean and with the noise segment inserted: {name: c [frames, H]} of each,
    the alignment (``ref``), the segment's first frame ``s``, and ``end`` (the first frame whose
    spliced input holds no noise). Shared with the per-unit memory analysis."""

    clean: dict
    noisy: dict
    ref: np.ndarray
    s: int
    end: int
    utt_id: str
    label: str
    wav: Path
    params: dict  # what was done, for the log


def noisy_pairs(model, meta, corpus_path: str | None, checkpoint_path: str, params: RobustnessParams) -> list[NoisyPair]:
    """Every condition of ``params`` (utterance x noise x insertion point), clean and noisy."""
    noises = [params.noise] if params.noise else list(NOISES)
    bad = [n for n in noises if n not in KINDS]
    if bad:
        raise AnalysisError(f"noise {bad[0]!r}: choose one of {', '.join(KINDS)}")
    corpus = open_corpus(CaptureConfig(checkpoint=checkpoint_path, corpus=corpus_path), meta)
    split = corpus.split(params.split)
    wavs = wav_paths(corpus, params.split)
    if params.utt_id is not None:
        if params.utt_id not in wavs:
            raise AnalysisError(f"{corpus.manifest_path}: no wav for utterance {params.utt_id} in split {params.split}")
        utt_ids = [params.utt_id]
    else:
        have = [u for u in split.utt_ids if u in wavs]
        if not have:
            raise AnalysisError(f"{corpus.manifest_path}: no utterance of split {params.split} has a wav")
        utt_ids = sorted(have[i] for i in np.random.default_rng(params.seed).permutation(len(have))[:params.utterances])
    seed = (corpus.manifest.get("generator") or {}).get("seed", 0)
    frames_inserted = max(1, int(round(params.noise_s * SAMPLE_RATE / FRAME_SHIFT)))
    cache: dict[str, np.ndarray] = {}

    def wav(u: str) -> np.ndarray:
        if u not in cache:
            cache[u] = read_wav(wavs[u])
        return cache[u]

    pairs = []
    for utt_id in utt_ids:
        wave = wav(utt_id)
        sources = [wav(u) for u in [u for u in sorted(wavs) if u != utt_id][:params.babble_sources]] \
            if "babble" in noises else None
        points = [params.at_s] if params.at_s is not None else [f * len(wave) / SAMPLE_RATE for f in AT_FRACTIONS]
        conditions, clean_f, seen = [], None, set()
        for at_s in points:
            at = int(at_s * SAMPLE_RATE) // FRAME_SHIFT * FRAME_SHIFT
            if not 0 <= at <= len(wave):
                raise AnalysisError(f"{wavs[utt_id]}: insertion point {at_s} s outside the utterance "
                                    f"({len(wave) / SAMPLE_RATE:.2f} s)")
            if at in seen:  # a very short utterance: two fractions on one frame are one condition
                continue
            seen.add(at)
            for noise in noises:
                clean_f, noisy_f = streams(wave, at, frames_inserted * FRAME_SHIFT, noise, params.snr_db,
                                           [params.seed, zlib.crc32(utt_id.encode())], dither_seed(seed, utt_id),
                                           sources if noise == "babble" else None, clean=clean_f)
                conditions.append((noise, at_s, at, noisy_f))
        stored = split.load(utt_id).feats
        feat_diff = float(np.abs(stored - clean_f).max()) if stored.shape == clean_f.shape else float("inf")
        if corpus.manifest.get("generator") and feat_diff > 1e-3:
            raise AnalysisError(f"{wavs[utt_id]}: features recomputed from the wav differ from the corpus features "
                                f"of {utt_id} by {feat_diff:g} (shapes {clean_f.shape} vs {stored.shape})")
        with torch.inference_mode():
            c_clean = model.capture(torch.from_numpy(clean_f), dtype=torch.float32, values=("c",))
            batch = torch.from_numpy(np.stack([x for *_, x in conditions]))  # one length: one batch
            c_noisy = model.capture(batch, dtype=torch.float32, values=("c",))
        for j, (noise, at_s, at, noisy_f) in enumerate(conditions):
            ref, s, e = alignment(len(clean_f), at, frames_inserted)
            if len(noisy_f) != len(ref):
                raise AnalysisError(f"{wavs[utt_id]}: {len(noisy_f)} noisy frames, expected {len(ref)}")
            end = e + model.config.context
            pairs.append(NoisyPair(c_clean, {k: v[j] for k, v in c_noisy.items()}, ref, s, end, utt_id,
                                   f"{utt_id}:{noise}:{params.snr_db:g}dB@{at_s:.2f}s", wavs[utt_id],
                                   {"utt_id": utt_id, "noise": noise, "at_samples": at, "noise_frames": frames_inserted,
                                    "noise_start": s, "noise_end": end, "feature_check_max_abs_diff": feat_diff}))
    return pairs


def aligned_diff(pair: NoisyPair, name: str) -> np.ndarray:
    """|c_noisy - c_clean| [noisy frames, H] of one layer (NaN where no clean frame compares)."""
    clean, noisy = pair.clean[name].numpy().astype(np.float64), pair.noisy[name].numpy().astype(np.float64)
    d = np.full(noisy.shape, np.nan)
    ok = pair.ref >= 0
    d[ok] = np.abs(noisy[ok] - clean[pair.ref[ok]])
    return d


PAIR_PARAMS = ("split", "utterances", "utt_id", "noise", "at_s", "snr_db", "noise_s", "seed", "babble_sources")


def checkpoint_pairs(inputs: dict, params: RobustnessParams) -> tuple[str, object, list[NoisyPair]]:
    """(checkpoint id, model, its ``NoisyPair`` per condition) of a loaded analysis input (one
    thread: a Ray task). Computed once per task for the analyses that share it (this one and
    unit memory: ``Analysis.shares``) when they ask for the same conditions (``PAIR_PARAMS``)."""
    ck = inputs["checkpoint"]
    torch.set_num_threads(1)

    def make():
        model, meta = load_model(ck["path"])
        return ck["checkpoint_id"], model, noisy_pairs(model, meta, inputs["corpus"], ck["path"], params)

    key = ("noisy_pairs", ck["checkpoint_id"], ck["path"], inputs["corpus"],
           tuple(getattr(params, n) for n in PAIR_PARAMS))
    return shared(key, make)


def layer_names(pair: NoisyPair) -> list[tuple[int, str]]:
    return sorted((int(n[1:].split(".")[0]), n) for n in pair.clean)


def run(inputs: dict, params: RobustnessParams, fig_dir) -> Output:
    cid, model, pairs = checkpoint_pairs(inputs, params)
    fractions = list(dict.fromkeys((params.fraction, *FRACTIONS)))
    rows, impact_rows = [], []
    per_layer: dict[int, dict[float, list[tuple[float, bool]]]] = {}
    for pair in pairs:
        for layer, name in layer_names(pair):
            d = aligned_diff(pair, name)
            mean, mx, rms = _rowstat(d, np.mean), _rowstat(d, np.max), np.sqrt(_rowstat(d ** 2, np.mean))
            at = {f: impact_duration(mean, pair.end, f, params.floor) for f in fractions}  # once per fraction
            stats = dict(at[params.fraction])
            stats["pre_noise_max"] = float(np.max(mean[:max(pair.s - model.config.context, 0)], initial=0.0))
            if stats["pre_noise_max"] > 1e-2:
                raise AnalysisError(f"checkpoint {cid}: cells differ by {stats['pre_noise_max']:g} before the noise "
                                    f"({pair.wav}, {pair.label}): the clean and noisy streams are misaligned")
            for f, at_f in at.items():
                stats[f"impact_frames@{f:g}"], stats[f"censored@{f:g}"] = at_f["impact_frames"], at_f["censored"]
                per_layer.setdefault(layer, {}).setdefault(f, []).append((at_f["impact_frames"], bool(at_f["censored"])))
            rows += [{"label": pair.label, "layer": layer, "metric": m, "value": v} for m, v in stats.items()]
            impact_rows.append(pl.DataFrame({
                "utt_id": pair.utt_id, "noise": pair.params["noise"], "snr_db": float(params.snr_db),
                "noise_start": int(pair.s), "noise_frames": pair.params["noise_frames"],
                "layer": np.full(len(mean), layer, np.int32), "frame": np.arange(len(mean), dtype=np.int32),
                "mean_abs_diff": mean, "max_abs_diff": mx, "rms_diff": rms}))
    medians = []
    for layer, by_f in sorted(per_layer.items()):
        for f, obs in by_f.items():
            median, at_least = km_median([t for t, _ in obs], [c for _, c in obs])
            rows += [{"layer": layer, "metric": f"impact_frames@{f:g}", "value": median},
                     {"layer": layer, "metric": f"impact_at_least@{f:g}", "value": float(at_least)}]
            if f == params.fraction:
                medians.append(median)
                rows += [{"layer": layer, "metric": m, "value": v} for m, v in (
                    ("impact_frames", median), ("impact_at_least", float(at_least)),
                    ("censored_share", float(np.mean([c for _, c in obs]))), ("conditions", float(len(obs))))]
    rows.append({"metric": "impact_frames", "value": float(np.mean(medians))})
    table = pl.concat(impact_rows).with_columns(pl.col("noise_start", "noise_frames").cast(pl.Int32)).select(
        pl.lit(cid).alias("checkpoint_id"), pl.lit(VERSION, dtype=pl.Int32).alias("analysis_version"), pl.all())
    first = pairs[0]
    figure = _draw({layer: aligned_diff(first, name) for layer, name in layer_names(first)},
                   [r for r in rows if r.get("label") == first.label], first.s, first.end, cid,
                   f"{first.label} (1 of {len(pairs)} conditions)", fig_dir)
    p = params.to_dict() | first.params | {"conditions": [q.label for q in pairs], "noise_frames": first.params["noise_frames"]}
    return Output(NAME, VERSION, cid, summary_frame(rows, cid, NAME, VERSION), [figure], p,
                  tables={NOISE_IMPACT.name: table})


def _rowstat(d: np.ndarray, fn) -> np.ndarray:
    """fn over units per frame; NaN for frames without a clean counterpart."""
    out = np.full(d.shape[0], np.nan)
    ok = ~np.isnan(d).any(1)
    out[ok] = fn(d[ok], axis=1)
    return out


def _draw(diffs: dict, rows: list[dict], s: int, end: int, cid: str, label: str, fig_dir):
    stat = {(r["layer"], r["metric"]): r["value"] for r in rows if r.get("layer")}
    fig, axes = grid(len(diffs) + 1, cols=1, size=(9.0, 2.3))
    cmap = plt.get_cmap("magma").with_extremes(bad="0.85")  # grey: the segment, no clean frame to compare
    for ax, (layer, d) in zip(axes, sorted(diffs.items())):
        vmax = np.nanpercentile(d, 99) if np.isfinite(d).any() else 1.0
        ax.imshow(d.T, aspect="auto", origin="lower", cmap=cmap, vmin=0, vmax=max(vmax, 1e-9), interpolation="nearest")
        for x in (s, end):
            ax.axvline(x, color="c", lw=0.8)
        dur = stat[(layer, "impact_frames")]
        ax.set_title(f"layer {layer}: impact {dur:.0f} frames{'+' if stat[(layer, 'censored')] else ''}", fontsize=9)
        ax.set_ylabel("unit")
    ax = axes[-1]
    for layer, d in sorted(diffs.items()):
        mean = _rowstat(d, np.mean)
        ax.plot(mean, lw=0.9, label=f"layer {layer}")
    ax.axvspan(s, end, color="0.85")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_xlabel("frame of the noisy utterance")
    ax.set_ylabel("mean |c diff|")
    ax.set_title("mean |difference| over units", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")  # "best" searches every point of the lines: seconds
    fig.suptitle(f"{FIGURE.paper}: |c noisy - c clean|, {label}, {cid}", fontsize=9)
    fig.tight_layout()
    return save(fig, figure_path(fig_dir, cid, FIGURE.file), FIGURE.paper)


ANALYSIS = Analysis(NAME, VERSION, CHECKPOINT, order=50, params=RobustnessParams, load=load, run=run,
                    figures=(FIGURE,), tables=(NOISE_IMPACT,), shares="noisy_pairs")
