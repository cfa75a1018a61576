"""Streaming per-unit summaries of captured gate values, exactly mergeable across shards.

A capture (``cluster/capture.py``) runs a checkpoint over a few hundred utterances and feeds every
frame's values to a ``UnitSummary``; only the summary leaves the Ray task, so memory is bounded by
units x bins (and units x phones), never by frames (a 4 x 512 model records ~20 KiB per frame).

Values are named as the models name them: ``L<layer>.<quantity>``, quantity one of
``c m i f o g`` (Sec. 3.1: cell, unit output, input / forget / output gate, candidate). Each update
gets, per name, an [N, H] array of N valid frames (padding already removed) and the N frames'
phone ids. Torch tensors and numpy arrays both work; values are read as float32 (float16 input is
widened exactly) by one fused C pass per array (torch ops where no C compiler is found).

What is kept, per (layer, unit, quantity):

- a fixed-bin histogram with underflow / overflow counts (``HistogramSpec``; bins fitted to the
  quantity's range: LSTM c on [-10, 10] as Fig. 1 clips it, GRU c and m, g on [-1, 1], gates on
  [0, 1]). Bin k holds lo + k w <= x < lo + (k+1) w, the last bin also holds x == hi: the same
  counts ``numpy.histogram`` gives for the same edges, so merged shards equal a one-shot histogram.
- count, mean, population variance (ddof 0), min, max of the non-NaN values; NaNs are counted apart.
- for c only: Fig. 3's range shares, values in (-2, 2) (the LSTM share) and values outside
  (-0.7, 0.7) (the GRU share), as counts (they merge) and shares. Both for every architecture.

and per (layer, unit, phone) and irregularity rule (Sec. 4.2): the phone's frames and the frames on
which the unit's c is irregular. Responsibility of unit u to phone p = irregular / frames.

Counts, histograms, min and max merge exactly; mean and variance merge with Chan's parallel formula
(float64), exact up to rounding.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import re
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import polars as pl
import torch

QUANTITIES = ("c", "m", "i", "f", "o", "g")
# Bump when what a summary means changes (bins, rules, definitions): the store keeps one set of
# rows per (checkpoint, analysis version), and a re-capture at the same version replaces them.
SUMMARY_VERSION = 1

# Fig. 3's ranges: share of LSTM cell values inside (-2, 2), of GRU cell values outside (-0.7, 0.7).
LSTM_SHARE_BOUND = 2.0
GRU_SHARE_BOUND = 0.7

_NAME = re.compile(r"^L(\d+)\.([a-z]+)$")
_MAX_BATCH_FRAMES = 1 << 24  # counts of one update are exact below 2^24 (float32 GEMV in the torch path)


def parse_name(name: str) -> tuple[int, str]:
    """'L3.c' -> (3, 'c')."""
    m = _NAME.match(name)
    if not m or m.group(2) not in QUANTITIES:
        raise ValueError(f"value name {name!r} is not L<layer>.<quantity> with quantity in {QUANTITIES}")
    return int(m.group(1)), m.group(2)


def is_gru(arch: str) -> bool:
    """GRU family (bounded cell, Sec. 3.1 Eq. 1) vs LSTM family (lstm, lstm_lazy, lstm_fused)."""
    return arch.lower().startswith("gru")


# ---------------------------------------------------------------------------------------------
# Histograms


@dataclass(frozen=True)
class HistogramSpec:
    """Fixed bins on [lo, hi]: ``bins`` bins of width w = (hi - lo) / bins.

    w must be a power of two no larger than 1 (1/8, 1/64, 1/128, ...) and lo a multiple of w: then
    bin = floor(x / w) - lo / w is computed without rounding in float16/32/64 (x / w only shifts
    the exponent), so the counts equal ``numpy.histogram(x, bins=spec.edges())`` exactly, with
    no binary search.
    """

    lo: float
    hi: float
    bins: int

    def __post_init__(self):
        if not (self.bins > 0 and self.hi > self.lo):
            raise ValueError(f"histogram needs bins > 0 and hi > lo, got {self}")
        w = (self.hi - self.lo) / self.bins
        mant, _ = math.frexp(w)
        if mant != 0.5 or w > 1 or (self.lo / w) != round(self.lo / w):
            raise ValueError(f"histogram bin width {w} of {self} must be a power of two <= 1 "
                             f"(1/8, 1/64, ...) and lo a multiple of it, so binning is exact")

    @property
    def width(self) -> float:
        return (self.hi - self.lo) / self.bins

    @property
    def scale(self) -> float:
        return 1.0 / self.width

    @property
    def offset(self) -> int:
        return int(round(-self.lo / self.width))

    def edges(self) -> np.ndarray:
        return self.lo + self.width * np.arange(self.bins + 1, dtype=np.float64)


def default_histogram_specs(arch: str) -> dict[str, HistogramSpec]:
    """Bins fitted to each quantity's range.

    LSTM c is unbounded: [-10, 10] in 1/8 steps (Fig. 1 clips at +-10; values beyond land in the
    under/overflow counts). GRU c stays in (-1, 1) (Sec. 4.1), m = o * tanh(c) (LSTM) or o * c
    (GRU) and g = tanh(.) lie in [-1, 1]: 1/64 steps. Gates i, f, o lie in [0, 1]: 1/128 steps.
    """
    unit = HistogramSpec(-1.0, 1.0, 128)
    gate = HistogramSpec(0.0, 1.0, 128)
    cell = unit if is_gru(arch) else HistogramSpec(-10.0, 10.0, 160)
    return {"c": cell, "m": unit, "g": unit, "i": gate, "f": gate, "o": gate}


# ---------------------------------------------------------------------------------------------
# Irregularity rules (Sec. 4.2)


_RULE = re.compile(r"^\s*(abs|pct)\s*([<>])\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*$")


@dataclass(frozen=True)
class IrregularityRule:
    """When a unit's cell value counts as irregular, written as a short spec string.

    - ``abs>10``: |c| > 10, the paper's LSTM rule (great positive or negative cell values).
    - ``abs<0.5``: |c| < 0.5, the paper's GRU rule (values scarce in (-0.5, 0.5)).
    - ``pct>99``: |c| above the 99th percentile of |c| over the layer's units and frames in this
      capture; ``pct<5``: below the 5th. For small models whose cells never reach |c| > 10. The
      percentile is read from the layer's c histogram (resolution: one bin, 1/8 for LSTM c,
      1/64 for GRU c; a percentile beyond the histogram's range clamps to its bound), so these
      rules need a first pass over the capture; the threshold then applied is stored per row.

    The paper's reading counts on c; ``quantity`` can name another value.
    """

    kind: str  # "abs" or "pct"
    op: str  # ">" or "<"
    value: float
    quantity: str = "c"

    def __post_init__(self):
        if self.kind not in ("abs", "pct") or self.op not in ("<", ">"):
            raise ValueError(f"irregularity rule {self}: kind must be abs|pct and op < or >")
        if self.kind == "pct" and not 0 < self.value < 100:
            raise ValueError(f"irregularity rule {self.name!r}: percentile must lie in (0, 100)")
        if self.quantity not in QUANTITIES:
            raise ValueError(f"irregularity rule {self.name!r}: quantity must be one of {QUANTITIES}")

    @classmethod
    def parse(cls, spec: str, quantity: str = "c") -> "IrregularityRule":
        m = _RULE.match(spec)
        if not m:
            raise ValueError(f"irregularity rule {spec!r} is not abs>X, abs<X, pct>P or pct<P "
                             f"(e.g. abs>10 for LSTM, abs<0.5 for GRU, pct>99)")
        return cls(m.group(1), m.group(2), float(m.group(3)), quantity)

    @property
    def name(self) -> str:
        """Canonical spec string, stored in the ``rule`` column: 'abs>10', 'abs<0.5', 'pct>99'."""
        return f"{self.kind}{self.op}{self.value:g}"

    @property
    def is_percentile(self) -> bool:
        return self.kind == "pct"

    def threshold_from_histogram(self, spec: HistogramSpec, counts: np.ndarray) -> float:
        """The |value| threshold of a pct rule, from a layer's summed histogram (bins + 2 slots:
        underflow, bins, overflow). Bins are folded onto |x| using their outer edges' magnitudes;
        the percentile is interpolated linearly inside the bin where it falls.
        """
        edges = spec.edges()
        # Each slot's |x| interval (lower, upper): folding the signed bins.
        lo_abs = np.minimum(np.abs(edges[:-1]), np.abs(edges[1:]))
        hi_abs = np.maximum(np.abs(edges[:-1]), np.abs(edges[1:]))
        lo_abs = np.where((edges[:-1] < 0) & (edges[1:] > 0), 0.0, lo_abs)
        bound = max(abs(spec.lo), abs(spec.hi))
        # under/overflow: beyond the range; their |x| exceeds the nearer bound (clamped to `bound`)
        lower = np.concatenate([[abs(spec.lo)], lo_abs, [abs(spec.hi)]])
        upper = np.concatenate([[bound], hi_abs, [bound]])
        order = np.argsort(lower, kind="stable")
        lower, upper, c = lower[order], upper[order], counts[order].astype(np.float64)
        total = c.sum()
        if total == 0:
            return float("nan")
        target = total * self.value / 100.0
        cum = np.cumsum(c)
        k = int(np.searchsorted(cum, target, side="left"))
        k = min(k, len(c) - 1)
        before = cum[k] - c[k]
        frac = 0.0 if c[k] == 0 else (target - before) / c[k]
        return float(lower[k] + frac * (upper[k] - lower[k]))


def paper_rule(arch: str) -> IrregularityRule:
    """Sec. 4.2: LSTM irregular beyond (-10, 10); GRU irregular inside (-0.5, 0.5)."""
    return IrregularityRule.parse("abs<0.5" if is_gru(arch) else "abs>10")


# ---------------------------------------------------------------------------------------------
# The hot loop in C
#
# Why C: a summary update is memory-bound. In torch each statistic is its own pass over the
# [N, H] values (min, max, shifted sums, the five steps of the bin index, the bincount): ~4 ns
# per value, as much as a 4 x 512 GRU's forward pass costs per frame. One fused pass in C costs
# ~1.7 ns. The kernel is compiled with the system C compiler on first use and cached
# (~/.cache/gatelens); without a compiler, or with GATELENS_SUMMARY_KERNEL=torch, the torch
# path below runs instead. Tests check that both give identical counts.

_KERNEL_SRC = r"""
#include <stdint.h>
#define R restrict
/* One batch, rows rows[0..n-1] of x [*, h] (float32, row-major; rows NULL: rows 0..n-1), into
   batch-local outputs: s1, s2 the per-unit sums of
   d = x - shift and d*d (double), vmin / vmax, and hist [h, bins + 2] (int32): slot 0 underflow,
   1..bins the bins, bins + 1 overflow. slot = floor(x * scale) + offset + 1 (x * scale is exact,
   scale being a power of two), clamped; x == hi goes to the last bin (numpy's closed last bin).
   A NaN makes s1 NaN, which the caller checks. */
