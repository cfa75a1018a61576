"""Phone recognition from frame posteriors: a phone-loop Viterbi decoder and the phone error rate.

The acoustic models classify frames into targets (pdfs). To score them the way a recogniser is
scored, this module turns per-frame log posteriors into a phone sequence and compares it with the
reference by edit distance (project issue 4):

* ``estimate_graph`` builds a :class:`PhoneLoopGraph` from training alignments: state priors,
  per-state transition log-probabilities (self-loop, advance within the phone, phone exit/entry),
  a smoothed phone bigram with sentence start/end, and the target -> phone map.
* ``viterbi`` finds the best path through a loop of phone HMMs whose emission scores are scaled
  log-likelihoods ``log p(s|x) - prior_scale * log p(s)`` (:func:`log_likelihoods`), with the
  bigram weighted by ``lm_weight``. The loop may re-enter the phone it leaves (``AH AH``).
* ``phone_error_rate`` counts insertions, deletions and substitutions with ``kaldialign``.

Two layouts of targets are supported (``PhoneLoopGraph.topology``):

``"hmm3"`` — the embedded corpus: target = (phone_id - 1) * 3 + state, state 0/1/2 = first/middle/
    last third of the phone (``cluster.data.phones``). Each phone is a 3-state left-to-right HMM.
    The embedded alignments label frames by thirds of a segment, so a 1- or 2-frame segment skips
    states (about 4 % of segments: patterns 0-2, 0-1, 1-2, 1 alone, ...). With ``skips=True``
    (default) every phone's HMM also has the forward skip arc 0->2, entries at states 1 and 2
    and exits from states 0 and 1, with probabilities estimated from the training alignments;
    the canonical arcs (self loops, 0->1, 1->2, entry at 0, exit from 2) get the pseudo count
    ``smoothing`` and the skip moves ``SKIP_PSEUDO * smoothing``, so an unseen skip stays
    possible but unlikely. ``skips=False`` gives the strict Kaldi-style topology (entry at 0, exit from 2, no
    skips, at least 3 frames per phone); segments that violate it are left out of the transition
    counts (but still count for priors and the bigram).

``"pdf"`` — any other target inventory (real Kaldi pdfs, e.g. 3,377 tied context-dependent
    states, which are neither 3 per phone nor numbered by phone). Fallback: every pdf is mapped
    to the phone it is aligned with most often (its *majority phone*) and is a state of that
    phone's model; the within-phone arcs between pdfs, the entry and exit probabilities of each
    pdf, and its self loop are estimated from the training alignments (a segment boundary is
    wherever the aligned phone or the mapped phone changes). Only the ``max_in_arcs`` most
    frequent incoming arcs of each pdf are kept besides its self loop (then each pdf's outgoing
    probabilities are renormalised), so a frame costs O(S * max_in_arcs + P * P) and 3,377 pdfs
    stay tractable. Limits: pdfs shared between phones always decode as their majority phone;
    pdfs never seen in training are unreachable; context dependence beyond what the pdf-to-pdf
    counts capture is lost; two adjacent segments of the same phone are not separable in the
    training counts (they count as one segment).

Scoring conventions (``phone_error_rate``): silence phones are removed from reference and
hypothesis before alignment, as phone error rates are conventionally reported (the default removes
the embedded corpus' ``SIL``; pass ``graph.silence`` or :func:`silence_phones` for other phone
tables). References come from per-frame phone alignments by :func:`collapse_runs`, which cannot see
a boundary between two adjacent segments of the same phone; :func:`reference_phones` also splits at
a state that goes backwards (2 -> 0) when the targets follow the ``hmm3`` layout, which recovers
most of them (about 2 % of the embedded corpus' segments, mostly SIL SIL and R R).

Phone symbols are not needed here: phones are the integer ids of ``phones.txt`` (0 is ``<eps>``).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import kaldialign
import numpy as np

FORMAT = "gatelens-phone-loop"
FORMAT_VERSION = 1
STATES_PER_PHONE = 3
SIL_ID = 1  # the embedded corpus' SIL (cluster.data.phones.PHONE_ID["SIL"])
SILENCE_SYMBOLS = frozenset({"sil", "sp", "spn", "nsn", "h#", "pau"})
SKIP_PSEUDO = 0.1  # hmm3 with skips: the pseudo count of a skip arc / late entry / early exit, x smoothing
NEG_INF = -np.inf

__all__ = [
    "PhoneLoopGraph", "BestPath", "estimate_graph", "graph_from_corpus", "three_state_graph",
    "log_likelihoods", "best_path", "viterbi", "collapse_runs", "reference_phones",
    "phone_error_rate", "silence_phones", "frame_argmax_phones",
]


# ------------------------------------------------------------------------------------ the model

@dataclass(eq=False)
class PhoneLoopGraph:
    """A loop of phone HMMs over frame targets, estimated from training alignments.

    States are the targets (pdfs) ``0..num_states-1``. Every arc weight is a natural-log
    probability; for each state the self loop, the within-phone arcs out of it and its exit
    probability sum to one. Phones are ids of ``phones.txt``; ``phones`` lists those in the loop,
    and ``log_bigram`` is indexed by their position in it, with one extra row for sentence start
    ``<s>`` and one extra column for sentence end ``</s>``: ``log_bigram[i, j] = log P(phones[j] |
    phones[i])``, ``log_bigram[P, j] = log P(phones[j] | <s>)``, ``log_bigram[i, P] = log P(</s> |
    phones[i])``; every row sums to one.

    Attributes
    ----------
    topology: ``"hmm3"`` or ``"pdf"`` (module docstring).
    state_phone: int [S], the phone of each state (0 for a state that is not in the loop).
    state_position: int [S], the HMM state (0, 1, 2) for ``hmm3``; -1 for ``pdf``.
    log_prior: float [S], log of the smoothed share of training frames per state.
    arc_src, arc_dst, arc_logp: the within-phone arcs, self loops included.
    entry_state, entry_logp: where a phone may be entered, log P(first state | phone).
    exit_state, exit_logp: where a phone may be left, log P(leave the phone | in that state).
    phones: int [P]; log_bigram: float [P+1, P+1].
    silence: phone ids that scoring removes (also excluded from nothing else).
    meta: what was counted and how (frames, utterances, smoothing, ...).
    """

    topology: str
    state_phone: np.ndarray
    state_position: np.ndarray
    log_prior: np.ndarray
    arc_src: np.ndarray
    arc_dst: np.ndarray
    arc_logp: np.ndarray
    entry_state: np.ndarray
    entry_logp: np.ndarray
    exit_state: np.ndarray
    exit_logp: np.ndarray
    phones: np.ndarray
    log_bigram: np.ndarray
    silence: tuple[int, ...] = ()
    meta: dict = field(default_factory=dict)
    _compiled: dict | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.state_phone = np.asarray(self.state_phone, dtype=np.int32)
        self.state_position = np.asarray(self.state_position, dtype=np.int32)
        self.log_prior = np.asarray(self.log_prior, dtype=np.float64)
        for name in ("arc_src", "arc_dst", "entry_state", "exit_state", "phones"):
            setattr(self, name, np.asarray(getattr(self, name), dtype=np.int32).reshape(-1))
        for name in ("arc_logp", "entry_logp", "exit_logp"):
            setattr(self, name, np.asarray(getattr(self, name), dtype=np.float64).reshape(-1))
        self.log_bigram = np.asarray(self.log_bigram, dtype=np.float64)
        self.silence = tuple(int(p) for p in self.silence)
        self._check()

    # -- checks --------------------------------------------------------------------------------
    def _check(self) -> None:
        s, p = self.num_states, len(self.phones)
        if self.topology not in ("hmm3", "pdf"):
            raise ValueError(f"unknown topology {self.topology!r} (expected 'hmm3' or 'pdf')")
        if self.state_position.shape != (s,) or self.log_prior.shape != (s,):
            raise ValueError("state_phone, state_position and log_prior must all have one entry per state")
        for a, b, what in ((self.arc_src, self.arc_logp, "arc"), (self.arc_dst, self.arc_logp, "arc"),
                           (self.entry_state, self.entry_logp, "entry"), (self.exit_state, self.exit_logp, "exit")):
            if a.shape != b.shape:
                raise ValueError(f"{what} states and log-probabilities differ in length")
            if a.size and (a.min() < 0 or a.max() >= s):
                raise ValueError(f"{what} state outside [0, {s})")
        if len(np.unique(self.phones)) != p or p == 0 or self.phones.min() < 1:
            raise ValueError("phones must be distinct positive phone ids, at least one")
        if self.log_bigram.shape != (p + 1, p + 1):
            raise ValueError(f"log_bigram must be [{p + 1}, {p + 1}] for {p} phones, got {self.log_bigram.shape}")
        in_loop = self.state_phone != 0
        if not np.isin(self.state_phone[in_loop], self.phones).all():
            raise ValueError("a state maps to a phone that is not in the loop")
        for st, what in ((self.arc_src, "arc"), (self.entry_state, "entry"), (self.exit_state, "exit")):
            if not in_loop[st].all():
                raise ValueError(f"an {what} touches a state that is not in the loop")
        if (self.state_phone[self.arc_src] != self.state_phone[self.arc_dst]).any():
            raise ValueError("a within-phone arc joins states of two different phones")

    # -- derived views -------------------------------------------------------------------------
    @property
    def num_states(self) -> int:
        return len(self.state_phone)

    @property
    def num_phones(self) -> int:
        return len(self.phones)

    @property
    def log_self_loop(self) -> np.ndarray:
        """float [S]: log P(stay in the state); -inf for states without a self loop."""
        out = np.full(self.num_states, NEG_INF)
        loops = self.arc_src == self.arc_dst
        out[self.arc_src[loops]] = self.arc_logp[loops]
        return out

    @property
    def log_advance(self) -> np.ndarray:
        """float [S]: log P(leave the state), to the next state of the phone or out of the phone."""
        with np.errstate(divide="ignore"):
            return np.log1p(-np.exp(np.minimum(self.log_self_loop, 0.0)))

    @property
    def self_loop(self) -> np.ndarray:
        """float [S]: P(stay in the state)."""
        return np.exp(self.log_self_loop)

    @property
    def bigram(self) -> np.ndarray:
        """float [P+1, P+1]: the bigram as probabilities (rows: previous phone, then <s>)."""
        return np.exp(self.log_bigram)

    def out_probability(self) -> np.ndarray:
        """float [S]: the summed probability of everything that leaves each state (1 in the loop)."""
        tot = np.zeros(self.num_states)
        np.add.at(tot, self.arc_src, np.exp(self.arc_logp))
        np.add.at(tot, self.exit_state, np.exp(self.exit_logp))
        return tot

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (ints, finite floats, lists): ``json.dumps(..., allow_nan=False)`` works."""
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "topology": self.topology,
            "state_phone": self.state_phone.tolist(), "state_position": self.state_position.tolist(),
            "log_prior": self.log_prior.tolist(),
            "arcs": {"src": self.arc_src.tolist(), "dst": self.arc_dst.tolist(), "logp": self.arc_logp.tolist()},
            "entries": {"state": self.entry_state.tolist(), "logp": self.entry_logp.tolist()},
            "exits": {"state": self.exit_state.tolist(), "logp": self.exit_logp.tolist()},
            "phones": self.phones.tolist(), "log_bigram": self.log_bigram.tolist(),
            "silence": list(self.silence), "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PhoneLoopGraph":
        if d.get("format") != FORMAT:
            raise ValueError(f"not a phone-loop graph (format {d.get('format')!r}, expected {FORMAT!r})")
        if d.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"phone-loop graph format_version {d.get('format_version')!r} is not {FORMAT_VERSION}")
        return cls(
            topology=d["topology"], state_phone=d["state_phone"], state_position=d["state_position"],
            log_prior=d["log_prior"], arc_src=d["arcs"]["src"], arc_dst=d["arcs"]["dst"],
            arc_logp=d["arcs"]["logp"], entry_state=d["entries"]["state"], entry_logp=d["entries"]["logp"],
            exit_state=d["exits"]["state"], exit_logp=d["exits"]["logp"], phones=d["phones"],
            log_bigram=d["log_bigram"], silence=tuple(d.get("silence", ())), meta=dict(d.get("meta", {})),
        )

    # -- the decoder's padded form -------------------------------------------------------------
    def compiled(self) -> dict:
        """Padded index arrays for the vectorised Viterbi (built once and cached: build a new graph
        rather than editing the arrays of one that has decoded).

        The decoder keeps one score vector ``ext`` of length S + P + 1: the S state scores, then
        one "entry" score per loop phone (best predecessor phone exit + bigram), then -inf. Every
        state reads its K best-scoring predecessors through ``in_src [S, K]`` / ``in_logp``; a
        phone exit is the best of ``exit_src [P, M]`` / ``exit_logp``.
        """
        if self._compiled is not None:
            return self._compiled
        s, p = self.num_states, self.num_phones
        pidx = np.full(self.num_states, -1, dtype=np.int64)
        phone_index = {int(ph): i for i, ph in enumerate(self.phones)}
        in_loop = self.state_phone != 0
        pidx[in_loop] = [phone_index[int(ph)] for ph in self.state_phone[in_loop]]
        sentinel = s + p
        ins: list[list[tuple[int, float]]] = [[] for _ in range(s)]
        for a, b, lp in zip(self.arc_src.tolist(), self.arc_dst.tolist(), self.arc_logp.tolist()):
            ins[b].append((a, lp))
        for st, lp in zip(self.entry_state.tolist(), self.entry_logp.tolist()):
            ins[st].append((s + int(pidx[st]), lp))
        k = max(1, max(len(x) for x in ins))
        in_src = np.full((s, k), sentinel, dtype=np.int64)
        in_logp = np.full((s, k), NEG_INF)
        for st, lst in enumerate(ins):
            for j, (a, lp) in enumerate(lst):
                in_src[st, j], in_logp[st, j] = a, lp
        outs: list[list[tuple[int, float]]] = [[] for _ in range(p)]
        for st, lp in zip(self.exit_state.tolist(), self.exit_logp.tolist()):
            outs[pidx[st]].append((st, lp))
        m = max(1, max(len(x) for x in outs))
        exit_src = np.full((p, m), sentinel, dtype=np.int64)
        exit_lp = np.full((p, m), NEG_INF)
        for q, lst in enumerate(outs):
            for j, (st, lp) in enumerate(lst):
                exit_src[q, j], exit_lp[q, j] = st, lp
        entry_lp = np.full(s, NEG_INF)
        entry_lp[self.entry_state] = self.entry_logp
        self._compiled = {"pidx": pidx, "in_src": in_src, "in_logp": in_logp, "exit_src": exit_src,
                          "exit_logp": exit_lp, "entry_logp": entry_lp, "sentinel": sentinel}
        return self._compiled


