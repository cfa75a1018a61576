"""The phone-loop decoder and the phone error rate (cluster/decode.py).

Hand-built graphs with hand-worked best paths, a brute-force check of the dynamic programme,
round trips through plain dicts / JSON, and estimation from a real embedded corpus (Ray).
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster import decode as D
from cluster.data.kaldi import read_corpus

A, B, C = 1, 2, 3


def _posteriors(rows: list[dict[int, float]], num_states: int) -> np.ndarray:
    """Log posteriors: listed states get their probability, the rest share what is left."""
    out = np.zeros((len(rows), num_states))
    for t, row in enumerate(rows):
        rest = (1.0 - sum(row.values())) / (num_states - len(row))
        out[t] = rest
        for s, p in row.items():
            out[t, s] = p
    return np.log(out)


def _state(phone: int, pos: int) -> int:
    return (phone - 1) * 3 + pos


def _assert_normalised(g: D.PhoneLoopGraph) -> None:
    """Probabilities that must sum to one do: out of each state, entries of each phone, bigram rows, priors."""
    loop = g.state_phone > 0
    assert np.allclose(g.out_probability()[loop], 1.0)
    entry = np.zeros(int(g.phones.max()) + 1)
    np.add.at(entry, g.state_phone[g.entry_state], np.exp(g.entry_logp))
    assert np.allclose(entry[g.phones], 1.0)
    assert np.allclose(g.bigram.sum(axis=1), 1.0)
    assert np.isclose(np.exp(g.log_prior).sum(), 1.0)


# ----------------------------------------------------------------------- hand-worked best paths

def test_viterbi_keeps_the_minimum_duration_where_greedy_argmax_flips():
    g = D.three_state_graph(2, self_loop=0.5)
    # frame-wise winners: A0 A1 A1 B1 A1 A2 A2 -> greedy reads A B A; a 3-state phone B cannot
    # last one frame, so the best path stays in A (B1 costs 0.08 vs 0.6 on one frame only)
    rows = [{_state(A, 0): .6}, {_state(A, 1): .6}, {_state(A, 1): .6}, {_state(B, 1): .6},
            {_state(A, 1): .6}, {_state(A, 2): .6}, {_state(A, 2): .6}]
    lp = _posteriors(rows, g.num_states)
    assert D.frame_argmax_phones(lp, g) == [A, B, A]
    assert D.viterbi(lp, g) == [A]
    path = D.best_path(lp, g)
    assert path.states.tolist() == [_state(A, 0)] + [_state(A, 1)] * 4 + [_state(A, 2)] * 2
    assert path.phone_starts.tolist() == [True] + [False] * 6


def test_lm_weight_overrules_weak_acoustic_evidence():
    # bigram rows: A, B, C, <s>; columns: A, B, C, </s>
    bigram = np.array([[.05, .80, .05, .10],
                       [.15, .15, .15, .55],
                       [.15, .15, .15, .55],
                       [.90, .05, .05, .00]])
    bigram[3, 3] = 1 - bigram[3, :3].sum()
    g = D.three_state_graph(3, self_loop=0.5, bigram=bigram)
    rows = [{_state(A, k): .9} for k in range(3)] + [{_state(B, k): .4, _state(C, k): .5} for k in range(3)]
    lp = _posteriors(rows, g.num_states)
    # acoustics favour C by 3 * log(.5/.4) = 0.67 nats; the bigram favours B by log(.8/.05) = 2.77
    assert D.frame_argmax_phones(lp, g) == [A, C]
    assert D.viterbi(lp, g, lm_weight=0.0) == [A, C]
    assert D.viterbi(lp, g, lm_weight=0.1) == [A, C]  # 0.28 < 0.67
    assert D.viterbi(lp, g, lm_weight=1.0) == [A, B]  # 2.77 > 0.67
    # the prior divides the posterior: a prior 4x higher on C's states than B's costs C log 4 per frame
    priors = np.ones(9)
    priors[[_state(C, k) for k in range(3)]] = 4.0
    g2 = D.three_state_graph(3, self_loop=0.5, bigram=bigram, priors=priors / priors.sum())
    assert D.viterbi(lp, g2, lm_weight=0.0) == [A, B]
    assert D.viterbi(lp, g2, lm_weight=0.0, prior_scale=0.0) == [A, C]


def test_the_loop_reenters_the_same_phone():
    g = D.three_state_graph(2, self_loop=0.5)
    rows = [{_state(A, k): .9} for k in (0, 1, 2, 0, 1, 2)]
    lp = _posteriors(rows, g.num_states)
    assert D.viterbi(lp, g) == [A, A]
    assert D.frame_argmax_phones(lp, g) == [A]


def test_insertion_penalty_and_short_utterances():
    g = D.three_state_graph(2, self_loop=0.5)
    rows = [{_state(A, k): .5} for k in (0, 1, 2)] + [{_state(B, k): .5} for k in (0, 1, 2)]
    lp = _posteriors(rows, g.num_states)
    assert D.viterbi(lp, g) == [A, B]
    assert D.viterbi(lp, g, insertion_penalty=50.0) == [A]
    # two frames cannot reach a strict 3-state phone's exit: the best partial path is returned
    assert D.viterbi(lp[:2], g) == [A]
    assert D.viterbi(lp[:0], g) == []


def test_log_likelihoods_divide_by_the_prior():
    g = D.three_state_graph(2, priors=np.arange(1, 7) / 21.0)
    lp = np.log(np.full((4, 6), 1 / 6))
    ll = D.log_likelihoods(lp, g, prior_scale=0.5)
    assert np.allclose(ll, lp - 0.5 * np.log(np.arange(1, 7) / 21.0))
    with pytest.raises(ValueError, match=r"\[frames, 6\]"):
        D.log_likelihoods(lp[:, :5], g)
    with pytest.raises(ValueError, match="NaN"):
        D.log_likelihoods(np.full((2, 6), np.nan), g)


# ----------------------------------------------------------------------- brute force

def _brute_force(lp: np.ndarray, g: D.PhoneLoopGraph, lm_weight: float, prior_scale: float,
                 penalty: float) -> tuple[float, list[int]]:
    """Every state sequence scored from the graph's public arrays; at each step the better of a
    within-phone arc and exit + bigram + entry (the latter starts a phone)."""
    s, p = g.num_states, g.num_phones
    t_len = lp.shape[0]
    ll = lp - prior_scale * g.log_prior
    arc = np.full((s, s), -np.inf)
    arc[g.arc_src, g.arc_dst] = g.arc_logp
    ex = np.full(s, -np.inf)
    ex[g.exit_state] = g.exit_logp
    en = np.full(s, -np.inf)
    en[g.entry_state] = g.entry_logp
    pos = {int(ph): i for i, ph in enumerate(g.phones)}
    pi = np.array([pos.get(int(ph), -1) for ph in g.state_phone])
    lm = lm_weight * g.log_bigram
    big = np.where((pi[:, None] >= 0) & (pi[None, :] >= 0), lm[pi][:, pi], -np.inf)
    cross = ex[:, None] + big + en[None, :] - penalty
    start = np.where(pi >= 0, lm[p, pi], -np.inf) + en - penalty
    end = ex + np.where(pi >= 0, lm[pi, p], -np.inf)
    paths = np.array(list(itertools.product(range(s), repeat=t_len)))
    partial = start[paths[:, 0]] + ll[np.arange(t_len), paths].sum(axis=1)
    for t in range(1, t_len):
        partial += np.maximum(arc[paths[:, t - 1], paths[:, t]], cross[paths[:, t - 1], paths[:, t]])
    score = partial + end[paths[:, -1]]
    if not np.isfinite(score.max()):  # no path ends in an exit: the decoder's partial fallback
        score = partial
    best = int(np.argmax(score))
    path = paths[best]
    phones = [int(g.state_phone[path[0]])]
    for t in range(1, t_len):
        if cross[path[t - 1], path[t]] > arc[path[t - 1], path[t]]:
            phones.append(int(g.state_phone[path[t]]))
    return float(score[best]), phones


def _random_alignments(rng: np.random.Generator, phones: int, utts: int, layout: str):
    """Frame alignments; hmm3 segments of 1-6 frames with thirds labelled as the corpus does."""
    out = []
    for _ in range(utts):
        ph_seq, tg_seq = [], []
        for _ in range(int(rng.integers(1, 5))):
            ph = int(rng.integers(1, phones + 1))
            n = int(rng.integers(1, 7))
            pos = np.minimum((np.arange(n) + 0.5) / n * 3, 2).astype(int)
            ph_seq += [ph] * n
            if layout == "hmm3":
                tg_seq += [(ph - 1) * 3 + int(k) for k in pos]
            else:  # pdfs shared by all phones at one position: majority mapping, pdf topology
                tg_seq += [int(k) * 2 + int(rng.integers(0, 2)) for k in pos]
        out.append((np.array(ph_seq), np.array(tg_seq)))
    return out


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), kind=st.sampled_from(["strict", "skips", "pdf"]))
def test_viterbi_finds_the_brute_force_best_path(seed, kind):
    rng = np.random.default_rng(seed)
    if kind == "strict":
        g = D.three_state_graph(2, self_loop=rng.uniform(0.1, 0.9, 6), bigram=rng.dirichlet(np.ones(3), 3),
                                priors=rng.dirichlet(np.ones(6)))
    elif kind == "skips":
        g = D.estimate_graph(_random_alignments(rng, 2, 6, "hmm3"), 6, smoothing=0.5)
        assert g.topology == "hmm3"
        _assert_normalised(g)
    else:
        g = D.estimate_graph(_random_alignments(rng, 2, 6, "pdf"), 6, smoothing=0.5)
        assert g.topology == "pdf"
        _assert_normalised(g)
    t_len = int(rng.integers(1, 6))
    lp = np.log(rng.dirichlet(np.ones(g.num_states) * 0.5, size=t_len))
    lm_weight, prior_scale, penalty = rng.uniform(0, 3), rng.uniform(0, 1), rng.uniform(-1, 1)
    want_score, want_phones = _brute_force(lp, g, lm_weight, prior_scale, penalty)
    got = D.best_path(lp, g, lm_weight, prior_scale, insertion_penalty=penalty)
    assert math.isclose(got.score, want_score, rel_tol=1e-9, abs_tol=1e-9), (got.score, want_score)
    assert got.phones == want_phones


# ----------------------------------------------------------------------- scoring

def test_phone_error_rate_counts_hand_counted_edits():
    refs = [[1, 5, 6, 7, 1], [8, 9], [2, 3, 4]]
    hyps = [[5, 7, 7, 1], [1, 8, 10, 9, 11], [2, 4]]
    # SIL (1) removed: 5 6 7 / 5 7 7 -> 1 sub; 8 9 / 8 10 9 11 -> 2 ins; 2 3 4 / 2 4 -> 1 del
    r = D.phone_error_rate(refs, hyps)
    assert {k: r[k] for k in ("errors", "ref_len", "ins", "del", "sub")} == \
        {"errors": 4, "ref_len": 8, "ins": 2, "del": 1, "sub": 1}
    assert r["per"] == pytest.approx(0.5)
    # keeping SIL: ref 1 5 6 7 1 / hyp 5 7 7 1 -> del 1 + sub; 8 9 gains an inserted 1
    r = D.phone_error_rate(refs, hyps, ignore=())
    assert (r["errors"], r["ref_len"], r["ins"], r["del"], r["sub"]) == (6, 10, 3, 2, 1)
    assert D.phone_error_rate([[1, 1]], [[1]])["ref_len"] == 0
    assert math.isnan(D.phone_error_rate([[1]], [[2]], ignore=(1, 2))["per"])
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        D.phone_error_rate([[2], [3]], [[2]])


def test_reference_phones_collapse_runs_and_split_backward_states():
    ph = np.array([1, 1, 5, 5, 5, 5, 5, 5, 7, 7])
    tg = np.array([0, 2, 12, 13, 14, 12, 13, 14, 19, 20])
    assert D.collapse_runs(ph) == [1, 5, 7]
    assert D.collapse_runs([]) == []
    g = D.three_state_graph(40)
    assert D.reference_phones(ph, tg, g) == [1, 5, 5, 7]
    assert D.reference_phones(ph) == [1, 5, 7]


def test_silence_phones_from_a_kaldi_table():
    syms = ["<eps>", "SIL", "SIL_B", "SIL_E", "SPN_S", "AA_B", "sil", "S", "S_B", "NSN"]
    assert D.silence_phones(syms) == (1, 2, 3, 4, 6, 9)


# ----------------------------------------------------------------------- estimation + serialisation

def test_graph_round_trips_through_json():
    rng = np.random.default_rng(3)
    for layout in ("hmm3", "pdf"):
        g = D.estimate_graph(_random_alignments(rng, 4, 30, layout), 12)
        d = json.loads(json.dumps(g.to_dict(), allow_nan=False))
        g2 = D.PhoneLoopGraph.from_dict(d)
        assert g2.topology == g.topology == layout
        for name in ("state_phone", "state_position", "log_prior", "arc_src", "arc_dst", "arc_logp",
                     "entry_state", "entry_logp", "exit_state", "exit_logp", "phones", "log_bigram"):
            assert np.array_equal(getattr(g, name), getattr(g2, name)), name
        assert g2.silence == g.silence and g2.meta == g.meta
        lp = np.log(rng.dirichlet(np.ones(12), size=40))
        assert D.best_path(lp, g2).score == D.best_path(lp, g).score
    with pytest.raises(ValueError, match="format"):
        D.PhoneLoopGraph.from_dict({**d, "format": "other"})
    with pytest.raises(ValueError, match="log_bigram"):
        D.PhoneLoopGraph.from_dict({**d, "log_bigram": [[0.0]]})


def test_pdf_fallback_on_kaldi_like_tied_states():
    """Context-dependent pdfs in a shuffled order: 6 phones x 3 positions x 3 variants = 54 pdfs."""
    rng = np.random.default_rng(5)
    perm = rng.permutation(54).reshape(6, 3, 3)  # [phone-1, position, variant] -> pdf
    data = []
    for _ in range(80):
        seq = [int(rng.integers(1, 7))]
        while len(seq) < 8:
            nxt = int(rng.integers(1, 7))
            if nxt != seq[-1]:  # adjacent repeats are invisible in per-frame phones
                seq.append(nxt)
        ph, tg = [], []
        for p in seq:
            n = int(rng.integers(3, 9))
            pos = np.minimum((np.arange(n) * 3) // n, 2)
            var = int(rng.integers(0, 3))
            ph += [p] * n
            tg += [int(perm[p - 1, k, var]) for k in pos]
        data.append((np.array(ph), np.array(tg)))
    g = D.estimate_graph(data, 60, max_in_arcs=8)  # 6 pdfs never occur
    assert g.topology == "pdf" and g.silence == ()
    assert sorted(g.phones.tolist()) == [1, 2, 3, 4, 5, 6]
    assert np.array_equal(g.state_phone[perm], np.broadcast_to(np.arange(1, 7)[:, None, None], perm.shape))
    assert (g.state_phone[54:] == 0).all()
    _assert_normalised(g)
    for ph, tg in data[:20]:
        lp = np.full((len(tg), 60), np.log(1e-6))
        lp[np.arange(len(tg)), tg] = 0.0
        assert D.viterbi(lp, g) == D.collapse_runs(ph)
    # pruning: at most max_in_arcs arcs into a pdf besides its self loop, still normalised
    g1 = D.estimate_graph(data, 60, max_in_arcs=1)
    other = g1.arc_src != g1.arc_dst
    assert np.bincount(g1.arc_dst[other], minlength=60).max() == 1
    _assert_normalised(g1)
    with pytest.raises(ValueError, match="hmm3"):
        D.estimate_graph(data, 60, topology="hmm3")


def test_strict_topology_leaves_out_skips():
    rng = np.random.default_rng(11)
    data = _random_alignments(rng, 3, 40, "hmm3")
    loose, strict = D.estimate_graph(data, 9), D.estimate_graph(data, 9, skips=False)
    _assert_normalised(loose)
    _assert_normalised(strict)
    assert set(strict.entry_state.tolist()) == {0, 3, 6} and set(strict.exit_state.tolist()) == {2, 5, 8}
    assert ((strict.arc_dst - strict.arc_src) <= 1).all() and ((strict.arc_dst - strict.arc_src) >= 0).all()
    assert len(loose.entry_state) > 3 and (loose.arc_dst - loose.arc_src).max() == 2


@pytest.mark.slow
def test_estimated_from_a_real_corpus_and_one_hot_posteriors_decode_back(small_corpus):
    corpus = read_corpus(small_corpus)
    g = D.graph_from_corpus(corpus)
    assert g.topology == "hmm3" and g.num_states == 120 and g.num_phones == 40
    assert g.silence == (1,) and corpus.phones[1] == "SIL"
    assert 0.3 < g.self_loop.mean() < 0.95, g.self_loop.mean()
    assert (g.self_loop > 0).all() and (g.self_loop < 1).all()
    assert np.allclose(g.bigram.sum(axis=1), 1.0)
    assert np.allclose(g.out_probability(), 1.0)
    _assert_normalised(g)
    # the most frequent state transition inside a phone is to stay: priors follow frame counts
    frames = np.zeros(120)
    for ali in corpus.split("train").alignments.values():
        frames += np.bincount(ali.targets, minlength=120)
    assert np.argmax(g.log_prior) == np.argmax(frames)
    # clean one-hot posteriors decode to the alignment's phone sequence (SIL and repeats included)
    hyps, refs, flat = [], [], []
    for name in ("train", "test"):
        for ali in corpus.split(name).alignments.values():
            lp = np.full((len(ali.targets), 120), np.log(1e-6))
            lp[np.arange(len(ali.targets)), ali.targets] = 0.0
            hyps.append(D.viterbi(lp, g))
            refs.append(D.reference_phones(ali.phones, ali.targets, g))
            flat.append(D.collapse_runs(ali.phones))
    assert hyps == refs
    assert D.phone_error_rate(refs, hyps)["errors"] == 0
    assert D.phone_error_rate(refs, hyps)["ref_len"] > 1000
    # collapsing runs merges adjacent repeats: the frame-level reference can only lose phones
    assert all(len(f) <= len(r) for f, r in zip(flat, refs))