void gl_summarise(const float *R x, const int64_t *R rows, int64_t n, int64_t h, const float *R shift, float scale,
                  int32_t offset, int32_t bins, float hi, double *R s1, double *R s2,
                  float *R vmin, float *R vmax, int32_t *R hist, int32_t *R slot) {
    const float ylo = (float)(-(offset + 1)), yhi = (float)(bins - offset);
    const int64_t stride = bins + 2;
    for (int64_t r = 0; r < n; r++) {
        const float *R row = x + (rows ? rows[r] : r) * h;
        for (int64_t u = 0; u < h; u++) {
            float v = row[u], d = v - shift[u];
            s1[u] += d;
            s2[u] += (double)d * d;
            vmin[u] = v < vmin[u] ? v : vmin[u];
            vmax[u] = v > vmax[u] ? v : vmax[u];
            float y = v * scale;
            y = y >= ylo ? y : ylo;          /* NaN lands here too: a valid slot, never out of bounds */
            y = y <= yhi ? y : yhi;
            int32_t i = (int32_t)y;
            i -= (y < (float)i);            /* floor, exact for |y| < 2^31 */
            slot[u] = i + offset + 1 - (v == hi);
        }
        for (int64_t u = 0; u < h; u++) hist[u * stride + slot[u]] += 1;
    }
}
/* counts[p, u] += frames r (row rows[r] of x) with phones[r] == p (p = 0 if phones is NULL)
   where |x[row, u]| op t; op 0: <, 1: >, 2: >=. NaN compares false. */
