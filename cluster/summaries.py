"""Streaming per-unit summaries of captured gate values, exactly mergeable across shards.

A capture (``cluster/capture.py``) runs a checkpoint over a few hundred utterances and feeds every
frame's values to a ``UnitSummary``; only the summary leaves the Ray task, so memory is bounded by
units x bins (and units x phones), never by frames (a 4 x 512 model records ~20 KiB per frame).

Values are named as the models name them: ``L<layer>.<quantity>``, quantity one of
``c m i f o g`` (Sec. 3.1: cell, unit output, input / forget / output gate, candidate). Each update
gets, per name, an [N, H] array of N valid frames (padding removed, or the valid rows named) and
the N frames' phone ids. Torch tensors and numpy arrays both work; values are read as float32
(float16 and bfloat16 input is widened exactly) by one compiled pass per array (numba).

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

``histogram_quantiles`` reads quantiles off such a histogram (the analyses' figures, and the pct
rules' thresholds through the same ``interval_quantiles``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import polars as pl
import torch

from cluster.jit import compiled
from cluster.tables import QUANTITIES  # the names a capture records; summaries key their state by them

# Bump when what a summary means changes (bins, rules, definitions): the store keeps one set of
# rows per (checkpoint, analysis version), and a re-capture at the same version replaces them.
SUMMARY_VERSION = 1

# Fig. 3's ranges: share of LSTM cell values inside (-2, 2), of GRU cell values outside (-0.7, 0.7).
LSTM_SHARE_BOUND = 2.0
GRU_SHARE_BOUND = 0.7

_NAME = re.compile(r"^L(\d+)\.([a-z]+)$")
_MAX_BATCH_FRAMES = 1 << 31  # one update's counts are int32 scratch (see _summarise)


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
        return interval_quantiles(lower, upper, counts, (self.value,), per=100.0)[0]


def paper_rule(arch: str) -> IrregularityRule:
    """Sec. 4.2: LSTM irregular beyond (-10, 10); GRU irregular inside (-0.5, 0.5)."""
    return IrregularityRule.parse("abs<0.5" if is_gru(arch) else "abs>10")


# ---------------------------------------------------------------------------------------------
# Quantiles of a histogram


def interval_quantiles(lower, upper, mass, qs: Sequence[float], per: float = 1.0) -> list[float]:
    """Quantiles qs (fractions of ``per``: 1 for [0, 1], 100 for percentiles) of mass spread
    uniformly over intervals [lower, upper].

    The intervals are taken in order of their lower edge (ties keep their given order); quantile q
    lies in the first interval whose cumulative mass reaches total x q / per, interpolated linearly
    inside it, so it is exact to within that interval's width. A zero-width interval holds its
    mass at one point (a histogram's clamped under/overflow). All NaN when there is no mass.
    """
    lower = np.asarray(lower, dtype=np.float64)
    upper = np.asarray(upper, dtype=np.float64)
    mass = np.asarray(mass, dtype=np.float64)
    if not lower.shape == upper.shape == mass.shape or lower.ndim != 1:
        raise ValueError(f"interval_quantiles needs equal-length 1-d lower, upper and mass, got shapes "
                         f"{lower.shape}, {upper.shape}, {mass.shape}")
    order = np.argsort(lower, kind="stable")
    lower, upper, mass = lower[order], upper[order], mass[order]
    total = mass.sum()
    if total == 0:
        return [float("nan")] * len(qs)
    cum = np.cumsum(mass)
    out = []
    for q in qs:
        target = total * q / per
        k = min(int(np.searchsorted(cum, target, side="left")), len(mass) - 1)
        before = cum[k] - mass[k]
        frac = 0.0 if mass[k] == 0 else (target - before) / mass[k]
        out.append(float(lower[k] + frac * (upper[k] - lower[k])))
    return out


def histogram_quantiles(counts, lo: float, hi: float, underflow: int, overflow: int,
                        qs: Sequence[float] = (0.05, 0.5, 0.95)) -> list[float]:
    """Quantiles of a fixed-bin histogram on [lo, hi] (``len(counts)`` equal bins), values beyond
    [lo, hi] clamped to lo / hi (as the figures clip them), interpolated linearly inside a bin.
    The stored ``unit_histograms`` / ``layer_stats`` rows give every argument."""
    counts = np.asarray(counts, dtype=np.float64)
    edges = np.linspace(lo, hi, len(counts) + 1)
    lower = np.concatenate([[lo], edges[:-1], [hi]])
    upper = np.concatenate([[lo], edges[1:], [hi]])
    return interval_quantiles(lower, upper, np.concatenate([[underflow], counts, [overflow]]), qs)


# ---------------------------------------------------------------------------------------------
# The hot loops, compiled by numba
#
# Why compiled: a summary update is memory-bound. As array operations (torch), each statistic is
# its own pass over the [N, H] values (min, max, shifted sums, the steps of the bin index, the
# bincount, the range shares): ~4 ns per value, as much as a 4 x 512 GRU's forward pass costs per
# frame. One fused loop reads each value once (~2 ns per value), handles NaN inline, and adds
# straight into the running counters. Compiled without fastmath, so the counts are exact and the
# sums IEEE (no reordering), in one thread (a Ray task gets one CPU); nogil, so it never holds up
# the task's other threads.
#
# numba compiles a function on its first call (~3 s for all of them) and caches the machine code
# in __pycache__ beside this file, else in the user's cache directory (~/.cache/numba), or in
# $NUMBA_CACHE_DIR when set: later processes, every Ray task among them, load it instead. Where
# none is writable the functions are compiled in each process rather than failing the import.


_compiled = compiled


@_compiled
def _chan(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """(mean, M2) of two parts' pooled values from each part's count, mean and M2 (Chan et al.'s
    pairwise update: no cancellation, however large the counts). A part holding +-inf has mean
    +-inf: the pooled mean is then their sum (+-inf, or NaN once +inf meets -inf) and M2 NaN, as
    numpy has them, whichever part comes first."""
    if n_b == 0:
        return mean_a, m2_a
    if n_a == 0:
        return mean_b, m2_b
    if not (math.isfinite(mean_a) and math.isfinite(mean_b)):
        return mean_a + mean_b, math.nan
    w = n_b / (n_a + n_b)
    delta = mean_b - mean_a
    return mean_a + delta * w, m2_a + m2_b + delta * delta * n_a * w


@_compiled
def _merge_moments(count, mean, m2, count_b, mean_b, m2_b):
    """mean, m2 (float64 [H]) become those of the pooled parts; counts are added by the caller."""
    for u in range(count.size):
        mean[u], m2[u] = _chan(count[u], mean[u], m2[u], count_b[u], mean_b[u], m2_b[u])


@_compiled
def _summarise(x, rows, n, scale, offset, bins, hi, inside, outside,
               hist, count, n_nan, mean, m2, vmin, vmax, n_inside, n_outside):
    """Add N frames of x (float32 [M, H]) to one quantity's running counters, in place.

    The frames are rows ``rows[0..n-1]`` of x, or rows 0..n-1 when ``rows`` is empty. Counters:
    hist int64 [H, bins + 2] (slot 0 underflow, 1..bins the bins, bins + 1 overflow), count and
    n_nan int64 [H], mean and m2 float64 [H], vmin and vmax float64 [H], and when n_inside and
    n_outside have H entries (c only; else none) the frames with |x| < inside and |x| >= outside.

    slot = floor(x * scale) + offset + 1, clamped to [0, bins + 1]: x * scale is exact (scale is a
    power of two), and x == hi goes to the last bin (numpy's last bin is closed). NaN is counted in
    n_nan and nowhere else. The batch's moments are sums of deviations from a shift (the first
    frame's value, 0 where that is not finite) in float64, merged into the running ones by Chan's
    formula.

    Shaped for speed (each choice measured): the batch counts go to float32 / int32 scratch first
    (an int32 histogram of a 512-unit layer fits in L2, an int64 one does not); the slot is
    computed in float32 (numba widens int32 arithmetic to int64, halving the vector width); loads
    are unconditional and min / max are fmin / fmax, so the frame loop vectorises without masked
    loads and stores; the range shares and the scatter into the histogram are loops of their own.
    """
    h = x.shape[1]
    has_rows = rows.size > 0
    ranges = n_inside.size > 0
    ylo, yhi = np.float32(-(offset + 1)), np.float32(bins - offset)
    base, one, zero = np.float32(offset + 1), np.float32(1.0), np.float32(0.0)
    first = rows[0] if has_rows else 0
    shift = np.zeros(h)
    for u in range(h):
        if math.isfinite(x[first, u]):
            shift[u] = x[first, u]
    s1, s2 = np.zeros(h), np.zeros(h)
    nans, n_in, n_out = np.zeros(h, np.int32), np.zeros(h, np.int32), np.zeros(h, np.int32)
    lo, up = np.full(h, np.inf, np.float32), np.full(h, -np.inf, np.float32)
    slot = np.zeros(h, np.int32)
    counts = np.zeros((h, bins + 2), np.int32)
    for i in range(n):
        row = x[rows[i] if has_rows else i]
        for u in range(h):
            v = row[u]
            nan = v != v
            d = np.float64(v) - shift[u]
            d = 0.0 if nan else d
            s1[u] += d
            s2[u] += d * d
            nans[u] += nan
            lo[u] = np.fmin(lo[u], v)  # fmin / fmax pass NaN over
            up[u] = np.fmax(up[u], v)
            y = v * scale
            y = y if y >= ylo else ylo  # NaN lands here too: slot 0, taken back out below
            y = y if y <= yhi else yhi
            slot[u] = np.int32(np.floor(y) + (base - (one if v == hi else zero)))
        if ranges:  # a loop of its own: a branch inside the one above stops its vectorisation
            for u in range(h):
                a = abs(row[u])
                n_in[u] += a < inside
                n_out[u] += a >= outside
        for u in range(h):
            counts[u, np.uint64(slot[u])] += 1  # unsigned: no negative-index wrap-around check
    for u in range(h):
        counts[u, 0] -= nans[u]
        for k in range(bins + 2):
            hist[u, k] += counts[u, k]
        n_nan[u] += nans[u]
        if ranges:
            n_inside[u] += n_in[u]
            n_outside[u] += n_out[u]
        nb = n - nans[u]
        if nb == 0:
            continue
        vmin[u] = min(vmin[u], lo[u])
        vmax[u] = max(vmax[u], up[u])
        m2_b = s2[u] - s1[u] * s1[u] / nb
        m2_b = 0.0 if m2_b < 0 else m2_b  # rounding; NaN (from inf) stays NaN
        mean[u], m2[u] = _chan(count[u], mean[u], m2[u], nb, shift[u] + s1[u] / nb, m2_b)
        count[u] += nb


@_compiled
def _count_abs(x, rows, n, phones, t, greater, counts):
    """counts[u, p] (int64 [H, P]) += the frames r with phones[r] == p where |x| > t (greater) or
    |x| < t; rows as in ``_summarise``. NaN compares false: never irregular."""
    h = x.shape[1]
    has_rows = rows.size > 0
    by_phone = np.zeros((counts.shape[1], h), np.int64)  # phone-major: one contiguous row per frame
    for i in range(n):
        row = x[rows[i] if has_rows else i]
        c = by_phone[phones[i]]
        if greater:
            for u in range(h):
                c[u] += abs(row[u]) > t
        else:
            for u in range(h):
                c[u] += abs(row[u]) < t
    for u in range(h):
        for p in range(counts.shape[1]):
            counts[u, p] += by_phone[p, u]


_EMPTY = np.empty(0, np.int64)  # for the loops above: "rows 0..n-1", "no range counts"


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

    def __setstate__(self, state):
        self.__dict__.update(state)
        # Ray hands back read-only arrays (zero-copy from its object store); updates and merges
        # add into them in place, so take writable copies (units x bins: small).
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
        ph = _as_int64(phones)
        n = ph.size
        if n == 0:
            return
        if n >= _MAX_BATCH_FRAMES:
            raise ValueError(f"update() got {n} frames at once; feed at most {_MAX_BATCH_FRAMES - 1}")
        if int(ph.min()) < 0 or int(ph.max()) >= self.num_phones:
            raise ValueError(f"phone ids must lie in [0, {self.num_phones}), got [{int(ph.min())}, {int(ph.max())}]")
        if rows is not None:
            rows = _as_int64(rows)
            if rows.size != n:
                raise ValueError(f"update() got {rows.size} rows for {n} phones")
        arrays = {}
        for name in names:  # check everything before counting anything
            layer, q = parse_name(name)
            x = _as_float32(values[name])
            m = n if rows is None else (int(rows.max()) + 1 if int(rows.min()) >= 0 else -1)
            if x.ndim != 2 or (x.shape[0] != n if rows is None else not 0 <= m <= x.shape[0]):
                raise ValueError(f"value {name} has shape {tuple(x.shape)}; expected [{n}, H] "
                                 f"(phones has {n} frames)" + ("" if rows is None else " or rows within it"))
            if self.hidden.setdefault(layer, x.shape[1]) != x.shape[1]:
                raise ValueError(f"value {name} has {x.shape[1]} units; layer {layer} had {self.hidden[layer]}")
            arrays[name] = (layer, q, x)
        self.phone_frames += np.bincount(ph, minlength=self.num_phones)
        self.frames += n
        self.utterances += utterances
        rows = _EMPTY if rows is None else rows
        for name, (layer, q, x) in arrays.items():
            if self.values:
                st = self.state.get((layer, q))
                if st is None:
                    st = self.state[(layer, q)] = _QuantityState.empty(self.specs[q], x.shape[1], q == "c")
                spec = st.spec
                _summarise(x, rows, n, np.float32(spec.scale), spec.offset, spec.bins, np.float32(spec.hi),
                           *_SHARE_BOUNDS, st.hist, st.count, st.n_nan, st.mean, st.m2, st.vmin, st.vmax,
                           _EMPTY if st.n_inside_2 is None else st.n_inside_2,
                           _EMPTY if st.n_outside_07 is None else st.n_outside_07)
            for rule, t in self._counted_rules(layer):
                if rule.quantity != q:
                    continue
                key = (rule.name, layer)
                if key not in self.irregular:
                    self.irregular[key] = np.zeros((x.shape[1], self.num_phones), np.int64)
                _count_abs(x, rows, n, ph, np.float32(f32_bound(t, rule.op)), rule.op == ">",
                           self.irregular[key])  # NaN: regular

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
        """{table name: rows} for ``Store.ingest``."""
        out = {"phone_responsibility": self.responsibility_frame(checkpoint_id, phone_symbols, analysis_version)}
        if self.values:
            out["unit_stats"] = self.stats_frame(checkpoint_id, analysis_version)
            out["unit_histograms"] = self.histograms_frame(checkpoint_id, analysis_version)
            out["layer_stats"] = self.layer_stats_frame(checkpoint_id, analysis_version)
        return out


def f32_bound(t: float, op: str) -> float:
    """The float32 number b such that, for every float32 x, ``x op b`` equals ``x op t`` in exact
    arithmetic. Why: the summaries compare float32 values with float32 thresholds, and float32(0.7)
    is 0.69999999 < 0.7, so a plain ``x >= float32(0.7)`` would count x = float32(0.7) as outside
    (-0.7, 0.7).
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


# Fig. 3's range shares as the loops count them: |x| < 2 inside, |x| >= 0.7 outside, in float32.
_SHARE_BOUNDS = (np.float32(f32_bound(LSTM_SHARE_BOUND, "<")), np.float32(f32_bound(GRU_SHARE_BOUND, ">=")))


def _as_float32(v) -> np.ndarray:
    """float32 [M, H], C-contiguous, as the compiled loops read it: float32 arrays as they are (no
    copy), float16 / bfloat16 widened (exactly)."""
    if isinstance(v, torch.Tensor):
        v = v.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
    return np.ascontiguousarray(v, dtype=np.float32)


def _as_int64(v) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().numpy()
    return np.ascontiguousarray(v, dtype=np.int64).reshape(-1)


def _merge_state(dst: _QuantityState, src: _QuantityState) -> None:
    """dst += src: counts add, min/max combine, (count, mean, M2) merge by Chan, Golub & LeVeque."""
    if dst.spec != src.spec or dst.hist.shape != src.hist.shape:
        raise ValueError(f"cannot merge histograms of {dst.spec} x {dst.hist.shape[0]} units with "
                         f"{src.spec} x {src.hist.shape[0]} units")
    dst.hist += src.hist
    dst.n_nan += src.n_nan
    _merge_moments(dst.count, dst.mean, dst.m2, src.count, src.mean, src.m2)
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
