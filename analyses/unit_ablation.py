"""Unit ablation: are the units most responsible for a phone needed for it, and for that phone
rather than any? (Necessity and specificity, where Figs. 4-6 show only correlation.)

No double dipping: the units are ranked on one set of utterances and the ablation is measured on
another. Ranking: ``rank_utterances`` utterances of ``rank_split`` (dev; a seeded draw) are run
once with the cells captured; per layer and phone each unit's responsibility (the share of the
phone's frames on which the unit is irregular, by the capture's rule, Sec. 4.2; a pct rule's
threshold is that layer's percentile of |c| on these frames) and each unit's mean c (what
``mode = "mean"`` sets it to) come from these frames alone. The ``phones`` most frequent phones
of the ranking utterances that occur in the measured ones are studied.

Measuring: ``utterances`` utterances of ``split`` (test; a seeded draw, the same for every
ablation of the checkpoint), batched in groups of similar length (``length_groups``). Per layer and studied phone A: its ``k`` top units (at most a
quarter of the layer, so the random control has units to draw from) are ablated, and, as the
control, ``k`` units drawn at random (``repeats`` seeded draws, excluding the top units). Since
version 3 the control's draws are one set per layer, shared by every studied phone: each draw
excludes the top units of all of them and is measured on every phone's frames (it is a random
k-set for each phone alike), so a layer costs phones + repeats ablations, not phones x (1 +
repeats); where the units outside every phone's top k are fewer than k (tiny layers), each phone
gets its own draws as in version 2. Ablated
means set inside the recurrence at every frame (``cluster.models.Intervention``) to their mean or
to 0. Frame accuracy and cross-entropy are measured on every studied phone's frames (the
``target_phone_id`` rows), so that

- necessity: drop(A on A) with the top units minus the same with random units (``acc_drop_excess``);
- specificity: [drop(A on A) - mean over the other studied phones B of drop(A on B)] with the top
  units, minus the same with random units (``specificity_excess``): the units are needed for A
  more than for the others, beyond what ablating any k units does.

The unablated pass is run once: the input of every layer is kept, and an ablation at layer l runs
layers l..L only (the layers below it are unchanged by it), layer l from its kept input projection
(W_*x x_t + b_*: an ablation changes the recurrence, not the layer's input). The first ``decode_utterances`` of the
measured ones are also decoded as training scores them (the phone loop estimated from the corpus'
training alignments, ``cluster.decode``): the PER rise is a secondary number, and decoding is the
costly part. What the claim reads is frame accuracy on all measured utterances (50 by default,
batched, undecoded): on a phone with n measured frames a frame accuracy has a binomial standard
error of at most 0.5 / sqrt(n), 2 points (the claim's margin) at n = 625, and the claim averages
it over phones and layers before its interval over seeds (``analyses.claims``); the logged
params list the utterances measured and ranked on. Whether the subset is enough is measured, not
assumed: ``specificity_excess_se`` and ``acc_drop_excess_se`` (layer 0) are the bootstrap standard
errors of the checkpoint's two numbers over its measured utterances (``bootstrap_se``; units and
draws held fixed), the share of the between-seed spread the claim's interval sees that comes
from the subset. Raise ``utterances`` where they are not well under the claim's 2-point margin.

Table ``unit_ablation``; summary rows per (layer, phone): ``acc_drop_top``, ``acc_drop_random``
(the mean over draws), ``acc_drop_excess``, ``specificity_top``, ``specificity_random``,
``specificity_excess``, ``per_rise_top`` / ``per_rise_random``; layer 0: the means over layers and
phones of ``acc_drop_excess`` and ``specificity_excess`` (what the claim reads), of
``specificity_excess@k<n>`` for each of ``neighbour_ks`` (the claim's sensitivity to k; measured
on frame accuracy alone, undecoded, with their own seeded draws, shared by the phones alike),
their bootstrap standard errors ``*_se``, and the baseline ``per``. Table rows of a shared random
draw have ``phone_id`` -1.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from analyses.common import (CHECKPOINT, DEFAULT_CAPTURE_VERSION, Analysis, AnalysisError, FigureSpec, Output, Params,
                             checkpoint_info, corpus_for, figure_path, grid, save, summary_frame, task_cpus)
from analyses.responsibility import choose_rule
from cluster.batching import pad_batch
from cluster.capture import CaptureConfig, load as load_model, open_corpus
from cluster.decode import estimate_graph, phone_error_rate, reference_phones, viterbi
from cluster.models import Intervention
from cluster.models.common import GatedLayer
from cluster.models.kernels import project_input
from cluster.summaries import IrregularityRule
from cluster.tables import C, Table

NAME = "unit_ablation"
VERSION = 3  # 2: ranked on dev, measured on test, specificity; 3: one set of random draws per layer for all phones
FIGURE = FigureSpec("unit_ablation.png", "Ablation", "Unit ablation: a phone's accuracy without its most responsible units")
UNIT_ABLATION = Table("unit_ablation", "frame accuracy and cross-entropy with units ablated inside the recurrence", (
    C("checkpoint_id", "VARCHAR", key=True), C("analysis_version", "INTEGER", key=True),
    C("layer", "INTEGER", "0: no ablation (the baseline)", key=True),
    C("phone_id", "INTEGER", "the phone whose top units were ablated (-1: the baseline, or a random draw shared "
                             "by every phone)", key=True),
    C("ablated", "VARCHAR", "none | top | random", key=True), C("draw", "INTEGER", "random draw (0 otherwise)", key=True),
    C("phone", "VARCHAR"), C("units", "BIGINT[]", "the units ablated"),
    C("mode", "VARCHAR", "mean | zero"), C("target_phone_id", "INTEGER", "the phone measured", key=True),
    C("frames", "BIGINT", "frames of the measured phone"), C("frame_acc", "DOUBLE", "on the measured phone's frames"),
    C("frame_ce", "DOUBLE", "mean cross-entropy on the measured phone's frames (nats)"),
    C("per", "DOUBLE", "phone error rate of the (ablated) model on the utterances: one value per ablation")),
    ("checkpoint_id", "analysis_version", "layer", "phone_id", "ablated", "draw", "target_phone_id"))


@dataclass
class AblationParams(Params):
    k: int = 10  # units ablated per phone: at most this, and at most a quarter of the layer (room for the control)
    phones: int = 5  # the most frequent phones of the ranking utterances
    repeats: int = 3  # random draws of the control
    mode: str = "mean"  # mean | zero
    utterances: int = 50  # measured utterances of ``split`` (a seeded draw)
    split: str = "test"
    neighbour_ks: tuple[int, ...] = (5, 20)  # the claim's sensitivity: specificity with k of these (capped alike)
    rank_utterances: int = 50  # utterances of ``rank_split`` the units are ranked on (a seeded draw)
    rank_split: str = "dev"
    decode_utterances: int = 20  # of the measured, decoded for the PER rise
    rule: str | None = None  # default: the paper's rule if captured, else the first captured
    seed: int = 0
    lm_weight: float = 1.0  # the decoder's, as training scores PER
    prior_scale: float = 1.0
    corpus: str | None = None
    capture_version: int = DEFAULT_CAPTURE_VERSION


def load(store, checkpoint_id: str, params: AblationParams) -> dict:
    if params.mode not in ("mean", "zero"):
        raise AnalysisError(f"unit_ablation.mode={params.mode!r}: mean or zero")
    if params.split == params.rank_split:
        raise AnalysisError(f"unit_ablation: split and rank_split are both {params.split!r}: units ranked and measured "
                            f"on the same utterances double-dip")
    ck = checkpoint_info(store, checkpoint_id)
    rule = choose_rule(store, ck, params.rule, params.capture_version)
    return {"checkpoint": ck, "corpus": corpus_for(store, checkpoint_id, params.corpus), "rule": rule}


def per_phone(logits: torch.Tensor, targets: np.ndarray, phones: np.ndarray) -> dict[int, tuple[int, int, float]]:
    """{phone_id: (frames, correct, summed cross-entropy)} over frames (rows of ``logits``)."""
    t = torch.as_tensor(targets, dtype=torch.long)
    ce = F.cross_entropy(logits.float(), t, reduction="none").numpy()
    correct = (logits.argmax(-1) == t).numpy()
    out = {}
    for p in np.unique(phones):
        sel = phones == p
        out[int(p)] = (int(sel.sum()), int(correct[sel].sum()), float(ce[sel].sum()))
    return out


def _draw(split, n: int, seed: int, what: str, manifest) -> list:
    ids = split.utt_ids
    if not ids:
        raise AnalysisError(f"{manifest}: split {split.name} has no utterances ({what})")
    pick = np.random.default_rng(seed).permutation(len(ids))[:max(1, n)]
    return [split.load(ids[i]) for i in sorted(pick)]


# A frame's fixed cost in rows for ``length_groups``, measured by bench/ablation.py --groups (2-core
# Xeon, AVX-512, one thread; one layer's ablated recurrence at 1 and 64 rows fitted to a + b x rows):
# 3.3-3.7 rows at H = 128, 9.7 at H = 512 (a lone row's GEMV reads every weight). The cut's cost is
# flat near its optimum: on the test draw's lengths, one ablation at layer 1 took 0.106-0.115 s at
# 2 x 128 and 3.98-4.24 s at 6 x 512 for 2, 4, 8 or 16 rows (0.184 / 5.83 s as one batch), 8 the least.
OVERHEAD_ROWS = 8.0


def length_groups(lengths: list[int], overhead_rows: float = OVERHEAD_ROWS) -> list[list[int]]:
    """Utterance indices (of ``lengths``) in groups of similar length, each group one padded batch.

    One padded batch of all the measured utterances runs every row for the longest one's frames:
    on the embedded test split's seeded draw of 50 (lengths 163-422 frames from the 10th to the 90th
    percentile, longest 592) that is 2.1x the frames there are. Groups cut it, and each group costs
    its longest length times (``overhead_rows`` + its rows): a frame's fixed cost (kernel calls,
    Python), in rows' worth of work, against each row's GEMM and arithmetic. The cheapest cut of the
    length-sorted utterances into contiguous groups by that cost is found exactly (a dynamic
    program: n^2 steps for n utterances). Hand-written: the cost is this model's, which no library
    states. A row's numbers are those of one batch up to float rounding (a row never sees another)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    sorted_len = [lengths[i] for i in order]
    n = len(order)
    best, cut = [0.0] + [math.inf] * n, [0] * (n + 1)
    for i in range(1, n + 1):  # best[i]: the cheapest cut of the i shortest; a group ends at the i-th
        for j in range(i):
            v = best[j] + sorted_len[i - 1] * (overhead_rows + i - j)
            if v < best[i]:
                best[i], cut[i] = v, j
    groups, i = [], n
    while i > 0:
        groups.append(order[cut[i]:i])
        i = cut[i]
    return groups[::-1]