void gl_count_abs(const float *R x, const int64_t *R rows, int64_t n, int64_t h, const int32_t *R phones,
                  float t, int32_t op, int32_t *R counts) {
    for (int64_t r = 0; r < n; r++) {
        const float *R row = x + (rows ? rows[r] : r) * h;
        int32_t *R c = counts + (phones ? (int64_t)phones[r] * h : 0);
        if (op == 0)      for (int64_t u = 0; u < h; u++) c[u] += (row[u] < 0 ? -row[u] : row[u]) < t;
        else if (op == 1) for (int64_t u = 0; u < h; u++) c[u] += (row[u] < 0 ? -row[u] : row[u]) > t;
        else              for (int64_t u = 0; u < h; u++) c[u] += (row[u] < 0 ? -row[u] : row[u]) >= t;
    }
}
"""
_OPS = {"<": 0, ">": 1, ">=": 2}
_kernel_lib = None  # ctypes library, False when unavailable


def _kernel():
    """The compiled kernel, or None (GATELENS_SUMMARY_KERNEL=torch, or no C compiler)."""
    global _kernel_lib
    choice = os.environ.get("GATELENS_SUMMARY_KERNEL", "auto")
    if choice not in ("auto", "c", "torch"):
        raise ValueError(f"GATELENS_SUMMARY_KERNEL must be auto, c or torch, got {choice!r}")
    if choice == "torch":
        return None
    if _kernel_lib is None:
        try:
            _kernel_lib = _build_kernel()
        except (OSError, subprocess.SubprocessError) as e:
            if choice == "c":
                raise RuntimeError(f"GATELENS_SUMMARY_KERNEL=c but the C kernel cannot be built: {e}") from e
            warnings.warn(f"summaries: no C kernel ({e}); using the slower torch path", RuntimeWarning)
            _kernel_lib = False
    return _kernel_lib or None


def _build_kernel():
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise OSError("no C compiler (cc) found")
    # AVX2 + FMA when torch says the CPU has them (measured faster than -march=native's AVX-512
    # here); the cache key holds the flags, so a shared home dir never mixes machines' builds.
    avx2 = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    flags = ["-O3", "-std=c99", "-shared", "-fPIC"] + (["-mavx2", "-mfma"] if avx2 else [])
    key = hashlib.sha256("\0".join([_KERNEL_SRC, cc, *flags, platform.machine()]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gatelens"
    lib = cache / f"summaries-{key}.so"
    if not lib.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            src, out = Path(tmp) / "k.c", Path(tmp) / "k.so"
            src.write_text(_KERNEL_SRC)
            subprocess.run([cc, *flags, "-o", str(out), str(src)], check=True, capture_output=True, timeout=120)
            os.replace(out, lib)  # atomic: concurrent Ray workers may build it at once
    k = ctypes.CDLL(str(lib))
    P, I64, I32, F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_float
    k.gl_summarise.argtypes = [P, P, I64, I64, P, F, I32, I32, F, P, P, P, P, P, P]
    k.gl_summarise.restype = None
    k.gl_count_abs.argtypes = [P, P, I64, I64, P, F, I32, P]
    k.gl_count_abs.restype = None
    return k


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


# ---------------------------------------------------------------------------------------------
# The accumulator


@dataclass
class _QuantityState:
    """Running summary of one (layer, quantity) over H units."""

    spec: HistogramSpec
    hist: np.ndarray  # int64 [H, bins + 2]: underflow, bins..., overflow
    count: np.ndarray  # int64 [H] non-NaN values
    n_nan: np.ndarray  # int64 [H]
    mean: np.ndarray  # float64 [H]
    m2: np.ndarray  # float64 [H]: sum of squared deviations from the mean
    vmin: np.ndarray  # float64 [H]
    vmax: np.ndarray  # float64 [H]
    n_inside_2: np.ndarray | None = None  # int64 [H], c only
    n_outside_07: np.ndarray | None = None

    @classmethod
    def empty(cls, spec: HistogramSpec, hidden: int, ranges: bool) -> "_QuantityState":
        z = lambda: np.zeros(hidden, np.int64)  # noqa: E731
        return cls(spec, np.zeros((hidden, spec.bins + 2), np.int64), z(), z(),
                   np.zeros(hidden), np.zeros(hidden), np.full(hidden, np.inf), np.full(hidden, -np.inf),
                   z() if ranges else None, z() if ranges else None)


@dataclass
class UnitSummary:
    """Mergeable summary of one capture (or one shard of it); see the module docstring.

    arch: model architecture ('lstm', 'gru', 'lstm_lazy', 'lstm_fused'): picks default bins.
    num_phones: size of the phone table (ids 0 .. num_phones - 1; 0 is <eps>).
    rules: irregularity rules counted per (layer, unit, phone).
    thresholds: for pct rules, {(rule name, layer): |value| threshold} from a first pass
        (``percentile_thresholds``); pct rules without one are skipped in this pass.
    values: False keeps only the phone counts (the second pass of a pct rule).
    """

    arch: str
    num_phones: int
    rules: tuple[IrregularityRule, ...] = ()
    specs: dict[str, HistogramSpec] | None = None
    thresholds: dict[tuple[str, int], float] = field(default_factory=dict)
    values: bool = True

    def __post_init__(self):
        self.rules = tuple(self.rules)
        self.specs = dict(self.specs or default_histogram_specs(self.arch))
        missing = set(QUANTITIES) - set(self.specs)
        if missing:
            raise ValueError(f"histogram specs lack the quantities {sorted(missing)}")
        self.names: tuple[str, ...] | None = None  # fixed by the first update
        self.hidden: dict[int, int] = {}
        self.state: dict[tuple[int, str], _QuantityState] = {}
        self.phone_frames = np.zeros(self.num_phones, np.int64)  # frames per phone (all layers)
        self.irregular: dict[tuple[str, int], np.ndarray] = {}  # (rule, layer) -> int64 [H, P]
        self.frames = 0
        self.utterances = 0
        self._kernel = _make_kernel()

    def __getstate__(self):  # pickled by Ray: the kernel and its buffers stay behind
        return {k: v for k, v in self.__dict__.items() if k != "_kernel"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._kernel = _make_kernel()
        # Ray hands back read-only arrays (zero-copy from its object store); merging adds into
        # them, so take writable copies (units x bins: small).
        self.state = {k: _copy_state(v) for k, v in self.state.items()}
        self.irregular = {k: v.copy() for k, v in self.irregular.items()}
        self.phone_frames = self.phone_frames.copy()

    # -- update -------------------------------------------------------------------------------

    def _counted_rules(self, layer: int) -> list[tuple[IrregularityRule, float]]:
        out = []
        for r in self.rules:
            if r.is_percentile:
                t = self.thresholds.get((r.name, layer))
                if t is None:
                    continue
            else:
                t = r.value
            out.append((r, float(t)))
        return out

    @torch.no_grad()
    def update(self, values: Mapping[str, torch.Tensor | np.ndarray], phones, utterances: int = 1,
               rows=None) -> None:
        """Add N frames: values {name: [N, H]}, phones [N] (ids into the phone table).

        rows: the N frames are rows ``rows`` (int64 [N]) of each value array [M, H] instead, e.g.
        the valid frames of a padded batch; read in place, without a copy.
        """
        names = tuple(sorted(values))
        if self.names is None:
            if not names:
                raise ValueError("update() got no values")
            self.names = names
        elif names != self.names:
            raise ValueError(f"update() got values {names}, earlier updates had {self.names}")
        ph = torch.as_tensor(np.asarray(phones) if not isinstance(phones, torch.Tensor) else phones)
        ph = ph.to(torch.int64).reshape(-1)
        n = int(ph.numel())
        if n == 0:
            return
        if n >= _MAX_BATCH_FRAMES:
            raise ValueError(f"update() got {n} frames at once; feed at most {_MAX_BATCH_FRAMES - 1}")
        if int(ph.min()) < 0 or int(ph.max()) >= self.num_phones:
            raise ValueError(f"phone ids must lie in [0, {self.num_phones}), got [{int(ph.min())}, {int(ph.max())}]")
        if rows is not None:
            rows = torch.as_tensor(rows, dtype=torch.int64).reshape(-1).contiguous()
            if rows.numel() != n:
                raise ValueError(f"update() got {rows.numel()} rows for {n} phones")
        arrays = {}
        for name in names:  # check everything before counting anything
            layer, q = parse_name(name)
            x = _as_float32(values[name])
            m = n if rows is None else (int(rows.max()) + 1 if int(rows.min()) >= 0 else -1)
            if x.dim() != 2 or (x.shape[0] != n if rows is None else not 0 <= m <= x.shape[0]):
                raise ValueError(f"value {name} has shape {tuple(x.shape)}; expected [{n}, H] "
                                 f"(phones has {n} frames)" + ("" if rows is None else " or rows within it"))
            if self.hidden.setdefault(layer, x.shape[1]) != x.shape[1]:
                raise ValueError(f"value {name} has {x.shape[1]} units; layer {layer} had {self.hidden[layer]}")
            arrays[name] = (layer, q, x)
        self.phone_frames += torch.bincount(ph, minlength=self.num_phones).numpy()
        self.frames += n
        self.utterances += utterances
        kernel = self._kernel
        kernel.begin(ph, self.num_phones, rows)
        for name, (layer, q, x) in arrays.items():
            if self.values:
                batch = kernel.batch_state(self.specs[q], x, ranges=(q == "c"))
                if (layer, q) in self.state:
                    _merge_state(self.state[(layer, q)], batch)
                else:
                    self.state[(layer, q)] = batch
            for rule, t in self._counted_rules(layer):
                if rule.quantity != q:
                    continue
                counts = kernel.count_abs(x, t, rule.op, by_phone=True)  # [H, P]; NaN: regular
                key = (rule.name, layer)
                if key in self.irregular:
                    self.irregular[key] += counts
                else:
                    self.irregular[key] = counts

    # -- merge --------------------------------------------------------------------------------

    def merge(self, other: "UnitSummary") -> "UnitSummary":
        """Add another shard's summary into this one (in place); returns self."""
        for attr in ("arch", "num_phones", "rules", "specs", "thresholds", "values"):
            if getattr(self, attr) != getattr(other, attr):
                raise ValueError(f"cannot merge summaries with different {attr}: "
                                 f"{getattr(self, attr)!r} vs {getattr(other, attr)!r}")
        if other.names is None:
            return self
        if self.names is None:
            self.names, self.hidden = other.names, dict(other.hidden)
        elif self.names != other.names or self.hidden != other.hidden:
            raise ValueError(f"cannot merge summaries of different values: {self.names} {self.hidden} "
                             f"vs {other.names} {other.hidden}")
        self.phone_frames += other.phone_frames
        self.frames += other.frames
        self.utterances += other.utterances
        for key, o in other.state.items():
            if key in self.state:
                _merge_state(self.state[key], o)
            else:
                self.state[key] = _copy_state(o)
        for key, counts in other.irregular.items():
            if key in self.irregular:
                self.irregular[key] += counts
            else:
                self.irregular[key] = counts.copy()
        return self

    @classmethod
    def merge_all(cls, parts: list["UnitSummary"]) -> "UnitSummary":
        if not parts:
            raise ValueError("nothing to merge")
        out = parts[0]
        for p in parts[1:]:
            out.merge(p)
        return out

    # -- results ------------------------------------------------------------------------------

    def percentile_thresholds(self) -> dict[tuple[str, int], float]:
        """{(rule, layer): threshold} of every pct rule, from this (first-pass) summary."""
        out = {}
        for r in self.rules:
            if not r.is_percentile:
                continue
            for layer in sorted(self.hidden):
                st = self.state.get((layer, r.quantity))
                if st is None:
                    raise ValueError(f"rule {r.name}: the summary has no {r.quantity} values of layer {layer}")
                out[(r.name, layer)] = r.threshold_from_histogram(st.spec, st.hist.sum(0))
        return out

    def histogram(self, layer: int, quantity: str) -> np.ndarray:
        """int64 [H, bins + 2]: underflow, the bins, overflow."""
        return self.state[(layer, quantity)].hist

    def stats_frame(self, checkpoint_id: str, analysis_version: int = SUMMARY_VERSION) -> pl.DataFrame:
        """Rows of the ``unit_stats`` table."""
        parts = []
        for (layer, q), st in sorted(self.state.items(), key=lambda kv: (kv[0][0], QUANTITIES.index(kv[0][1]))):
            h = len(st.count)
            with np.errstate(invalid="ignore", divide="ignore"):
                var = np.where(st.count > 0, st.m2 / st.count, np.nan)
            empty = st.count == 0
            parts.append(pl.DataFrame({
                "layer": np.full(h, layer, np.int32), "unit": np.arange(h, dtype=np.int32),
                "quantity": [q] * h, "count": st.count, "n_nan": st.n_nan,
                "mean": np.where(empty, np.nan, st.mean), "variance": var,
                "min": np.where(empty, np.nan, st.vmin), "max": np.where(empty, np.nan, st.vmax),
                "n_inside_2": st.n_inside_2 if st.n_inside_2 is not None else pl.Series([None] * h, dtype=pl.Int64),
                "n_outside_0_7": st.n_outside_07 if st.n_outside_07 is not None else pl.Series([None] * h, dtype=pl.Int64),
            }))
        return _keyed(parts, checkpoint_id, analysis_version).with_columns(
            pl.col("mean", "variance", "min", "max").fill_nan(None),
            (pl.col("n_inside_2") / pl.col("count")).alias("share_inside_2"),
            (pl.col("n_outside_0_7") / pl.col("count")).alias("share_outside_0_7"))

    def layer_stats_frame(self, checkpoint_id: str, analysis_version: int = SUMMARY_VERSION) -> pl.DataFrame:
        """Rows of the ``layer_stats`` table: the unit summaries pooled over a layer's units (exact:
        counts add, means and variances pool by Chan's formula), so per-layer figures (Fig. 3)
        read a few rows instead of every unit's."""
        rows = []
        for (layer, q), st in sorted(self.state.items(), key=lambda kv: (kv[0][0], QUANTITIES.index(kv[0][1]))):
            c = st.count.astype(np.float64)
            n = int(st.count.sum())
            mean = float((c * st.mean).sum() / n) if n else None
            # pooled M2 = within-unit M2 + between-unit spread (the merge formula, all units at once)
            m2 = float(st.m2.sum() + (c * (st.mean - mean) ** 2).sum()) if n else None
            hist = st.hist.sum(0)
            rows.append({
                "layer": layer, "quantity": q, "units": len(st.count), "count": n, "n_nan": int(st.n_nan.sum()),
                "mean": mean, "variance": m2 / n if n else None,
                "min": float(st.vmin.min()) if n else None, "max": float(st.vmax.max()) if n else None,
                "n_inside_2": None if st.n_inside_2 is None else int(st.n_inside_2.sum()),
                "n_outside_0_7": None if st.n_outside_07 is None else int(st.n_outside_07.sum()),
                "share_inside_2": None if st.n_inside_2 is None or not n else int(st.n_inside_2.sum()) / n,
                "share_outside_0_7": None if st.n_outside_07 is None or not n else int(st.n_outside_07.sum()) / n,
                "lo": st.spec.lo, "hi": st.spec.hi, "bins": st.spec.bins,
                "underflow": int(hist[0]), "overflow": int(hist[-1]), "counts": hist[1:-1].tolist(),
            })
        schema = {"layer": pl.Int32, "quantity": pl.String, "units": pl.Int32, "count": pl.Int64, "n_nan": pl.Int64,
                  "mean": pl.Float64, "variance": pl.Float64, "min": pl.Float64, "max": pl.Float64,
                  "n_inside_2": pl.Int64, "n_outside_0_7": pl.Int64, "share_inside_2": pl.Float64,
                  "share_outside_0_7": pl.Float64, "lo": pl.Float64, "hi": pl.Float64,
                  "bins": pl.Int32, "underflow": pl.Int64, "overflow": pl.Int64, "counts": pl.List(pl.Int64)}
        return _keyed([pl.DataFrame(rows, schema=schema)], checkpoint_id, analysis_version)

    def histograms_frame(self, checkpoint_id: str, analysis_version: int = SUMMARY_VERSION) -> pl.DataFrame:
        """Rows of the ``unit_histograms`` table (counts as a list of ``bins`` integers)."""
        parts = []
        for (layer, q), st in sorted(self.state.items(), key=lambda kv: (kv[0][0], QUANTITIES.index(kv[0][1]))):
            h, spec = len(st.count), st.spec
            parts.append(pl.DataFrame({
                "layer": np.full(h, layer, np.int32), "unit": np.arange(h, dtype=np.int32),
                "quantity": [q] * h, "lo": np.full(h, spec.lo), "hi": np.full(h, spec.hi),
                "bins": np.full(h, spec.bins, np.int32),
                "underflow": st.hist[:, 0], "overflow": st.hist[:, -1],
                "counts": pl.Series(np.ascontiguousarray(st.hist[:, 1:-1])).cast(pl.List(pl.Int64)),
            }))
        return _keyed(parts, checkpoint_id, analysis_version)

    def responsibility_frame(self, checkpoint_id: str, phone_symbols: list[str],
                             analysis_version: int = SUMMARY_VERSION) -> pl.DataFrame:
        """Rows of the ``phone_responsibility`` table: one per (rule, layer, unit, phone that
        occurred), with the phone's frames, the unit's irregular frames on it and their ratio."""
        if len(phone_symbols) < self.num_phones:
            raise ValueError(f"{len(phone_symbols)} phone symbols for {self.num_phones} phone ids")
        seen = np.flatnonzero(self.phone_frames)
        parts = []
        for rule in self.rules:
            for layer in sorted(self.hidden):
                counts = self.irregular.get((rule.name, layer))
                if counts is None:
                    continue
                t = rule.value if not rule.is_percentile else self.thresholds[(rule.name, layer)]
                h = counts.shape[0]
                units = np.repeat(np.arange(h, dtype=np.int32), len(seen))
                ph = np.tile(seen.astype(np.int32), h)
                frames = np.tile(self.phone_frames[seen], h)
                irr = counts[:, seen].reshape(-1)
                parts.append(pl.DataFrame({
                    "rule": [rule.name] * len(units), "quantity": [rule.quantity] * len(units),
                    "threshold": np.full(len(units), t), "layer": np.full(len(units), layer, np.int32),
                    "unit": units, "phone_id": ph, "phone": [phone_symbols[i] for i in ph],
                    "frames": frames, "irregular": irr, "responsibility": irr / frames,
                }))
        return _keyed(parts, checkpoint_id, analysis_version)

    def frames_for_store(self, checkpoint_id: str, phone_symbols: list[str],
                         analysis_version: int = SUMMARY_VERSION) -> dict[str, pl.DataFrame]:
        """{table name: rows} for ``Store.ingest_analysis``."""
        out = {"phone_responsibility": self.responsibility_frame(checkpoint_id, phone_symbols, analysis_version)}
        if self.values:
            out["unit_stats"] = self.stats_frame(checkpoint_id, analysis_version)
            out["unit_histograms"] = self.histograms_frame(checkpoint_id, analysis_version)
            out["layer_stats"] = self.layer_stats_frame(checkpoint_id, analysis_version)
        return out


