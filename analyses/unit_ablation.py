"""Unit ablation: are the units most responsible for a phone needed for it? (Necessity, where
Figs. 4-6 show only correlation.)

Per layer, for each of the ``phones`` most frequent phones of the captured utterances: the
``k`` units (at most a quarter of the layer, so the random control has units to draw from) with the highest responsibility for that phone (``phone_responsibility``, the
capture's irregularity rule, as Figs. 4-6 read it) are ablated, and, as the control, ``k``
units drawn at random (``repeats`` seeded draws, excluding the top units). Ablated means set
inside the recurrence at every frame (``cluster.models.Intervention``) to their mean over the
captured frames (``mode = "mean"``, from ``unit_stats``) or to 0 (``"zero"``). Each ablation
runs the checkpoint on the first ``utterances`` test utterances, and measures frame
cross-entropy and frame accuracy (on the tied-state targets) on the phone's frames and on
all others.

Each ablated model is also decoded as training scores it (the phone loop estimated from the
corpus' training alignments, ``cluster.decode``): its phone error rate on the same utterances.

Table ``unit_ablation``; summary rows per (layer, phone): ``acc_drop_top`` and
``acc_drop_random`` (the phone's frame accuracy without ablation minus with it; random:
the mean over draws), their difference ``acc_drop_excess``, and ``per_rise_top`` /
``per_rise_random`` (PER with the ablation minus without); layer 0: the mean excess drop over
layers and phones (what the claim reads) and the baseline ``per``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from analyses.common import (CHECKPOINT, DEFAULT_CAPTURE_VERSION, Analysis, AnalysisError, FigureSpec, Output, Params,
                             checkpoint_info, corpus_for, figure_path, grid, save, summary_frame)
from analyses.responsibility import choose_rule
from cluster.capture import CaptureConfig, load as load_model, open_corpus
from cluster.decode import estimate_graph, phone_error_rate, reference_phones, viterbi
from cluster.models import Intervention
from cluster.tables import C, Table

NAME = "unit_ablation"
VERSION = 1
FIGURE = FigureSpec("unit_ablation.png", "Ablation", "Unit ablation: a phone's accuracy without its most responsible units")
UNIT_ABLATION = Table("unit_ablation", "frame accuracy and cross-entropy with units ablated inside the recurrence", (
    C("checkpoint_id", "VARCHAR", key=True), C("analysis_version", "INTEGER", key=True),
    C("layer", "INTEGER", "0: no ablation (the baseline)", key=True),
    C("phone_id", "INTEGER", "the phone whose top units were ablated (-1: the baseline)", key=True),
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
    phones: int = 5  # the most frequent phones
    repeats: int = 3  # random draws of the control
    mode: str = "mean"  # mean | zero
    utterances: int = 50
    split: str = "test"
    rule: str | None = None  # default: the paper's rule if captured, else the first captured
    seed: int = 0
    lm_weight: float = 1.0  # the decoder's, as training scores PER
    prior_scale: float = 1.0
    corpus: str | None = None
    capture_version: int = DEFAULT_CAPTURE_VERSION


def load(store, checkpoint_id: str, params: AblationParams) -> dict:
    if params.mode not in ("mean", "zero"):
        raise AnalysisError(f"unit_ablation.mode={params.mode!r}: mean or zero")
    ck = checkpoint_info(store, checkpoint_id)
    rule = choose_rule(store, ck, params.rule, params.capture_version)
    resp = store.query("SELECT layer, unit, phone_id, phone, frames, responsibility FROM phone_responsibility "
                       "WHERE checkpoint_id = ? AND analysis_version = ? AND rule = ? AND quantity = 'c'",
                       [checkpoint_id, params.capture_version, rule])
    means = store.query("SELECT layer, unit, mean FROM unit_stats WHERE checkpoint_id = ? AND analysis_version = ? "
                        "AND quantity = 'c' ORDER BY layer, unit", [checkpoint_id, params.capture_version])
    return {"checkpoint": ck, "corpus": corpus_for(store, checkpoint_id, params.corpus), "responsibility": resp,
            "means": means, "rule": rule}


def per_phone(logits: torch.Tensor, targets: np.ndarray, phones: np.ndarray) -> dict[int, tuple[int, int, float]]:
    """{phone_id: (frames, correct, summed cross-entropy)} over one utterance's frames."""
    t = torch.as_tensor(targets, dtype=torch.long)
    ce = F.cross_entropy(logits.float(), t, reduction="none").numpy()
    correct = (logits.argmax(-1) == t).numpy()
    out = {}
    for p in np.unique(phones):
        sel = phones == p
        out[int(p)] = (int(sel.sum()), int(correct[sel].sum()), float(ce[sel].sum()))
    return out


