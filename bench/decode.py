"""Speed of the phone-loop Viterbi decoder (cluster/decode.py).

For two graphs — the embedded layout (120 states, 3 per phone) and a Kaldi-like tied-state
inventory (3,377 pdfs, the ``pdf`` fallback) — prints frames per second of
(a) the greedy baseline (per-frame argmax, runs collapsed), (b) a textbook Viterbi over a dense
S x S transition matrix built from the same graph (the baseline the decoder must beat; it finds the
same best score, which is checked), and (c) ``cluster.decode.viterbi``, all measured in this run,
and the ratio (c) / (b).

    .venv/bin/python bench/decode.py [--corpus data/corpus] [--utterances 40] [--frames 300]

Without ``--corpus`` the 120-state graph is estimated from synthetic alignments in the embedded
layout (no Ray needed); with it, from the corpus' training alignments.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from cluster import decode as D


def synthetic_alignments(rng, utts, frames, phones=40, perm=None):
    """Phone segments of 2-12 frames; targets in the embedded layout, or the tied pdf
    ``perm[phone - 1, position, variant]`` when ``perm`` is given."""
    variants = None if perm is None else perm.shape[2]
    out = []
    for _ in range(utts):
        ph, tg = [], []
        while len(ph) < frames:
            p = int(rng.integers(1, phones + 1))
            n = int(rng.integers(2, 13))
            pos = np.minimum((np.arange(n) * 3) // n, 2)
            ph += [p] * n
            if perm is None:
                tg += [(p - 1) * 3 + int(k) for k in pos]
            else:
                v = int(rng.integers(0, variants))
                tg += [int(perm[p - 1, k, v]) for k in pos]
        out.append((np.array(ph[:frames]), np.array(tg[:frames])))
    return out


def noisy_posteriors(rng, targets, num_states, sharp=3.0):
    """Log-softmax of a one-hot logit plus Gaussian noise: a plausible, imperfect classifier."""
    logits = rng.standard_normal((len(targets), num_states))
    logits[np.arange(len(targets)), targets] += sharp
    logits -= logits.max(axis=1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


def dense_model(g: D.PhoneLoopGraph, lm_weight: float):
    """The same graph as a dense S x S matrix: W[a, b] = max(within-phone arc, exit + bigram + entry)."""
    s, p = g.num_states, g.num_phones
    pos = {int(ph): i for i, ph in enumerate(g.phones)}
    pi = np.array([pos.get(int(ph), p) for ph in g.state_phone])  # p: not in the loop
    lm = np.full((p + 2, p + 2), -np.inf)
    lm[: p + 1, : p + 1] = lm_weight * g.log_bigram
    ex = np.full(s, -np.inf)
    ex[g.exit_state] = g.exit_logp
    en = np.full(s, -np.inf)
    en[g.entry_state] = g.entry_logp
    loop_pi = np.where(pi < p, pi, p + 1)
    w = ex[:, None] + lm[loop_pi][:, loop_pi] + en[None, :]
    w[g.arc_src, g.arc_dst] = np.maximum(w[g.arc_src, g.arc_dst], g.arc_logp)
    init = lm[p, loop_pi] + en
    final = ex + lm[loop_pi, p]
    return w, init, final


def dense_viterbi(ll, w, init, final):
    t_len, s = ll.shape
    ar = np.arange(s)
    delta = init + ll[0]
    bp = np.zeros((t_len, s), dtype=np.intp)
    for t in range(1, t_len):
        m = delta[:, None] + w
        bp[t] = m.argmax(axis=0)
        delta = m[bp[t], ar] + ll[t]
    fin = delta + final
    st = int(fin.argmax())
    score = float(fin[st])
    states = [st]
    for t in range(t_len - 1, 0, -1):
        st = int(bp[t, st])
        states.append(st)
    return score, states[::-1]


def rate(fn, items, frames, min_s=1.0, min_passes=3):
    """Frames per second of ``fn`` over ``items``: the fastest of several passes (at least
    ``min_passes``, for at least ``min_s`` seconds), since these shared machines are noisy."""
    best, start = float("inf"), time.perf_counter()
    passes = 0
    while passes < min_passes or time.perf_counter() - start < min_s:
        t0 = time.perf_counter()
        for it in items:
            fn(it)
        best = min(best, time.perf_counter() - t0)
        passes += 1
    return frames / best


def bench(name, g, posts, dense_frames, lm_weight=1.0):
    frames = sum(len(x) for x in posts)
    greedy = rate(lambda lp: D.frame_argmax_phones(lp, g), posts, frames)
    ours = rate(lambda lp: D.viterbi(lp, g, lm_weight=lm_weight), posts, frames)
    w, init, final = dense_model(g, lm_weight)
    short = [lp[:dense_frames] for lp in posts[:4]]
    dense = rate(lambda lp: dense_viterbi(D.log_likelihoods(lp, g), w, init, final), short,
                 sum(len(x) for x in short))
    worst = 0.0
    for lp in short:
        ds, _ = dense_viterbi(D.log_likelihoods(lp, g), w, init, final)
        worst = max(worst, abs(ds - D.best_path(lp, g, lm_weight).score) / max(1.0, abs(ds)))
    per_utt_ms = 1000 * len(posts[0]) / ours
    print(f"{name}: S={g.num_states} states, P={g.num_phones} phones, {len(posts)} utts x {len(posts[0])} frames")
    print(f"  greedy argmax        : {greedy:12,.0f} frames/s")
    print(f"  dense S x S Viterbi  : {dense:12,.0f} frames/s  (on {dense_frames}-frame prefixes)")
    print(f"  cluster.decode       : {ours:12,.0f} frames/s  ({per_utt_ms:.2f} ms per {len(posts[0])}-frame utterance)")
    print(f"  ratio decode / dense : {ours / dense:8.1f}x    decode / greedy: {ours / greedy:.3f}x")
    print(f"  best-score agreement with the dense Viterbi: max rel. diff {worst:.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", help="estimate the 120-state graph from this corpus' training alignments")
    ap.add_argument("--utterances", type=int, default=40)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--pdfs-per-position", type=int, default=28, help="40 x 3 x 28 = 3,360 seen pdfs")
    args = ap.parse_args()
    rng = np.random.default_rng(0)

    t0 = time.perf_counter()
    if args.corpus:
        from cluster.data.kaldi import read_corpus
        g = D.graph_from_corpus(read_corpus(args.corpus))
    else:
        g = D.estimate_graph(synthetic_alignments(rng, 300, args.frames), 120)
    est = time.perf_counter() - t0
    test = synthetic_alignments(rng, args.utterances, args.frames)
    posts = [noisy_posteriors(rng, tg, g.num_states) for _, tg in test]
    print(f"[estimated in {est:.2f} s]")
    bench("embedded layout (hmm3)", g, posts, dense_frames=args.frames)

    perm = rng.permutation(3377)[: 40 * 3 * args.pdfs_per_position].reshape(40, 3, -1)
    t0 = time.perf_counter()
    gp = D.estimate_graph(synthetic_alignments(rng, 300, args.frames, perm=perm), 3377)
    est = time.perf_counter() - t0
    test = synthetic_alignments(rng, 10, args.frames, perm=perm)
    posts = [noisy_posteriors(rng, tg, gp.num_states) for _, tg in test[:10]]
    print(f"[estimated in {est:.2f} s]")
    bench("tied pdfs (pdf fallback)", gp, posts, dense_frames=20)


if __name__ == "__main__":
    main()