def f32_bound(t: float, op: str) -> float:
    """The float32 number b such that, for every float32 x, ``x op b`` equals ``x op t`` in exact
    arithmetic. Why: torch rounds a Python scalar to the tensor's dtype, and float32(0.7) is
    0.69999999 < 0.7, so a plain ``x >= 0.7`` would count x = float32(0.7) as outside (-0.7, 0.7).
    """
    f = np.float32(t)
    if op in (">=", "<"):  # compare against the smallest float32 >= t
        if float(f) < t:
            f = np.nextafter(f, np.float32(np.inf))
    elif op in (">", "<="):  # against the largest float32 <= t
        if float(f) > t:
            f = np.nextafter(f, np.float32(-np.inf))
    else:
        raise ValueError(f"unknown comparison {op!r}")
    return float(f)


def _as_float32(v) -> torch.Tensor:
    t = v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v))
    return t.detach().to(torch.float32).contiguous()


def _make_kernel():
    lib = _kernel()
    return _CKernel(lib) if lib is not None else _TorchKernel()


class _CKernel:
    """Summary arithmetic in one C pass per value array (see _KERNEL_SRC)."""

    def __init__(self, lib):
        self.lib = lib

    def begin(self, phones: torch.Tensor, num_phones: int, rows: torch.Tensor | None) -> None:
        self.phones = np.ascontiguousarray(phones.numpy(), dtype=np.int32)
        self.num_phones, self.n = num_phones, len(phones)
        self.rows = None if rows is None else rows.numpy()

    def batch_state(self, spec: HistogramSpec, x: torch.Tensor, ranges: bool) -> _QuantityState:
        xn, rows, n, h = x.numpy(), self.rows, self.n, x.shape[1]
        shift = np.ascontiguousarray(xn[0 if rows is None else rows[0]])  # deviations from the first frame
        s1, s2 = np.zeros(h), np.zeros(h)
        vmin, vmax = np.full(h, np.inf, np.float32), np.full(h, -np.inf, np.float32)
        hist = np.zeros((h, spec.bins + 2), np.int32)
        slot = np.empty(h, np.int32)
        self.lib.gl_summarise(_ptr(xn), None if rows is None else _ptr(rows), n, h, _ptr(shift), spec.scale,
                              spec.offset, spec.bins, spec.hi, _ptr(s1), _ptr(s2), _ptr(vmin), _ptr(vmax),
                              _ptr(hist), _ptr(slot))
        if np.isnan(s1).any():  # a diverged model: rare, so the slow exact path
            return _batch_state_nan(spec, x if rows is None else x[torch.from_numpy(rows)], ranges)
        st = _QuantityState(spec, hist.astype(np.int64), np.full(h, n, np.int64), np.zeros(h, np.int64),
                            shift + s1 / n, np.maximum(s2 - s1 * s1 / n, 0.0),
                            vmin.astype(np.float64), vmax.astype(np.float64))
        if ranges:
            st.n_inside_2 = self.count_abs(x, LSTM_SHARE_BOUND, "<", by_phone=False)
            st.n_outside_07 = self.count_abs(x, GRU_SHARE_BOUND, ">=", by_phone=False)
        return st

    def count_abs(self, x: torch.Tensor, t: float, op: str, by_phone: bool) -> np.ndarray:
        """Frames with |x| op t per unit: int64 [H, P] (by phone) or [H]."""
        xn, rows, h = x.numpy(), self.rows, x.shape[1]
        counts = np.zeros((self.num_phones if by_phone else 1, h), np.int32)
        self.lib.gl_count_abs(_ptr(xn), None if rows is None else _ptr(rows), self.n, h,
                              _ptr(self.phones) if by_phone else None, f32_bound(t, op), _OPS[op], _ptr(counts))
        return counts.T.astype(np.int64) if by_phone else counts[0].astype(np.int64)