class _Batch:
    """One padded batch of utterances with its unablated pass kept (see ``_Passes``)."""

    def __init__(self, model, utts, keep_projection: bool):
        self.model, self.lengths = model, torch.tensor([len(u.feats) for u in utts])
        self.keep_projection, self._local = keep_projection, threading.local()  # a projection per thread
        x, _ = pad_batch([u.feats if u.feats.flags.writeable else u.feats.copy() for u in utts])
        self.valid = torch.arange(x.shape[1])[None, :] < self.lengths[:, None]  # [B, T]
        h = model.splice(x, self.lengths)
        self.inputs = []
        for k in range(1, len(model.layers) + 1):
            self.inputs.append(h)
            h, _ = model._layers(h, None, None, first=k, last=k)
        self.base = self._out(h)

    def _projection(self, layer: int):
        module = self.model.layers[layer - 1]
        if not (self.keep_projection and isinstance(module, GatedLayer)):  # nn.LSTM's takes no projection
            return None
        kept = getattr(self._local, "projected", (None, None))
        if kept[0] != layer:  # one layer's at a time: each thread ablates one layer after another
            kept = self._local.projected = (layer, project_input(module, self.inputs[layer - 1]))
        return kept[1]

    def _out(self, h) -> torch.Tensor:
        return self.model._output(h, False).float()[self.valid]  # [frames, K], utterance by utterance

    def ablated(self, layer: int, iv) -> torch.Tensor:
        projected = self._projection(layer)
        h, _ = self.model._layers(self.inputs[layer - 1], None, None, interventions={layer: iv}, first=layer,
                                  extra=lambda k: {"projected": projected} if k == layer and projected is not None
                                  else {})
        return self._out(h)