def run(inputs: dict, params: AblationParams, fig_dir) -> Output:
    ck = inputs["checkpoint"]
    cid = ck["checkpoint_id"]
    torch.set_num_threads(1)
    model, meta = load_model(ck["path"])
    corpus = open_corpus(CaptureConfig(checkpoint=ck["path"], corpus=inputs["corpus"]), meta)
    split = corpus.split(params.split)
    utts = [split.load(u) for u in split.utt_ids[:params.utterances]]
    if not utts:
        raise AnalysisError(f"{corpus.manifest_path}: split {params.split} has no utterances")
    H, L = model.config.hidden, model.config.layers
    if params.k < 1:
        raise AnalysisError(f"unit_ablation.k={params.k}: at least 1")
    k = min(params.k, max(1, H // 4))
    phones_all = np.concatenate([u.phones for u in utts])
    ids, counts = np.unique(phones_all, return_counts=True)
    chosen = [int(p) for p in ids[np.argsort(-counts, kind="stable")][:params.phones]]
    resp, means = inputs["responsibility"], inputs["means"]
    try:
        graph = estimate_graph(corpus.split("train").alignments.values(), corpus.num_targets,
                               phone_symbols=corpus.phones)
    except (KeyError, ValueError) as e:
        raise AnalysisError(f"{corpus.manifest_path}: no training alignments to build the decoder from ({e})") from None
    refs = [reference_phones(u.phones, u.targets, graph) for u in utts]

    def measure(interventions) -> tuple[dict[int, tuple[int, int, float]], float]:
        total: dict[int, list] = {}
        hyps = []
        with torch.inference_mode():
            for u in utts:
                logits = model(torch.from_numpy(u.feats), interventions=interventions)
                for p, (n, ok, ce) in per_phone(logits, u.targets, u.phones).items():
                    acc = total.setdefault(p, [0, 0, 0.0])
                    acc[0], acc[1], acc[2] = acc[0] + n, acc[1] + ok, acc[2] + ce
                hyps.append(viterbi(torch.log_softmax(logits.float(), -1).numpy(), graph, lm_weight=params.lm_weight,
                                    prior_scale=params.prior_scale))
        per = phone_error_rate(refs, hyps, ignore=graph.silence)["per"]
        return {p: tuple(v) for p, v in total.items()}, float(per)

    def rows_of(layer, phone, ablated, draw, units, measured) -> list[dict]:
        res, per = measured
        return [{"layer": layer, "phone_id": phone, "ablated": ablated, "draw": draw, "phone": _sym(corpus, phone),
                 "units": [int(u) for u in units], "mode": params.mode, "target_phone_id": q, "frames": n,
                 "frame_acc": ok / n, "frame_ce": ce / n, "per": per}
                for q, (n, ok, ce) in sorted(res.items()) if q in chosen]

    measured_base = measure(None)
    base, base_per = measured_base
    table = rows_of(0, -1, "none", 0, [], measured_base)
    rng = np.random.default_rng(params.seed)
    summary, excess = [], {}
    for layer in range(1, L + 1):
        mean_c = means.filter(pl.col("layer") == layer).sort("unit")["mean"].to_numpy()
        if params.mode == "mean" and mean_c.size != H:
            raise AnalysisError(f"checkpoint {cid} layer {layer}: {mean_c.size} unit means stored, {H} units")
        r_layer = resp.filter(pl.col("layer") == layer)
        for phone in chosen:
            ranked = r_layer.filter(pl.col("phone_id") == phone).sort(["responsibility", "unit"], descending=[True, False])
            top = ranked["unit"].to_list()[:k]
            if len(top) < k:
                raise AnalysisError(f"checkpoint {cid} layer {layer}: responsibility for phone {phone} of "
                                    f"{len(top)} units, {k} needed")

            def iv(units):
                to = mean_c[units] if params.mode == "mean" else 0.0
                return {layer: Intervention("c", units, to)}

            m_top = measure(iv(top))
            res_top, per_top = m_top
            table += rows_of(layer, phone, "top", 0, top, m_top)
            others = np.setdiff1d(np.arange(H), top)
            drops, rises = [], []
            for draw in range(params.repeats):
                units = sorted(rng.choice(others, k, replace=False).tolist())
                m = measure(iv(units))
                res, per = m
                table += rows_of(layer, phone, "random", draw, units, m)
                drops.append(base[phone][1] / base[phone][0] - res[phone][1] / res[phone][0])
                rises.append(per - base_per)
            d_top = base[phone][1] / base[phone][0] - res_top[phone][1] / res_top[phone][0]
            d_rand = float(np.mean(drops))
            excess[(layer, phone)] = d_top - d_rand
            summary += [{"layer": layer, "phone_id": phone, "label": _sym(corpus, phone), "metric": m, "value": v}
                        for m, v in (("acc_drop_top", d_top), ("acc_drop_random", d_rand),
                                     ("acc_drop_excess", d_top - d_rand), ("per_rise_top", per_top - base_per),
                                     ("per_rise_random", float(np.mean(rises))))]
    summary += [{"metric": "acc_drop_excess", "value": float(np.mean(list(excess.values())))},
                {"metric": "per", "value": base_per}]
    frame = pl.DataFrame(table, schema={c: t for c, t in UNIT_ABLATION.schema.items()
                                        if c not in ("checkpoint_id", "analysis_version")})
    frame = frame.select(pl.lit(cid).alias("checkpoint_id"), pl.lit(VERSION, dtype=pl.Int32).alias("analysis_version"),
                         pl.all())
    figure = _draw(frame, chosen, corpus, cid, params, k, fig_dir)
    return Output(NAME, VERSION, cid, summary_frame(summary, cid, NAME, VERSION), [figure],
                  params.to_dict() | {"rule": inputs["rule"], "phones_measured": chosen, "k_used": k}, tables={UNIT_ABLATION.name: frame})


def _sym(corpus, phone: int) -> str:
    return corpus.phones[phone] if 0 <= phone < len(corpus.phones) else str(phone)


def _draw(frame: pl.DataFrame, chosen: list[int], corpus, cid: str, params: AblationParams, k: int, fig_dir):
    layers = sorted(set(frame.filter(pl.col("layer") > 0)["layer"].to_list()))
    fig, axes = grid(len(layers), cols=2, size=(5.2, 3.4))
    base = frame.filter(pl.col("ablated") == "none")
    for ax, layer in zip(axes, layers):
        sub = frame.filter((pl.col("layer") == layer) & (pl.col("target_phone_id") == pl.col("phone_id")))
        x = np.arange(len(chosen))
        b = [base.filter(pl.col("target_phone_id") == p)["frame_acc"][0] for p in chosen]
        top = [sub.filter((pl.col("phone_id") == p) & (pl.col("ablated") == "top"))["frame_acc"][0] for p in chosen]
        rnd = [sub.filter((pl.col("phone_id") == p) & (pl.col("ablated") == "random"))["frame_acc"].mean() for p in chosen]
        ax.bar(x - 0.27, b, 0.27, label="no ablation")
        ax.bar(x, rnd, 0.27, label=f"{k} random units")
        ax.bar(x + 0.27, top, 0.27, label=f"its top {k} units")
        ax.set_xticks(x, [_sym(corpus, p) for p in chosen], fontsize=8)
        ax.set_ylabel("frame accuracy on the phone")
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"{FIGURE.paper}: {cid}, units set to their {params.mode} inside the recurrence", fontsize=9)
    fig.tight_layout()
    return save(fig, figure_path(fig_dir, cid, FIGURE.file), FIGURE.paper)


ANALYSIS = Analysis(NAME, VERSION, CHECKPOINT, order=35, params=AblationParams, load=load, run=run, figures=(FIGURE,),
                    tables=(UNIT_ABLATION,))