class _TorchKernel:
    """The same arithmetic in torch ops, when there is no C compiler. Reuses [N, H] work buffers:
    a fresh 8 MB tensor per operation costs more in page faults than the arithmetic."""

    def __init__(self):
        self.f1 = self.f2 = self.i1 = torch.empty(0)
        self.offsets: dict[tuple[int, int], torch.Tensor] = {}

    def begin(self, phones: torch.Tensor, num_phones: int, rows: torch.Tensor | None) -> None:
        self.phones, self.num_phones, self.onehot, self.rows = phones, num_phones, None, rows
        self.ones = torch.ones(1, len(phones))
        self.selected: tuple | None = None  # (x, its selected rows): one copy per value array

    def _select(self, x: torch.Tensor) -> torch.Tensor:
        if self.rows is None:
            return x
        if self.selected is None or self.selected[0] is not x:
            self.selected = (x, x.index_select(0, self.rows))
        return self.selected[1]

    def _buffers(self, n: int, h: int):
        if self.f1.numel() < n * h:
            self.f1, self.f2 = torch.empty(n * h), torch.empty(n * h)
            self.i1 = torch.empty(n * h, dtype=torch.int32)
        return self.f1[: n * h].view(n, h), self.f2[: n * h].view(n, h), self.i1[: n * h].view(n, h)

    def batch_state(self, spec: HistogramSpec, x: torch.Tensor, ranges: bool) -> _QuantityState:
        x = self._select(x)
        n, h = x.shape
        ones = self.ones
        vmin, vmax = x.amin(0), x.amax(0)
        if bool(torch.isnan(vmax).any() or torch.isnan(vmin).any()):
            return _batch_state_nan(spec, x, ranges)
        f1, _, slot = self._buffers(n, h)
        # slot = floor(x / w) - lo / w + 1 clamped to [0, bins + 1]; one bincount over
        # (unit, slot) counts every unit at once.
        torch.mul(x, spec.scale, out=f1).floor_().add_(spec.offset + 1).clamp_(0, spec.bins + 1)
        if (h, spec.bins + 2) not in self.offsets:
            self.offsets[(h, spec.bins + 2)] = torch.arange(h, dtype=torch.int32).mul_(spec.bins + 2)
        slot.copy_(f1).add_(self.offsets[(h, spec.bins + 2)])
        hist = torch.bincount(slot.view(-1), minlength=h * (spec.bins + 2)).view(h, spec.bins + 2)
        if bool((vmax >= spec.hi).any()):
            # x == hi belongs to the last bin (numpy's last bin is closed), not to the overflow.
            at_hi = (ones @ torch.eq(x, spec.hi, out=f1)).view(h).to(torch.int64)
            hist[:, spec.bins + 1] -= at_hi
            hist[:, spec.bins] += at_hi
        # Mean and M2 around the batch mean (no cancellation). Column sums are GEMVs with a
        # ones row: faster than torch's dim-0 reductions, and exact for 0/1 comparison counts.
        shift = (ones @ x).view(h) / n
        d = torch.sub(x, shift, out=f1)
        s1 = (ones @ d).view(h).double().numpy()
        s2 = (ones @ d.square_()).view(h).double().numpy()
        st = _QuantityState(spec, hist.numpy(), np.full(h, n, np.int64), np.zeros(h, np.int64),
                            shift.double().numpy() + s1 / n, np.maximum(s2 - s1 * s1 / n, 0.0),
                            vmin.double().numpy(), vmax.double().numpy())
        if ranges:
            st.n_inside_2 = self._count(x, LSTM_SHARE_BOUND, "<", by_phone=False)
            st.n_outside_07 = self._count(x, GRU_SHARE_BOUND, ">=", by_phone=False)
        return st

    def count_abs(self, x: torch.Tensor, t: float, op: str, by_phone: bool) -> np.ndarray:
        return self._count(self._select(x), t, op, by_phone)

    def _count(self, x: torch.Tensor, t: float, op: str, by_phone: bool) -> np.ndarray:
        n, h = x.shape
        f1, f2, _ = self._buffers(n, h)
        a = torch.abs(x, out=f2)
        mask = {"<": torch.lt, ">": torch.gt, ">=": torch.ge}[op](a, f32_bound(t, op), out=f1)  # 0/1 floats
        if not by_phone:
            return (self.ones @ mask).view(h).to(torch.int64).numpy()
        if self.onehot is None:
            self.onehot = torch.zeros(n, self.num_phones).scatter_(1, self.phones.view(-1, 1), 1.0)
        return (mask.t() @ self.onehot).round_().to(torch.int64).numpy()  # [H, P], exact below 2^24