class _Passes:
    """The model on the measured utterances, its unablated pass kept: each layer's input, so an
    ablation at layer l runs layers l..L only, and the ablated layer's input projection (W_*x x_t
    + b_*, which no ablation at that layer changes; one layer's at a time, as the ablations come
    layer by layer), so layer l's recurrence alone is rerun. The model's own layer loop
    (``AcousticModel._layers``, entered at a layer) and output layer run it, on groups of
    utterances of similar length (``length_groups``), so that padding costs little.
    ``keep_projection=False``: what it was before (bench/ablation.py compares); ``groups``: the
    utterance indices of each batch (default ``length_groups``; ``[range(n)]``: one batch).

    ``base`` and ``ablated(...)`` are the output logits of every valid frame [frames, K], in the
    order of ``utts`` (``frames_of`` one utterance's)."""

    def __init__(self, model, utts, keep_projection: bool = True, groups=None):
        lengths = [len(u.feats) for u in utts]
        if groups is None:
            groups = length_groups(lengths)
        self.groups = [list(g) for g in groups]
        self.batches = [_Batch(model, [utts[i] for i in g], keep_projection) for g in self.groups]
        start = np.concatenate([[0], np.cumsum(lengths)])
        self.offsets = start  # utterance b's frames: rows start[b]:start[b + 1] of base / ablated
        # row r of the groups' concatenation is row order[r] of the utterances' order
        at, order = 0, np.empty(int(start[-1]), dtype=np.int64)
        for g in self.groups:
            for b in g:
                order[start[b]:start[b + 1]] = np.arange(at, at + lengths[b])
                at += lengths[b]
        self._order = torch.from_numpy(order)
        self.base = self._join([b.base for b in self.batches])

    def _join(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(parts).index_select(0, self._order)

    def frames_of(self, logits: torch.Tensor, b: int) -> torch.Tensor:
        return logits[int(self.offsets[b]):int(self.offsets[b + 1])]

    def ablated(self, layer: int, iv) -> torch.Tensor:
        return self._join([b.ablated(layer, iv) for b in self.batches])


def rank_units(model, utts, rule, phones: list[int]) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Per layer: responsibility [H, len(phones)] of every unit for each phone, and each unit's
    mean c, from the cells of ``utts`` (the ranking utterances) alone."""
    x, lengths = pad_batch([u.feats if u.feats.flags.writeable else u.feats.copy() for u in utts])
    cells = model.capture(x, lengths, dtype=torch.float32, values=("c",))
    valid = (torch.arange(x.shape[1])[None, :] < lengths[:, None]).numpy()
    frame_phones = np.concatenate([u.phones[:len(u.feats)] for u in utts])
    onehot = (frame_phones[:, None] == np.asarray(phones)[None, :]).astype(np.float64)  # [N, P]
    counts = onehot.sum(0)
    resp, means = {}, {}
    for k in range(1, len(model.layers) + 1):
        c = np.abs(cells[f"L{k}.c"].numpy()[valid].astype(np.float64))  # [N, H], frames in utterance order
        means[k] = cells[f"L{k}.c"].numpy()[valid].astype(np.float64).mean(0)
        thr = float(np.percentile(c, rule.value)) if rule.is_percentile else rule.value
        irregular = (c > thr) if rule.op == ">" else (c < thr)
        resp[k] = irregular.T.astype(np.float64) @ onehot / np.maximum(counts, 1)[None, :]
    return resp, means


def run(inputs: dict, params: AblationParams, fig_dir) -> Output:
    ck = inputs["checkpoint"]
    cid = ck["checkpoint_id"]
    torch.set_num_threads(1)
    model, meta = load_model(ck["path"])
    corpus = open_corpus(CaptureConfig(checkpoint=ck["path"], corpus=inputs["corpus"]), meta)
    if params.k < 1:
        raise AnalysisError(f"unit_ablation.k={params.k}: at least 1")
    utts = _draw(corpus.split(params.split), params.utterances, params.seed, "measured", corpus.manifest_path)
    ranking = _draw(corpus.split(params.rank_split), params.rank_utterances, params.seed + 1, "ranking",
                    corpus.manifest_path)
    H, L = model.config.hidden, model.config.layers
    k = min(params.k, max(1, H // 4))
    measured_phones = np.concatenate([u.phones[:len(u.feats)] for u in utts])
    rank_phones = np.concatenate([u.phones[:len(u.feats)] for u in ranking])
    ids, counts = np.unique(rank_phones[np.isin(rank_phones, measured_phones)], return_counts=True)
    chosen = [int(p) for p in ids[np.argsort(-counts, kind="stable")][:params.phones]]
    if not chosen:
        raise AnalysisError(f"{corpus.manifest_path}: no phone of the {params.rank_split} utterances occurs in the "
                            f"{params.split} utterances measured")
    try:
        graph = estimate_graph(corpus.split("train").alignments.values(), corpus.num_targets,
                               phone_symbols=corpus.phones)
    except (KeyError, ValueError) as e:
        raise AnalysisError(f"{corpus.manifest_path}: no training alignments to build the decoder from ({e})") from None
    decoded = utts[:params.decode_utterances]
    refs = [reference_phones(u.phones, u.targets, graph) for u in decoded]
    targets = np.concatenate([u.targets[:len(u.feats)] for u in utts])
    rule = IrregularityRule.parse(inputs["rule"])
    # only the studied phones' frames are scored; per utterance too, for the bootstrap over utterances
    studied = np.isin(measured_phones, chosen)
    frame_utt = np.concatenate([np.full(len(u.feats), i) for i, u in enumerate(utts)])[studied]
    frame_col = np.searchsorted(np.asarray(sorted(chosen)), measured_phones[studied])  # column of sorted(chosen)
    frames_up = np.zeros((len(utts), len(chosen)))
    np.add.at(frames_up, (frame_utt, frame_col), 1.0)

    with torch.inference_mode():
        resp, unit_means = rank_units(model, ranking, rule, chosen)
        passes = _Passes(model, utts)

        def measure(logits: torch.Tensor, decode: bool = True):
            """({phone: (frames, correct, ce)}, PER, correct frames [utterances, phones])."""
            scored = logits[torch.from_numpy(studied)]
            res = per_phone(scored, targets[studied], measured_phones[studied])
            ok = np.zeros_like(frames_up)
            np.add.at(ok, (frame_utt, frame_col), (scored.argmax(-1).numpy() == targets[studied]).astype(np.float64))
            if not decode:
                return res, float("nan"), ok
            hyps = [viterbi(torch.log_softmax(passes.frames_of(logits, b), -1).numpy(), graph,
                            lm_weight=params.lm_weight, prior_scale=params.prior_scale) for b, u in enumerate(decoded)]
            return res, float(phone_error_rate(refs, hyps, ignore=graph.silence)["per"]), ok

        def rows_of(layer, phone, ablated, draw, units, measured) -> list[dict]:
            res, per, _ = measured
            return [{"layer": layer, "phone_id": phone, "ablated": ablated, "draw": draw, "phone": _sym(corpus, phone),
                     "units": [int(u) for u in units], "mode": params.mode, "target_phone_id": q, "frames": n,
                     "frame_acc": ok / n, "frame_ce": ce / n, "per": per}
                    for q, (n, ok, ce) in sorted(res.items()) if q in chosen]

        base, base_per, ok_base = measured_base = measure(passes.base)
        acc0 = {p: base[p][1] / base[p][0] for p in chosen}
        table = rows_of(0, -1, "none", 0, [], measured_base)
        neighbours = sorted({min(n, max(1, H // 4)) for n in params.neighbour_ks} - {k})
        spec = lambda d, phone: d[phone] - float(np.mean([d[q] for q in chosen if q != phone]))  # noqa: E731
        ranked_at = {layer: {phone: np.lexsort((np.arange(H), -resp[layer][:, j])) for j, phone in enumerate(chosen)}
                     for layer in range(1, L + 1)}
        # the control's draws of k units come from one seeded stream in layer order; planned here,
        # before the layers run (side by side on the task's cores), so that how many run at once
        # changes no number
        rng = np.random.default_rng(params.seed)
        planned = {layer: _plan_controls(ranked_at[layer], chosen, k, params.repeats, H, rng) for layer in ranked_at}

        def one_layer(layer: int) -> dict:
            """The layer's ablations: table and summary rows, its excesses, its bootstrap entry."""
            ranked, table, summary = ranked_at[layer], [], []
            out = {"table": table, "summary": summary, "excess": [], "specific": [],
                   "specific_at": {n: [] for n in neighbours}}

            def ablate(units, decode=True):
                to = unit_means[layer][units] if params.mode == "mean" else 0.0
                res, per, _ = m = measure(passes.ablated(layer, Intervention("c", units, to)), decode)
                drops = {q: acc0[q] - res[q][1] / res[q][0] for q in chosen}
                return m, drops, per

            def controls(plan, decode: bool, record: bool) -> dict[int, list]:
                """{phone: [(drops, per, correct) of each random draw in ``plan``]}: a shared draw
                (phone -1) counts for every studied phone."""
                got = {p: [] for p in chosen}
                for phone, draw, units in plan:
                    m, d, per = ablate(units, decode)
                    if record:
                        table.extend(rows_of(layer, phone, "random", draw, units, m))
                    for p in (chosen if phone == -1 else [phone]):
                        got[p].append((d, per, m[2]))
                return got

            tops = {}
            for phone in chosen:
                top = sorted(ranked[phone][:k].tolist())
                m_top, d_top, per_top = ablate(top)
                table.extend(rows_of(layer, phone, "top", 0, top, m_top))
                tops[phone] = (d_top, per_top, m_top[2])
            rand = controls(planned[layer], True, True)
            alt = {}
            for n in neighbours:  # the sensitivity to k: frame accuracy only, its own seeded draws
                alt_top = {p: ablate(sorted(ranked[p][:n].tolist()), decode=False)[1] for p in chosen}
                alt_plan = _plan_controls(ranked, chosen, n, params.repeats, H,
                                          np.random.default_rng([params.seed, n, layer]))
                alt[n] = (alt_top, controls(alt_plan, False, False))
            out["boot"] = ({p: tops[p][2] for p in chosen}, {p: [ok for *_, ok in rand[p]] for p in chosen})
            for phone in chosen:
                (d_top, per_top, _), d_rand = tops[phone], [d for d, *_ in rand[phone]]
                multi = len(chosen) > 1
                s_top = spec(d_top, phone) if multi else float("nan")
                s_rand = float(np.mean([spec(d, phone) for d in d_rand])) if multi else float("nan")
                for n, (alt_top, alt_rand) in alt.items():
                    out["specific_at"][n].append(spec(alt_top[phone], phone)
                                                 - float(np.mean([spec(d, phone) for d, *_ in alt_rand[phone]]))
                                                 if multi else float("nan"))
                a_rand = float(np.mean([d[phone] for d in d_rand]))
                out["excess"].append(d_top[phone] - a_rand)
                out["specific"].append(s_top - s_rand)
                summary += [{"layer": layer, "phone_id": phone, "label": _sym(corpus, phone), "metric": m, "value": v}
                            for m, v in (("acc_drop_top", d_top[phone]), ("acc_drop_random", a_rand),
                                         ("acc_drop_excess", out["excess"][-1]), ("specificity_top", s_top),
                                         ("specificity_random", s_rand), ("specificity_excess", out["specific"][-1]),
                                         ("per_rise_top", per_top - base_per),
                                         ("per_rise_random", float(np.mean([per for _, per, _ in rand[phone]]))
                                          - base_per))]
            return out

        workers = max(1, min(task_cpus(), L))
        if workers == 1:
            layers = [one_layer(layer) for layer in range(1, L + 1)]
        else:  # the frame kernels and torch's ops release the GIL: the layers share the task's cores
            def in_thread(layer: int) -> dict:
                with torch.inference_mode():  # a thread-local mode: each worker thread enters its own
                    return one_layer(layer)

            with ThreadPoolExecutor(workers) as pool:
                layers = list(pool.map(in_thread, range(1, L + 1)))
        summary, excess, specific, boot = [], [], [], []
        specific_at: dict[int, list[float]] = {n: [] for n in neighbours}
        for out in layers:  # in layer order, as one thread would have written them
            table += out["table"]
            summary += out["summary"]
            excess += out["excess"]
            specific += out["specific"]
            boot.append(out["boot"])
            for n, v in out["specific_at"].items():
                specific_at[n] += v
    se_spec, se_need = bootstrap_se(frames_up, ok_base, boot, sorted(chosen), params.seed)
    summary += [{"metric": "acc_drop_excess", "value": float(np.mean(excess))},
                {"metric": "specificity_excess", "value": float(np.mean(specific))},
                {"metric": "specificity_excess_se", "value": se_spec},
                {"metric": "acc_drop_excess_se", "value": se_need},
                *({"metric": f"specificity_excess@k{n}", "value": float(np.mean(v))} for n, v in specific_at.items()),
                {"metric": "per", "value": base_per}]
    frame = pl.DataFrame(table, schema={c: t for c, t in UNIT_ABLATION.schema.items()
                                        if c not in ("checkpoint_id", "analysis_version")})
    frame = frame.select(pl.lit(cid).alias("checkpoint_id"), pl.lit(VERSION, dtype=pl.Int32).alias("analysis_version"),
                         pl.all())
    figure = _draw_figure(frame, chosen, corpus, cid, params, k, fig_dir)
    return Output(NAME, VERSION, cid, summary_frame(summary, cid, NAME, VERSION), [figure],
                  params.to_dict() | {"rule": inputs["rule"], "phones_measured": chosen, "k_used": k,
                                      "measured_utterances": [u.utt_id for u in utts],
                                      "ranking_utterances": [u.utt_id for u in ranking]},
                  tables={UNIT_ABLATION.name: frame})


def _plan_controls(ranked: dict, chosen: list[int], n: int, repeats: int, H: int, draw_rng) -> list[tuple]:
    """The control's random draws of n units at one layer: [(phone, draw, units)]. One set of draws
    for all studied phones (phone -1: each measured on every phone's frames) when the units outside
    every studied phone's top n leave room for it; else each phone's own draws outside its top n."""
    pool = np.setdiff1d(np.arange(H), np.concatenate([ranked[p][:n] for p in chosen]))
    if pool.size >= n:
        return [(-1, draw, sorted(draw_rng.choice(pool, n, replace=False).tolist())) for draw in range(repeats)]
    plan = []
    for phone in chosen:
        rest = np.setdiff1d(np.arange(H), ranked[phone][:n])
        plan += [(phone, draw, sorted(draw_rng.choice(rest, n, replace=False).tolist())) for draw in range(repeats)]
    return plan


def bootstrap_se(frames: np.ndarray, ok_base: np.ndarray, layers: list, phones: list[int], seed: int,
                 draws: int = 400) -> tuple[float, float]:
    """Standard errors of the layer-0 specificity and necessity excesses over the measured
    utterances (resampled with replacement, the units and draws held fixed): how much of a
    checkpoint's value is the utterance subset's. ``frames`` / ``ok_base`` [utterances, phones]
    (columns: ``phones``, sorted); ``layers``: per layer ({phone: correct frames with its top
    units}, {phone: [the same for each random draw]})."""
    U = frames.shape[0]
    w = np.random.default_rng([seed, 7]).multinomial(U, np.full(U, 1.0 / U), size=draws).astype(np.float64)
    n = w @ frames
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = lambda ok: (w @ ok) / n  # noqa: E731  [draws, phones]
        a0 = acc(ok_base)
        col = {p: j for j, p in enumerate(phones)}
        spec = lambda d, j: d[:, j] - np.delete(d, j, axis=1).mean(1)  # noqa: E731
        s_all, e_all = [], []
        for tops, rands in layers:
            for p, ok_top in tops.items():
                j = col[p]
                d_top, d_rand = a0 - acc(ok_top), [a0 - acc(ok) for ok in rands[p]]
                e_all.append(d_top[:, j] - np.mean([d[:, j] for d in d_rand], 0))
                if len(phones) > 1:
                    s_all.append(spec(d_top, j) - np.mean([spec(d, j) for d in d_rand], 0))
    se = lambda v: float(np.nanstd(np.mean(v, 0), ddof=1)) if v else float("nan")  # noqa: E731
    return se(s_all), se(e_all)


def _sym(corpus, phone: int) -> str:
    return corpus.phones[phone] if 0 <= phone < len(corpus.phones) else str(phone)


def _draw_figure(frame: pl.DataFrame, chosen: list[int], corpus, cid: str, params: AblationParams, k: int, fig_dir):
    layers = sorted(set(frame.filter(pl.col("layer") > 0)["layer"].to_list()))
    fig, axes = grid(len(layers), cols=2, size=(5.2, 3.4))
    base = frame.filter(pl.col("ablated") == "none")
    for ax, layer in zip(axes, layers):
        sub = frame.filter((pl.col("layer") == layer) & (pl.col("target_phone_id") == pl.col("phone_id")))
        x = np.arange(len(chosen))
        b = [base.filter(pl.col("target_phone_id") == p)["frame_acc"][0] for p in chosen]
        top = [sub.filter((pl.col("phone_id") == p) & (pl.col("ablated") == "top"))["frame_acc"][0] for p in chosen]
        shared = frame.filter((pl.col("layer") == layer) & (pl.col("ablated") == "random") & (pl.col("phone_id") == -1))
        rnd = [pl.concat([sub.filter((pl.col("phone_id") == p) & (pl.col("ablated") == "random")),
                          shared.filter(pl.col("target_phone_id") == p)])["frame_acc"].mean() for p in chosen]
        ax.bar(x - 0.27, b, 0.27, label="no ablation")
        ax.bar(x, rnd, 0.27, label=f"{k} random units")
        ax.bar(x + 0.27, top, 0.27, label=f"its top {k} units")
        ax.set_xticks(x, [_sym(corpus, p) for p in chosen], fontsize=8)
        ax.set_ylabel("frame accuracy on the phone")
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{FIGURE.paper}: {cid}, units set to their {params.mode} inside the recurrence", fontsize=9)
    fig.tight_layout()
    return save(fig, figure_path(fig_dir, cid, FIGURE.file), FIGURE.paper)


def cpus(inputs: dict) -> int:
    """The CPUs the ablation's task claims: its layers run side by side (``task_cpus``) where that
    pays. Measured by bench/service.py on a 2-core Xeon with AVX-512 (a watcher pass over one
    checkpoint): at lstm 6 x 512 two threads took the pass from 230 s to 155 s, the ablation's own
    task from 224 to 148 s after submission; at 2 x 128 the two threads' task took 4.27 s against
    4.10 s in one (the frames' Python holds the GIL there) and waiting for both cores delayed the
    pass from 8.5 to 11.1 s. So two CPUs from 512 units and 2 layers, one below."""
    ck = inputs["checkpoint"]
    return 2 if (ck.get("hidden") or 0) >= 512 and (ck.get("layers") or 0) >= 2 else 1


ANALYSIS = Analysis(NAME, VERSION, CHECKPOINT, order=35, params=AblationParams, load=load, run=run, figures=(FIGURE,),
                    tables=(UNIT_ABLATION,), cpus=cpus)
