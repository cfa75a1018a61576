"""Waveform -> 40-dim Kaldi log-Mel filterbanks, and phone segments -> per-frame labels.

Splicing (+-2 frames) and mean/variance normalisation are *not* applied here: they belong to
the model input (``cluster.models``), so the stored features stay plain Kaldi fbank.
"""

from __future__ import annotations

import zlib
from functools import lru_cache
from dataclasses import dataclass

import kaldi_native_fbank as knf
import numpy as np
from scipy.signal import firwin, resample_poly

SAMPLE_RATE = 16000
FRAME_SHIFT = 160  # 10 ms
FRAME_LENGTH = 400  # 25 ms
NUM_BINS = 40
TARGET_RMS_DBFS = -25.0


@dataclass(frozen=True)
class Segment:
    phone: str  # ARPAbet-39 or SIL
    start: float  # seconds
    end: float


@lru_cache(maxsize=1)
def _resampling_filter() -> np.ndarray:
    # resample_poly's own default design, built once instead of per utterance (a third of its time)
    return firwin(2 * 10 * 441 + 1, 1.0 / 441, window=("kaiser", 5.0))


def resample_22050_to_16k(x: np.ndarray) -> np.ndarray:
    """Exactly 22050 -> 16000 Hz (320/441)."""
    return resample_poly(np.asarray(x, dtype=np.float64), 320, 441, window=_resampling_filter())


def normalise_level(x: np.ndarray, dbfs: float = TARGET_RMS_DBFS) -> np.ndarray:
    """Scale to a fixed RMS re. int16 full scale: Klatt voices are ~3x quieter than the others."""
    rms = float(np.sqrt(np.mean(np.square(x)))) if x.size else 0.0
    if rms == 0.0:
        return x
    return x * (32768.0 * 10 ** (dbfs / 20) / rms)


def to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def dither_seed(seed: int, utt_id: str) -> list[int]:
    """Per-utterance seed, so features can be recomputed from a stored wav bit for bit."""
    return [seed, zlib.crc32(utt_id.encode())]


def num_frames(num_samples: int) -> int:
    return 0 if num_samples < FRAME_LENGTH else 1 + (num_samples - FRAME_LENGTH) // FRAME_SHIFT


def fbank(wave: np.ndarray, seed: list[int] | int) -> np.ndarray:
    """40 log-Mel bins, 25/10 ms, snip_edges, on int16-scale samples with seeded ~1 LSB dither.

    Dither is ours, not kaldi-native-fbank's, because eSpeak emits runs of exact zeros (log-mel
    would hit log(eps)) and Kaldi's own dither is not seedable from here.
    """
    x = np.asarray(wave, dtype=np.float32)
    x = x + np.random.default_rng(seed).standard_normal(x.shape[0]).astype(np.float32)
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = SAMPLE_RATE
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = True
    opts.mel_opts.num_bins = NUM_BINS
    fb = knf.OnlineFbank(opts)
    fb.accept_waveform(SAMPLE_RATE, x.tolist())
    fb.input_finished()
    n = fb.num_frames_ready
    if n == 0:
        return np.zeros((0, NUM_BINS), dtype=np.float32)
    return np.stack([fb.get_frame(i) for i in range(n)]).astype(np.float32)


def frame_labels(segments: list[Segment], n_frames: int, phone_id: dict[str, int],
                 states: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame phone ids and state indices (0..states-1) for ``n_frames`` frames.

    A frame takes the phone under its centre (t*10 + 12.5 ms); its state is the third of that
    phone segment (by time) the centre falls in. Frames past the last segment take its label.
    """
    centres = (np.arange(n_frames) * FRAME_SHIFT + FRAME_LENGTH / 2) / SAMPLE_RATE
    starts = np.array([s.start for s in segments])
    ends = np.array([s.end for s in segments])
    idx = np.clip(np.searchsorted(starts, centres, side="right") - 1, 0, len(segments) - 1)
    ids = np.array([phone_id[s.phone] for s in segments], dtype=np.int32)
    rel = (centres - starts[idx]) / np.maximum(ends[idx] - starts[idx], 1e-9)
    state = np.clip((rel * states).astype(np.int64), 0, states - 1).astype(np.int32)
    return ids[idx], state