# ------------------------------------------------------------------------------------ estimation

def _pairs(alignments: Iterable[Any]) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    for item in alignments:
        if hasattr(item, "phones") and hasattr(item, "targets"):
            ph, tg = item.phones, item.targets
        else:
            ph, tg = item
        ph, tg = np.asarray(ph, dtype=np.int64).reshape(-1), np.asarray(tg, dtype=np.int64).reshape(-1)
        n = min(len(ph), len(tg))  # ali-to-phones and ali-to-pdf of one alignment agree; be lenient
        if n:
            yield ph[:n], tg[:n]


def _log_normalise_rows(counts: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(counts) - np.log(counts.sum(axis=1, keepdims=True))


def silence_phones(symbols: Sequence[str]) -> tuple[int, ...]:
    """Ids of silence-like phones in a symbol list indexed by id (``corpus.phones``).

    A phone counts as silence when its name, with a Kaldi word-position suffix (``_B _E _I _S``)
    removed and lower-cased, is one of ``sil sp spn nsn h# pau`` (silence, short pause, spoken and
    non-spoken noise, TIMIT's pauses).
    """
    out = []
    for i, sym in enumerate(symbols):
        base = sym.rsplit("_", 1)[0] if sym[-2:] in ("_B", "_E", "_I", "_S") else sym
        if i > 0 and base.lower() in SILENCE_SYMBOLS:
            out.append(i)
    return tuple(out)


def estimate_graph(alignments: Iterable[Any], num_targets: int, *, topology: str = "auto",
                   silence: Iterable[int] | None = None, phone_symbols: Sequence[str] | None = None,
                   smoothing: float = 1.0, skips: bool = True, max_in_arcs: int = 8) -> PhoneLoopGraph:
    """A phone-loop graph from training alignments.

    ``alignments``: iterable of ``(phones [T], targets [T])`` integer arrays (per-frame phone ids
    and targets), or of objects with ``.phones`` and ``.targets`` (``Alignment``, ``Utterance``).
    ``topology``: ``"hmm3"``, ``"pdf"`` or ``"auto"`` (``hmm3`` when ``num_targets`` is a multiple
    of 3 and every training frame has target // 3 == phone - 1, else ``pdf``).
    ``silence``: phone ids removed when scoring; default: :func:`silence_phones` of
    ``phone_symbols`` if given, else ``(1,)`` for ``hmm3`` (the embedded SIL) and ``()`` for ``pdf``.
    ``smoothing``: an additive count for priors (every target), the bigram (every cell) and the
    canonical moves of ``hmm3`` (skip moves: ``SKIP_PSEUDO`` x that), or, for ``pdf``, the self
    loop of every seen pdf and every observed arc, entry and exit.
    ``skips``: ``hmm3`` only (module docstring). ``max_in_arcs``: ``pdf`` only.
    """
    if num_targets <= 0:
        raise ValueError("num_targets must be positive")
    if smoothing <= 0:
        raise ValueError("smoothing must be positive (unsmoothed estimates give -inf transitions)")
    data = list(_pairs(alignments))
    if not data:
        raise ValueError("no alignments to estimate the decoding graph from")
    for ph, tg in data:
        if tg.min() < 0 or tg.max() >= num_targets:
            raise ValueError(f"target id outside [0, {num_targets})")
        if ph.min() < 1:
            raise ValueError("phone ids must be >= 1 (0 is <eps>)")
    if topology == "auto":
        fits = num_targets % STATES_PER_PHONE == 0 and all(
            np.array_equal(tg // STATES_PER_PHONE, ph - 1) for ph, tg in data)
        topology = "hmm3" if fits else "pdf"
    if topology == "hmm3":
        bad = next((i for i, (ph, tg) in enumerate(data) if not np.array_equal(tg // STATES_PER_PHONE, ph - 1)), None)
        if num_targets % STATES_PER_PHONE or bad is not None:
            raise ValueError("topology 'hmm3' needs targets (phone-1)*3 + state; "
                             + (f"alignment {bad} does not follow it" if bad is not None
                                else f"num_targets {num_targets} is not a multiple of 3") + " (use 'pdf')")
    elif topology != "pdf":
        raise ValueError(f"unknown topology {topology!r}")

    s = num_targets
    frames = np.zeros(s)
    for _, tg in data:
        frames += np.bincount(tg, minlength=s)
    log_prior = np.log(frames + smoothing) - np.log(frames.sum() + smoothing * s)

    if topology == "hmm3":
        state_phone = np.arange(s) // STATES_PER_PHONE + 1
        position = np.arange(s) % STATES_PER_PHONE
    else:
        nph = max(int(ph.max()) for ph, _ in data) + 1
        votes = np.zeros(s * nph)
        for ph, tg in data:
            votes += np.bincount(tg * nph + ph, minlength=s * nph)
        votes = votes.reshape(s, nph)
        state_phone = np.where(votes.sum(axis=1) > 0, votes.argmax(axis=1), 0)  # ties: lower id
        position = np.full(s, -1)

    # segments: a boundary where the aligned phone changes, where the mapped phone changes, or
    # (hmm3) where the state goes backwards inside one phone (a new segment of the same phone)
    arc_c: Counter = Counter()
    entry_c = np.zeros(s)
    exit_c = np.zeros(s)
    seg_phones: list[list[int]] = []
    for ph, tg in data:
        mp = state_phone[tg]
        cut = (ph[1:] != ph[:-1]) | (mp[1:] != mp[:-1])
        if topology == "hmm3":
            cut |= position[tg[1:]] < position[tg[:-1]]
        starts = np.flatnonzero(np.r_[True, cut])
        ends = np.r_[starts[1:], len(tg)] - 1
        seg_phones.append(mp[starts].tolist())
        entry_c += np.bincount(tg[starts], minlength=s)
        exit_c += np.bincount(tg[ends], minlength=s)
        inside = ~cut
        a, b = tg[:-1][inside], tg[1:][inside]
        keys, cnt = np.unique(a * s + b, return_counts=True)
        for k_, c_ in zip(keys.tolist(), cnt.tolist()):
            arc_c[(k_ // s, k_ % s)] += c_

    if topology == "hmm3":
        arcs, entries, exits = _hmm3_counts(arc_c, entry_c, exit_c, s, smoothing, skips)
    else:
        arcs, entries, exits = _pdf_counts(arc_c, entry_c, exit_c, state_phone, frames, smoothing, max_in_arcs)

    # normalise: per source state, self + arcs + exit = 1; entries per phone = 1
    out_tot = np.zeros(s)
    for (a, _), c in arcs.items():
        out_tot[a] += c
    for st, c in exits.items():
        out_tot[st] += c
    arc_items = sorted(arcs.items())
    arc_src = np.array([a for (a, _), _ in arc_items], dtype=np.int64)
    arc_dst = np.array([b for (_, b), _ in arc_items], dtype=np.int64)
    arc_logp = np.log([c for _, c in arc_items]) - np.log(out_tot[arc_src])
    exit_state = np.array(sorted(exits), dtype=np.int64)
    exit_logp = np.log([exits[x] for x in exit_state.tolist()]) - np.log(out_tot[exit_state])
    entry_state = np.array(sorted(entries), dtype=np.int64)
    ent_tot: Counter = Counter()
    for st, c in entries.items():
        ent_tot[int(state_phone[st])] += c
    entry_logp = np.log([entries[x] for x in entry_state.tolist()]) - np.log(
        [ent_tot[int(state_phone[x])] for x in entry_state.tolist()])

    # states without any way in (a pdf never seen, or seen only after pruned arcs) leave the loop
    reachable = np.zeros(s, dtype=bool)
    reachable[entry_state] = True
    state_phone = np.where(reachable | np.isin(np.arange(s), arc_dst[arc_src != arc_dst]), state_phone, 0)
    loop_phones = np.unique(state_phone[state_phone > 0])
    keep_arc = state_phone[arc_src] > 0
    keep_exit = state_phone[exit_state] > 0
    arc_src, arc_dst, arc_logp = arc_src[keep_arc], arc_dst[keep_arc], arc_logp[keep_arc]
    exit_state, exit_logp = exit_state[keep_exit], exit_logp[keep_exit]

    pos = {int(p): i for i, p in enumerate(loop_phones)}
    npn = len(loop_phones)
    big = np.full((npn + 1, npn + 1), float(smoothing))
    for seq in seg_phones:
        idx = [npn] + [pos[p] for p in seq if p in pos] + [npn]
        np.add.at(big, (idx[:-1], idx[1:]), 1.0)
    log_bigram = _log_normalise_rows(big)

    if silence is None:
        if phone_symbols is not None:
            silence = silence_phones(phone_symbols)
        else:
            silence = (SIL_ID,) if topology == "hmm3" else ()
    meta = {"frames": int(frames.sum()), "utterances": len(data), "smoothing": float(smoothing),
            "segments": int(sum(len(x) for x in seg_phones)), "num_targets": int(num_targets),
            "targets_seen": int((frames > 0).sum())}
    if topology == "hmm3":
        meta["skips"] = bool(skips)
    else:
        meta["max_in_arcs"] = int(max_in_arcs)
    return PhoneLoopGraph(topology, state_phone, position, log_prior, arc_src, arc_dst, arc_logp,
                          entry_state, entry_logp, exit_state, exit_logp, loop_phones, log_bigram,
                          tuple(silence), meta)


def _hmm3_counts(arc_c: Counter, entry_c: np.ndarray, exit_c: np.ndarray, s: int, alpha: float,
                 skips: bool) -> tuple[dict, dict, dict]:
    arcs: dict[tuple[int, int], float] = {}
    entries: dict[int, float] = {}
    exits: dict[int, float] = {}
    for base in range(0, s, STATES_PER_PHONE):
        for i in range(STATES_PER_PHONE):
            arcs[(base + i, base + i)] = alpha
            if i + 1 < STATES_PER_PHONE:
                arcs[(base + i, base + i + 1)] = alpha
        entries[base] = alpha
        exits[base + STATES_PER_PHONE - 1] = alpha
    if skips:  # the same topology for every phone: unseen skips stay possible, just unlikely
        for base in range(0, s, STATES_PER_PHONE):
            for i in range(STATES_PER_PHONE):
                for j in range(i + 2, STATES_PER_PHONE):
                    arcs[(base + i, base + j)] = alpha * SKIP_PSEUDO
                if i > 0:
                    entries[base + i] = alpha * SKIP_PSEUDO
                if i < STATES_PER_PHONE - 1:
                    exits[base + i] = alpha * SKIP_PSEUDO
    for (a, b), c in arc_c.items():
        if (a, b) in arcs:
            arcs[(a, b)] = arcs.get((a, b), 0.0) + c
    for st in np.flatnonzero(entry_c).tolist():
        if st in entries or skips:
            entries[st] = entries.get(st, 0.0) + entry_c[st]
    for st in np.flatnonzero(exit_c).tolist():
        if st in exits or skips:
            exits[st] = exits.get(st, 0.0) + exit_c[st]
    return arcs, entries, exits


def _pdf_counts(arc_c: Counter, entry_c: np.ndarray, exit_c: np.ndarray, state_phone: np.ndarray,
                frames: np.ndarray, alpha: float, max_in_arcs: int) -> tuple[dict, dict, dict]:
    if max_in_arcs < 1:
        raise ValueError("max_in_arcs must be at least 1")
    seen = frames > 0
    arcs: dict[tuple[int, int], float] = {}
    by_dst: dict[int, list[tuple[float, int]]] = {}
    for (a, b), c in arc_c.items():
        if a == b:
            continue
        by_dst.setdefault(b, []).append((c, a))
    for b, lst in by_dst.items():
        for c, a in sorted(lst, key=lambda x: (-x[0], x[1]))[:max_in_arcs]:
            arcs[(a, b)] = c + alpha
    for st in np.flatnonzero(seen).tolist():
        arcs[(st, st)] = arc_c.get((st, st), 0) + alpha
    entries = {st: entry_c[st] + alpha for st in np.flatnonzero(entry_c).tolist()}
    exits = {st: exit_c[st] + alpha for st in np.flatnonzero(exit_c).tolist()}
    return arcs, entries, exits


def three_state_graph(num_phones: int, *, self_loop: float | Sequence[float] = 0.5,
                      bigram: np.ndarray | None = None, priors: np.ndarray | None = None,
                      silence: Iterable[int] = ()) -> PhoneLoopGraph:
    """A hand-made strict ``hmm3`` graph over phones ``1..num_phones`` (for tests and examples).

    ``self_loop``: one probability, or one per state (3 * num_phones). ``bigram``: probabilities
    [P+1, P+1] laid out as ``PhoneLoopGraph.log_bigram`` (default uniform). ``priors``: state
    priors [3P] (default uniform).
    """
    s = STATES_PER_PHONE * num_phones
    loop = np.broadcast_to(np.asarray(self_loop, dtype=np.float64), (s,))
    if ((loop <= 0) | (loop >= 1)).any():
        raise ValueError("self-loop probabilities must lie in (0, 1)")
    big = np.full((num_phones + 1, num_phones + 1), 1.0 / (num_phones + 1)) if bigram is None else np.asarray(bigram, float)
    pri = np.full(s, 1.0 / s) if priors is None else np.asarray(priors, float)
    st = np.arange(s)
    fwd = st[st % STATES_PER_PHONE < STATES_PER_PHONE - 1]
    last = st[st % STATES_PER_PHONE == STATES_PER_PHONE - 1]
    with np.errstate(divide="ignore"):
        return PhoneLoopGraph(
            "hmm3", st // STATES_PER_PHONE + 1, st % STATES_PER_PHONE, np.log(pri),
            np.r_[st, fwd], np.r_[st, fwd + 1], np.log(np.r_[loop, 1 - loop[fwd]]),
            st[st % STATES_PER_PHONE == 0], np.zeros(num_phones), last, np.log(1 - loop[last]),
            np.arange(1, num_phones + 1), np.log(big), tuple(silence), {"hand_made": True})


def graph_from_corpus(corpus: Any, split: str = "train", **kwargs: Any) -> PhoneLoopGraph:
    """:func:`estimate_graph` over a corpus split's alignments (``cluster.data.kaldi.Corpus``).

    Reads only the alignment archives (no features). Silence phones come from the corpus' phone
    table unless ``silence=`` is given.
    """
    alignments = corpus.split(split).alignments.values()
    kwargs.setdefault("phone_symbols", corpus.phones)
    return estimate_graph(alignments, corpus.num_targets, **kwargs)


# ------------------------------------------------------------------------------------ decoding

def log_likelihoods(log_posteriors: np.ndarray, graph: PhoneLoopGraph, prior_scale: float = 1.0) -> np.ndarray:
    """Scaled log-likelihoods [T, S] = log posteriors - prior_scale * log prior (float64).

    The hybrid-model conversion p(x|s) ∝ p(s|x) / p(s)^prior_scale; the same matrix is what a Kaldi
    decoder reads as log-likelihoods (``nnet-forward --class-frame-counts``, ``--prior-scale``).
    """
    lp = np.asarray(log_posteriors, dtype=np.float64)
    if lp.ndim != 2 or lp.shape[1] != graph.num_states:
        raise ValueError(f"log_posteriors must be [frames, {graph.num_states}], got shape {lp.shape}")
    if np.isnan(lp).any():
        raise ValueError("log_posteriors contain NaN")
    return lp - prior_scale * graph.log_prior


def _scaled(logp: np.ndarray, weight: float) -> np.ndarray:
    """``weight * logp`` where an impossible (-inf) transition stays impossible, also at weight 0."""
    if weight == 1.0:
        return logp
    if weight < 0:
        raise ValueError(f"weights must be >= 0, got {weight}")
    return np.where(np.isneginf(logp), NEG_INF, weight * np.where(np.isneginf(logp), 0.0, logp))


@dataclass(frozen=True)
class BestPath:
    """The Viterbi path: a state per frame, which frames start a phone, and its total score."""

    states: np.ndarray  # int [T]
    phone_starts: np.ndarray  # bool [T]; frame 0 is always a start
    score: float
    phones: list[int]  # the phone of each phone-start frame, in order


def best_path(log_posteriors: np.ndarray, graph: PhoneLoopGraph, lm_weight: float = 1.0,
              prior_scale: float = 1.0, *, transition_scale: float = 1.0,
              insertion_penalty: float = 0.0) -> BestPath:
    """The best state path through the phone loop (see :func:`viterbi`)."""
    ll = log_likelihoods(log_posteriors, graph, prior_scale)
    t_len = ll.shape[0]
    if t_len == 0:
        return BestPath(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool), 0.0, [])
    c = graph.compiled()
    s, p = graph.num_states, graph.num_phones
    pidx, in_src, exit_src = c["pidx"], c["in_src"], c["exit_src"]
    in_logp = _scaled(c["in_logp"], transition_scale)
    exit_lp = _scaled(c["exit_logp"], transition_scale)
    lm = _scaled(graph.log_bigram, lm_weight)
    lm_in = np.ascontiguousarray(lm[:p, :p].T)  # [next phone, previous phone]
    lm_end = lm[:p, p]
    m, k = exit_src.shape[1], in_src.shape[1]

    # preallocated buffers: small numpy calls are dominated by allocation and dispatch
    ext = np.full(s + p + 1, NEG_INF)
    delta, cross = ext[:s], ext[s:s + p]
    in_loop = pidx >= 0
    init = np.full(s, NEG_INF)
    init[in_loop] = lm[p, pidx[in_loop]] + _scaled(c["entry_logp"], transition_scale)[in_loop] - insertion_penalty
    np.add(init, ll[0], out=delta)
    xbuf = np.empty((p, m))
    mbuf = np.empty((p, p))
    gbuf = np.empty((s, k))
    bp_arc = np.zeros((t_len, s), dtype=np.intp)
    bp_phone = np.zeros((t_len, p), dtype=np.intp)
    bp_exit = np.zeros((t_len, p), dtype=np.intp)
    off_p, off_s, off_x = np.arange(p) * p, np.arange(s) * k, np.arange(p) * m
    mflat, gflat, xflat = mbuf.reshape(-1), gbuf.reshape(-1), xbuf.reshape(-1)
    for t in range(1, t_len):
        # leave a phone: best exit state of each phone (after its exit probability)
        np.take(ext, exit_src, out=xbuf, mode="wrap")  # indices are valid: 'wrap' skips a copy
        xbuf += exit_lp
        if m > 1:
            xa = xbuf.argmax(axis=1, out=bp_exit[t])
            e = xflat.take(xa + off_x)
        else:
            e = xbuf[:, 0]
        # enter a phone: best previous phone (exit + weighted bigram)
        np.add(lm_in, e[None, :], out=mbuf)
        pb = mbuf.argmax(axis=1, out=bp_phone[t])
        mflat.take(pb + off_p, out=cross, mode="wrap")
        if insertion_penalty:
            cross -= insertion_penalty
        # every state: best of its within-phone predecessors and its phone entry
        np.take(ext, in_src, out=gbuf, mode="wrap")
        gbuf += in_logp
        a = gbuf.argmax(axis=1, out=bp_arc[t])
        np.add(gflat.take(a + off_s), ll[t], out=delta)

    fin = ext[exit_src] + exit_lp + lm_end[:, None]
    flat = int(fin.argmax())
    score = float(fin.flat[flat])
    if score == NEG_INF:  # no path reaches an exit (e.g. fewer frames than the strict topology needs)
        last = int(delta.argmax())
        score = float(delta[last])
        if score == NEG_INF:
            raise ValueError("no path through the phone loop has a finite score (all-(-inf) log posteriors?)")
    else:
        last = int(exit_src.flat[flat])
    states = np.empty(t_len, dtype=np.int64)
    starts = np.zeros(t_len, dtype=bool)
    starts[0] = True
    st = last
    for t in range(t_len - 1, 0, -1):
        states[t] = st
        src = int(in_src[st, bp_arc[t, st]])
        if src < s:
            st = src
        else:
            starts[t] = True
            prev = int(bp_phone[t, src - s])
            st = int(exit_src[prev, bp_exit[t, prev]])
    states[0] = st
    phones = graph.state_phone[states[starts]].tolist()
    return BestPath(states, starts, score, phones)


def viterbi(log_posteriors: np.ndarray, graph: PhoneLoopGraph, lm_weight: float = 1.0,
            prior_scale: float = 1.0, *, transition_scale: float = 1.0,
            insertion_penalty: float = 0.0) -> list[int]:
    """The phone ids of the best path through the phone loop, silence included.

    Score of a path = sum of frame log-likelihoods (:func:`log_likelihoods`) + ``transition_scale``
    x its HMM transition log-probabilities + ``lm_weight`` x its phone bigram log-probabilities
    (sentence start and end included) - ``insertion_penalty`` per phone. Vectorised over states:
    one frame costs a handful of numpy operations on [S, K] and [P, P] arrays. The loop can
    re-enter the phone it leaves, so a phone may repeat. If no path can leave a phone at the last
    frame (an utterance shorter than the topology allows), the best partial path is returned.
    """
    return best_path(log_posteriors, graph, lm_weight, prior_scale, transition_scale=transition_scale,
                     insertion_penalty=insertion_penalty).phones


def frame_argmax_phones(log_posteriors: np.ndarray, graph: PhoneLoopGraph) -> list[int]:
    """The greedy baseline: each frame's most probable target, mapped to its phone, runs collapsed
    (a state outside the loop maps to phone 0)."""
    lp = np.asarray(log_posteriors)
    return collapse_runs(graph.state_phone[lp.argmax(axis=1)])


# ------------------------------------------------------------------------------------ scoring

def collapse_runs(frame_phones: Sequence[int] | np.ndarray) -> list[int]:
    """A phone sequence from per-frame phone ids: runs of one id become one phone.

    Two adjacent segments of the same phone are indistinguishable at the frame level and become
    one phone here (see :func:`reference_phones` for the ``hmm3`` layout, which can split them).
    """
    a = np.asarray(frame_phones).reshape(-1)
    if a.size == 0:
        return []
    return a[np.r_[True, a[1:] != a[:-1]]].tolist()


def reference_phones(frame_phones: Sequence[int] | np.ndarray, frame_targets: Sequence[int] | np.ndarray | None = None,
                     graph: PhoneLoopGraph | None = None) -> list[int]:
    """The reference phone sequence of an alignment.

    Without targets (or with a ``pdf`` graph): :func:`collapse_runs`. With targets and an ``hmm3``
    graph, a new segment also starts where the HMM state goes backwards within one phone (2 -> 0),
    which recovers adjacent repeats of a phone (``R R``) unless the second segment starts in a
    state not lower than where the first ended.
    """
    ph = np.asarray(frame_phones).reshape(-1)
    if frame_targets is None or graph is None or graph.topology != "hmm3" or ph.size == 0:
        return collapse_runs(ph)
    pos = graph.state_position[np.asarray(frame_targets).reshape(-1)[: ph.size]]
    cut = (ph[1:] != ph[:-1]) | (pos[1:] < pos[:-1])
    return ph[np.r_[True, cut]].tolist()


def utterance_errors(refs: Sequence[Sequence[int]], hyps: Sequence[Sequence[int]],
                     ignore: Iterable[int] = (SIL_ID,)) -> list[dict[str, int]]:
    """Per utterance: ``ref_len``, ``sub``, ``ins``, ``del`` of ``kaldialign.edit_distance`` after
    removing the phones in ``ignore`` from both sides (what ``phone_error_rate`` sums)."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    drop = set(int(x) for x in ignore)
    out = []
    for r, h in zip(refs, hyps):
        r = [int(x) for x in r if int(x) not in drop]
        h = [int(x) for x in h if int(x) not in drop]
        d = kaldialign.edit_distance(r, h)
        out.append({"ref_len": int(d["ref_len"]), "sub": int(d["sub"]), "ins": int(d["ins"]), "del": int(d["del"])})
    return out


def phone_error_rate(refs: Sequence[Sequence[int]], hyps: Sequence[Sequence[int]],
                     ignore: Iterable[int] = (SIL_ID,)) -> dict[str, float | int]:
    """Corpus phone error rate with ``kaldialign.edit_distance`` (unit costs, Levenshtein).

    ``refs[i]`` and ``hyps[i]`` are phone-id sequences of utterance i. Phones in ``ignore``
    (default: the embedded corpus' SIL; pass ``graph.silence`` otherwise, or ``()``) are removed
    from both before alignment, as phone error rates are conventionally reported. Returns
    ``errors`` (= ins + del + sub, summed over utterances), ``ref_len``, ``per`` = errors /
    ref_len (``nan`` for an empty reference set, where no rate is defined), ``ins``, ``del``,
    ``sub`` and ``utterances``.
    """
    tot = {"ins": 0, "del": 0, "sub": 0, "ref_len": 0}
    for d in utterance_errors(refs, hyps, ignore):
        for k in tot:
            tot[k] += d[k]
    errors = tot["ins"] + tot["del"] + tot["sub"]
    per = errors / tot["ref_len"] if tot["ref_len"] else math.nan
    return {"errors": errors, "ref_len": tot["ref_len"], "per": per, "ins": tot["ins"], "del": tot["del"],
            "sub": tot["sub"], "utterances": len(refs)}