def _batch_state_nan(spec: HistogramSpec, x: torch.Tensor, ranges: bool) -> _QuantityState:
    """The same summary with NaNs left out (and counted), unit by unit in numpy. Also taken when
    +inf and -inf meet in a unit (its mean is then undefined: NaN)."""
    xn = x.double().numpy()
    h = xn.shape[1]
    st = _QuantityState.empty(spec, h, ranges)
    edges = spec.edges()
    for u in range(h):
        col = xn[:, u]
        keep = ~np.isnan(col)
        st.n_nan[u] = int((~keep).sum())
        col = col[keep]
        if col.size == 0:
            continue
        st.hist[u, 0] = int((col < spec.lo).sum())
        st.hist[u, 1:-1] = np.histogram(col, bins=edges)[0]
        st.hist[u, -1] = int((col > spec.hi).sum())
        with np.errstate(invalid="ignore"):
            st.count[u], st.mean[u] = col.size, col.mean()
            st.m2[u] = float(((col - st.mean[u]) ** 2).sum())
        st.vmin[u], st.vmax[u] = col.min(), col.max()
        if ranges:
            st.n_inside_2[u] = int((np.abs(col) < LSTM_SHARE_BOUND).sum())
            st.n_outside_07[u] = int((np.abs(col) >= GRU_SHARE_BOUND).sum())
    return st


