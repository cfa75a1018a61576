"""Noise for the memory-robustness analysis (paper Sec. 4.4, Fig. 8).

White and coloured noise are shaped in the spectrum (power ~ 1/f^alpha: 0 white, 1 pink,
2 brown); babble sums a few other utterances. ``insert_noise`` splices a segment into the speech
stream (the paper's "noise segment inserted"), ``mix_noise`` adds noise over the speech; SNR is
relative to the power of the speech it accompanies. All seeded.
"""

from __future__ import annotations

import numpy as np

COLOUR_ALPHA = {"white": 0.0, "pink": 1.0, "brown": 2.0}
KINDS = (*COLOUR_ALPHA, "babble")


def coloured_noise(n: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-power Gaussian noise with power spectrum ~ 1/f^alpha."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n)
    f[0] = f[1] if n > 1 else 1.0
    x = np.fft.irfft(spec / f ** (alpha / 2), n)
    return x / (np.sqrt(np.mean(x ** 2)) + 1e-12)


def babble(n: int, sources: list[np.ndarray], rng: np.random.Generator, talkers: tuple[int, int] = (4, 8)) -> np.ndarray:
    """Unit-power sum of 4-8 random stretches of other utterances (looped when shorter than n)."""
    if not sources:
        raise ValueError("babble noise needs other utterances as sources")
    k = int(rng.integers(talkers[0], talkers[1], endpoint=True))
    out = np.zeros(n)
    for idx in rng.choice(len(sources), size=k, replace=len(sources) < k):
        src = np.asarray(sources[idx], dtype=np.float64)
        src = src / (np.sqrt(np.mean(src ** 2)) + 1e-12)
        start = int(rng.integers(len(src)))
        out += np.resize(np.roll(src, -start), n)
    return out / (np.sqrt(np.mean(out ** 2)) + 1e-12)


def make_noise(kind: str, n: int, seed: int | list[int], sources: list[np.ndarray] | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind in COLOUR_ALPHA:
        return coloured_noise(n, COLOUR_ALPHA[kind], rng)
    if kind == "babble":
        return babble(n, sources or [], rng)
    raise ValueError(f"unknown noise kind {kind!r}; choose one of {', '.join(KINDS)}")


def _scaled(noise: np.ndarray, speech: np.ndarray, snr_db: float) -> np.ndarray:
    p_speech = np.mean(np.asarray(speech, dtype=np.float64) ** 2)
    return noise * np.sqrt(p_speech / 10 ** (snr_db / 10)) / (np.sqrt(np.mean(noise ** 2)) + 1e-12)


def insert_noise(speech: np.ndarray, at: int, length: int, kind: str, snr_db: float, seed: int | list[int],
                 sources: list[np.ndarray] | None = None) -> np.ndarray:
    """``speech[:at] + noise(length) + speech[at:]``: the speech after the noise is unchanged, only later."""
    if not 0 <= at <= len(speech):
        raise ValueError(f"insertion point {at} outside the utterance (0..{len(speech)} samples)")
    noise = _scaled(make_noise(kind, length, seed, sources), speech, snr_db)
    return np.concatenate([np.asarray(speech, dtype=np.float64)[:at], noise, np.asarray(speech, dtype=np.float64)[at:]])


def mix_noise(speech: np.ndarray, kind: str, snr_db: float, seed: int | list[int],
              sources: list[np.ndarray] | None = None) -> np.ndarray:
    """Speech plus noise of the same length at the given SNR."""
    noise = _scaled(make_noise(kind, len(speech), seed, sources), speech, snr_db)
    return np.asarray(speech, dtype=np.float64) + noise
