"""Figs. 7, 10: the temporal trace of the memory (Sec. 4.3, 5.1-5.2).

The cell vectors c_t of every frame of one utterance, per layer, embedded in 2-D with t-SNE
(scikit-learn, PCA initialisation, seeded) and drawn as a path coloured by phone. Fig. 7 draws
LSTM and GRU; Fig. 10 the lazy-update and residual variants: the same analysis of those
checkpoints.

t-SNE keeps only neighbourhoods, so "smoother" is also measured without it, in the original
space:

    smoothness = mean_t |c_t - c_{t-1}|  /  mean_{s<t} |c_s - c_t|      (L2 norms)

the mean step between consecutive frames over the mean distance between any two frames of
the utterance. Independent points score about 1; a path that moves a little each frame scores
near 0. Lower is smoother. It is computed on ``utterances`` utterances (the drawn one first)
and averaged.

Where the vectors come from: the capture's raw sample (``raw_sample`` view, float16) when it
holds the utterances, else the checkpoint (its path in the store) is run on them. The t-SNE
coordinates and per-frame steps of the drawn utterance go to the store's ``traces`` table.

Summary rows: per (utterance, layer) smoothness, mean_step, mean_distance, frames; per layer
(label '') smoothness averaged over the utterances; layer 0: the average over layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import polars as pl
import torch
from scipy.spatial.distance import pdist
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

from analyses.common import (CHECKPOINT, DEFAULT_CAPTURE_VERSION, Analysis, AnalysisError, FigureSpec, Output, Params,
                             checkpoint_info, corpus_for, figure_path, grid, save, summary_frame)
from cluster.capture import CaptureConfig, load as load_model, open_corpus
from cluster.tables import C, Table

NAME = "temporal_trace"
VERSION = 1
FIGURE = FigureSpec("fig07-10_temporal_trace.png", "Figs. 7, 10",
                    "Temporal traces (t-SNE of the cell vectors of one utterance)")
TRACES = Table("traces", "2-D embedding of the cell vector per frame (Sec. 4.3, Figs. 7, 10)", (
    C("checkpoint_id", "VARCHAR", key=True), C("analysis_version", "INTEGER", key=True),
    C("utt_id", "VARCHAR", key=True), C("layer", "INTEGER", key=True), C("frame", "INTEGER", key=True),
    C("phone_id", "INTEGER"), C("phone", "VARCHAR"),
    C("x", "DOUBLE", "2-D embedding (t-SNE, Fig. 7) of the layer's cell vector"), C("y", "DOUBLE"),
    C("step", "DOUBLE", "|c_t - c_{t-1}| (L2, original space): how far memory moved")),
    ("checkpoint_id", "analysis_version", "utt_id", "layer", "frame"))


@dataclass
class TraceParams(Params):
    utt_id: str | None = None  # the drawn utterance (default: the first of the raw sample / the split)
    utterances: int = 3  # smoothness averaged over this many
    split: str = "test"
    perplexity: float = 30.0
    tsne_iter: int = 1000
    seed: int = 0
    corpus: str | None = None  # default: the corpus the capture used
    capture_version: int = DEFAULT_CAPTURE_VERSION


def smoothness(x: np.ndarray) -> dict:
    """Mean consecutive step over mean pairwise distance of the rows of x [T, H] (see above)."""
    x = np.asarray(x, dtype=np.float64)
    if x.shape[0] < 3:
        raise AnalysisError(f"a trace needs at least 3 frames, got {x.shape[0]}")
    step = float(np.linalg.norm(np.diff(x, axis=0), axis=1).mean())
    dist = float(pdist(x).mean())
    return {"smoothness": step / dist if dist > 0 else float("nan"), "mean_step": step, "mean_distance": dist,
            "frames": x.shape[0]}


def embed(x: np.ndarray, perplexity: float, seed: int, max_iter: int) -> np.ndarray:
    """t-SNE of the rows of x into 2-D (perplexity capped for short utterances).

    On one OpenMP thread wherever it runs: a Ray task of one CPU already has OMP_NUM_THREADS=1
    (Ray sets it), but run in a process of its own (bench/service.py --profile, a notebook, a
    driver) scikit-learn's Barnes-Hut gradient starts a thread per core, and on a busy machine its
    threads wait on each other. Measured on the 2-core EPYC at load average 29 (300 frames x 128
    units, 1000 iterations): 98 s on the default threads, 1.2 s on one; the coordinates are
    identical (tested)."""
    p = float(min(perplexity, max(2.0, (x.shape[0] - 1) / 3)))
    with threadpool_limits(limits=1, user_api="openmp"):
        return TSNE(n_components=2, perplexity=p, init="pca", learning_rate="auto", random_state=seed,
                    max_iter=max_iter).fit_transform(np.asarray(x, dtype=np.float32))


def load(store, checkpoint_id: str, params: TraceParams) -> dict:
    ck = checkpoint_info(store, checkpoint_id)
    sampled = []
    if store.has_relation("raw_sample"):
        sampled = store.query("SELECT DISTINCT utt_id FROM raw_sample WHERE checkpoint_id = ? AND analysis_version = ? "
                              "ORDER BY utt_id", [checkpoint_id, params.capture_version])["utt_id"].to_list()
    wanted = ([params.utt_id] if params.utt_id else []) + [u for u in sampled if u != params.utt_id]
    wanted = wanted[:max(params.utterances, 1)]
    if sampled and set(wanted) <= set(sampled):
        quoted = ", ".join("?" for _ in wanted)
        df = store.query(f"SELECT utt_id, layer, frame, phone_id, phone, c FROM raw_sample WHERE checkpoint_id = ? "
                         f"AND analysis_version = ? AND utt_id IN ({quoted}) ORDER BY utt_id, layer, frame",
                         [checkpoint_id, params.capture_version, *wanted])
        if df["c"].null_count():
            raise AnalysisError(f"{store.path}: the raw sample of {checkpoint_id} holds no cell values c "
                                f"(its cell exposes only m); the trace needs c")
        utts = {}
        for (utt, layer), sub in df.group_by("utt_id", "layer", maintain_order=True):
            layers, phones = utts.setdefault(utt, ({}, (sub["phone_id"].to_numpy(), sub["phone"].to_list())))
            layers[layer] = np.asarray(sub["c"].to_list(), dtype=np.float32)
        return {"checkpoint": ck, "source": "raw_sample", "utterances": {u: utts[u] for u in wanted}}
    return {"checkpoint": ck, "source": "model", "corpus": corpus_for(store, checkpoint_id, params.corpus),
            "wanted": wanted}


def run_model(ck: dict, corpus: str | None, split: str, wanted: list[str], n: int) -> dict:
    """{utt: ({layer: c [T, H]}, (phone ids [T], phone symbols [T]))} by running the checkpoint."""
    torch.set_num_threads(1)
    model, meta = load_model(ck["path"])
    corp = open_corpus(CaptureConfig(checkpoint=ck["path"], corpus=corpus), meta)
    sp = corp.split(split)
    ids = wanted + [u for u in sp.utt_ids if u not in wanted]
    missing = [u for u in wanted if u not in sp.alignments]
    if missing:
        raise AnalysisError(f"{corp.manifest_path}: split {split} has no utterance {missing[0]}")
    out = {}
    for utt_id in ids[:n]:
        u = sp.load(utt_id)
        with torch.inference_mode():
            vals = model.capture(torch.from_numpy(u.feats), dtype=torch.float32, values=("c",))
        layers = {int(k[1:].split(".")[0]): v.numpy() for k, v in vals.items()}
        out[utt_id] = (layers, (u.phones, [corp.phones[p] for p in u.phones]))
    return out


def run(inputs: dict, params: TraceParams, fig_dir) -> Output:
    ck = inputs["checkpoint"]
    cid = ck["checkpoint_id"]
    utts = inputs["utterances"] if inputs["source"] == "raw_sample" else \
        run_model(ck, inputs["corpus"], params.split, inputs["wanted"], max(params.utterances, 1))
    if not utts:
        raise AnalysisError(f"checkpoint {cid}: no utterance to trace")
    drawn = next(iter(utts))
    rows, per_layer = [], {}
    for utt, (layers, _) in utts.items():
        for layer, x in sorted(layers.items()):
            s = smoothness(x)
            per_layer.setdefault(layer, []).append(s["smoothness"])
            rows += [{"label": utt, "layer": layer, "metric": m, "value": v} for m, v in s.items()]
    for layer, v in per_layer.items():
        rows.append({"layer": layer, "metric": "smoothness", "value": float(np.mean(v))})
    rows.append({"metric": "smoothness", "value": float(np.mean([np.mean(v) for v in per_layer.values()]))})
    rows.append({"metric": "utterances", "value": len(utts)})

    layers, (phone_ids, phone_syms) = utts[drawn]
    fig, axes = grid(len(layers), cols=2, size=(5.0, 4.2))
    traces = []
    for ax, (layer, x) in zip(axes, sorted(layers.items())):
        xy = embed(x, params.perplexity, params.seed, params.tsne_iter)
        step = np.concatenate([[np.nan], np.linalg.norm(np.diff(x.astype(np.float64), axis=0), axis=1)])
        traces.append(pl.DataFrame({
            "utt_id": drawn, "layer": np.full(len(x), layer, np.int32), "frame": np.arange(len(x), dtype=np.int32),
            "phone_id": np.asarray(phone_ids, np.int32), "phone": list(phone_syms),
            "x": xy[:, 0].astype(np.float64), "y": xy[:, 1].astype(np.float64), "step": step}))
        _draw_path(ax, xy, np.asarray(phone_ids), list(phone_syms))
        ax.set_title(f"layer {layer} (smoothness {np.mean(per_layer[layer]):.3f})", fontsize=9)
    fig.suptitle(f"{FIGURE.paper}: temporal trace of {drawn} (t-SNE), {cid}", fontsize=9)
    fig.tight_layout()
    figure = save(fig, figure_path(fig_dir, cid, FIGURE.file), FIGURE.paper)
    table = pl.concat(traces).select(pl.lit(cid).alias("checkpoint_id"),
                                     pl.lit(VERSION, dtype=pl.Int32).alias("analysis_version"), pl.all())
    p = params.to_dict() | {"drawn": drawn, "utterances_used": list(utts), "source": inputs["source"]}
    return Output(NAME, VERSION, cid, summary_frame(rows, cid, NAME, VERSION), [figure], p,
                  tables={TRACES.name: table})


def _draw_path(ax, xy: np.ndarray, phone_ids: np.ndarray, phones: list[str]) -> None:
    """The trace as a thin grey path, frames as dots coloured by phone, phone names at the
    middle of each phone segment."""
    colours = np.vstack([plt.get_cmap("tab20")(np.arange(20)), plt.get_cmap("tab20b")(np.arange(20))])
    ax.plot(xy[:, 0], xy[:, 1], "-", color="0.7", lw=0.6, zorder=1)
    ax.scatter(xy[:, 0], xy[:, 1], c=colours[phone_ids % len(colours)], s=7, zorder=2)
    ax.scatter(*xy[0], marker=">", c="k", s=30, zorder=3)
    ax.scatter(*xy[-1], marker="s", c="k", s=22, zorder=3)
    starts = np.flatnonzero(np.diff(phone_ids, prepend=-1))
    for a, b in zip(starts, list(starts[1:]) + [len(phone_ids)]):
        m = (a + b - 1) // 2
        ax.annotate(phones[a], xy[m], fontsize=5, color="0.2", zorder=4)
    ax.set_xticks([])
    ax.set_yticks([])


ANALYSIS = Analysis(NAME, VERSION, CHECKPOINT, order=40, params=TraceParams, load=load, run=run, figures=(FIGURE,),
                    tables=(TRACES,))