def _merge_state(dst: _QuantityState, src: _QuantityState) -> None:
    """dst += src: counts add, min/max combine, (count, mean, M2) merge by Chan, Golub & LeVeque."""
    if dst.spec != src.spec or dst.hist.shape != src.hist.shape:
        raise ValueError(f"cannot merge histograms of {dst.spec} x {dst.hist.shape[0]} units with "
                         f"{src.spec} x {src.hist.shape[0]} units")
    dst.hist += src.hist
    dst.n_nan += src.n_nan
    n_a, n_b = dst.count.astype(np.float64), src.count.astype(np.float64)
    tot = n_a + n_b
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(tot > 0, n_b / tot, 0.0)
        delta = src.mean - dst.mean
        keep = n_b == 0
        dst.m2[:] = np.where(keep, dst.m2, dst.m2 + src.m2 + delta * delta * n_a * w)
        dst.mean[:] = np.where(keep, dst.mean, np.where(n_a == 0, src.mean, dst.mean + delta * w))
    dst.count += src.count
    np.minimum(dst.vmin, src.vmin, out=dst.vmin)
    np.maximum(dst.vmax, src.vmax, out=dst.vmax)
    if dst.n_inside_2 is not None:
        dst.n_inside_2 += src.n_inside_2
        dst.n_outside_07 += src.n_outside_07


def _copy_state(s: _QuantityState) -> _QuantityState:
    cp = lambda a: None if a is None else a.copy()  # noqa: E731
    return _QuantityState(s.spec, s.hist.copy(), s.count.copy(), s.n_nan.copy(), s.mean.copy(), s.m2.copy(),
                          s.vmin.copy(), s.vmax.copy(), cp(s.n_inside_2), cp(s.n_outside_07))


def _keyed(parts: list[pl.DataFrame], checkpoint_id: str, analysis_version: int) -> pl.DataFrame:
    df = pl.concat(parts) if parts else pl.DataFrame()
    return df.select(pl.lit(checkpoint_id).alias("checkpoint_id"),
                     pl.lit(analysis_version, dtype=pl.Int32).alias("analysis_version"), pl.all())
