"""Matching across seeds, cells and epochs: does a layer (or "unit 17") of one checkpoint have a
counterpart in another? What lets a unit-level finding be checked on another seed.

For pairs of checkpoints of a study, both run on the same utterances (the first ``utterances`` of
``split``), with the cell vectors c of every frame (float32, from the cells' own capture path):

- **linear CKA** between every layer of one and every layer of the other (a layers x layers
  matrix): with X, Y the [frames, units] values, each column centred,

      CKA(X, Y) = |Y^T X|_F^2 / (|X^T X|_F |Y^T Y|_F)

  invariant to an orthogonal rotation of either side and to isotropic scaling, so two layers
  that hold the same information in other coordinates score 1;
- **unit matching**, per layer index both have: the Pearson correlation of every unit of one with
  every unit of the other over the frames, and the assignment that maximises the summed
  |correlation| (``scipy.optimize.linear_sum_assignment``, the Hungarian method). |r| because a
  gated cell has a sign symmetry: negating one unit's candidate weights, peepholes and outgoing
  weights gives the same function with that unit's c negated. The matched correlation keeps its sign.

Pairs: *seed* (every two seeds of a grid point), *cell* (LSTM vs GRU at the same depth, residual
setting and seed), *epoch* (a run's first reported checkpoint vs its final one; for the lowest
seed of each grid point).

Tables ``layer_similarity`` and ``unit_match``; summary rows per pair (label ``kind:run_a~run_b``):
per layer index both have, ``cka_same_layer`` and ``matched_abs_corr`` (mean over units), and
layer 0 their means over layers.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch
from scipy.optimize import linear_sum_assignment

from analyses.common import (STUDY, Analysis, AnalysisError, FigureSpec, Output, Params, StudyRef, figure_path, grid,
                             save, summary_frame)
from cluster.capture import CaptureConfig, load as load_model, open_corpus
from cluster.models.checkpoint import checkpoint_id
from cluster.runs import iter_runs
from cluster.tables import C, Table

NAME = "matching"
VERSION = 1
FIGURE = FigureSpec("matching_cka.png", "Matching", "Layer similarity (linear CKA) across seeds, cells and epochs")
_PAIR = (C("checkpoint_id", "VARCHAR", "the study (study:<name>)", key=True), C("analysis_version", "INTEGER", key=True),
         C("kind", "VARCHAR", "seed | cell | epoch"), C("checkpoint_a", "VARCHAR", key=True),
         C("checkpoint_b", "VARCHAR", key=True))
LAYER_SIMILARITY = Table("layer_similarity", "linear CKA between the layers of two checkpoints on the same frames", (
    *_PAIR, C("layer_a", "INTEGER", key=True), C("layer_b", "INTEGER", key=True),
    C("cka", "DOUBLE", "linear CKA of the cell vectors c (1: the same up to rotation and scale)"),
    C("frames", "BIGINT")),
    ("checkpoint_id", "analysis_version", "checkpoint_a", "checkpoint_b", "layer_a", "layer_b"))
UNIT_MATCH = Table("unit_match", "each unit of a layer matched to one of the same layer of another checkpoint", (
    *_PAIR, C("layer", "INTEGER", key=True), C("unit_a", "INTEGER", key=True), C("unit_b", "INTEGER"),
    C("corr", "DOUBLE", "Pearson correlation of the matched units' c over the frames (the assignment maximises |corr|)")),
    ("checkpoint_id", "analysis_version", "checkpoint_a", "checkpoint_b", "layer", "unit_a"))
KINDS = ("seed", "cell", "epoch")


@dataclass
class MatchingParams(Params):
    storage: str | None = None  # where the study's runs are (recorded with the analysis)
    utterances: int = 20
    split: str = "test"
    corpus: str | None = None  # default: each run's training corpus
    panels: int = 9  # CKA matrices drawn (the tables hold every pair)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of x [N, p] and y [N, q] (rows: the same frames)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ValueError(f"CKA needs the same frames on both sides, got {x.shape} and {y.shape}")
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    denom = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(np.linalg.norm(y.T @ x) ** 2 / denom) if denom > 0 else float("nan")


def correlations(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[p, q] Pearson correlations of every column of x with every column of y (0 for a constant unit)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    nx, ny = np.linalg.norm(x, axis=0), np.linalg.norm(y, axis=0)
    c = (x.T @ y) / np.outer(np.where(nx > 0, nx, 1.0), np.where(ny > 0, ny, 1.0))
    c[nx == 0, :] = 0.0
    c[:, ny == 0] = 0.0
    return c


def match_units(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each unit of x, its unit of y (the assignment maximising the summed |correlation|) and
    the matched correlation."""
    c = correlations(x, y)
    rows, cols = linear_sum_assignment(-np.abs(c))
    out = np.full(c.shape[0], -1, dtype=np.int64)
    out[rows] = cols
    return out, np.where(out >= 0, c[np.arange(c.shape[0]), np.maximum(out, 0)], np.nan)


def pairs(runs: list[dict]) -> list[dict]:
    """The pairs to compare, from the study's runs ({name, point, cell, layers, residual, seed,
    final, first} with checkpoint ids and paths)."""
    out = []
    by_point: dict[tuple, list[dict]] = {}
    for r in runs:
        by_point.setdefault(r["point"], []).append(r)
    for point, rs in sorted(by_point.items(), key=lambda kv: str(kv[0])):
        rs = sorted(rs, key=lambda r: r["seed"])
        out += [("seed", a, b) for a, b in itertools.combinations(rs, 2)]
        first = rs[0]
        if first["first"] and first["first"][0] != first["final"][0]:
            out.append(("epoch", {**first, "final": first["first"], "name": first["name"] + "@first"}, first))
    lstm = [r for r in runs if r["cell"] == "lstm"]
    for a in sorted(lstm, key=lambda r: (r["layers"], r["residual"], r["seed"])):
        for b in runs:
            if b["cell"] == "gru" and (b["layers"], b["residual"], b["seed"]) == (a["layers"], a["residual"], a["seed"]):
                out.append(("cell", a, b))
    return [{"kind": k, "a": a, "b": b} for k, a, b in out]


def load(reader, ref: StudyRef, params: MatchingParams) -> dict:
    """The study's runs: their final checkpoints (ids, files) and first reported ones."""
    runs = []
    for run in iter_runs(ref.storage, ref.study):
        cfg = run.stamp.config
        files = run.checkpoint_files()
        if not files:
            continue
        facts = {"arch": cfg["cell"], "layers": cfg["layers"], "hidden": cfg["hidden"], "residual": bool(cfg["residual"])}
        point = (cfg["cell"], cfg["layers"], cfg["hidden"], bool(cfg["residual"]), cfg.get("lazy_layers"),
                 cfg.get("precision"))
        runs.append({"name": run.name, "point": point, "cell": cfg["cell"], "layers": cfg["layers"],
                     "residual": bool(cfg["residual"]), "seed": cfg["seed"], "corpus": cfg["corpus"],
                     "final": (checkpoint_id(files[-1], facts), str(files[-1])),
                     "first": (checkpoint_id(files[0], facts), str(files[0])) if len(files) > 1 else None})
    return {"study": ref.study, "runs": runs}


def _values(path: str, corpus: str | None, split: str, n: int) -> tuple[dict[int, np.ndarray], list[str]]:
    """{layer: c [frames, H]} over the first n utterances of the split, and their ids."""
    model, meta = load_model(path)
    corp = open_corpus(CaptureConfig(checkpoint=path, corpus=corpus), meta)
    sp = corp.split(split)
    ids = list(sp.utt_ids[:n])
    per_layer: dict[int, list[np.ndarray]] = {}
    for utt_id in ids:
        u = sp.load(utt_id)
        with torch.inference_mode():
            vals = model.capture(torch.from_numpy(u.feats), dtype=torch.float32, values=("c",))
        for k, v in vals.items():
            per_layer.setdefault(int(k[1:].split(".")[0]), []).append(v.numpy())
    return {layer: np.concatenate(v) for layer, v in per_layer.items()}, ids


def run(inputs: dict, params: MatchingParams, fig_dir) -> Output:
    study = inputs["study"]
    sid = StudyRef("", study).subject_id
    todo = pairs(inputs["runs"])
    torch.set_num_threads(1)
    cache: dict[str, tuple[dict, list[str]]] = {}

    def values(run: dict) -> dict[int, np.ndarray]:
        path = run["final"][1]
        if path not in cache:
            cache[path] = _values(path, params.corpus or run["corpus"], params.split, params.utterances)
        return cache[path]

    sims, matches, rows, drawn = [], [], [], []
    for p in todo:
        (va, ids_a), (vb, ids_b) = values(p["a"]), values(p["b"])
        if ids_a != ids_b:
            raise AnalysisError(f"study {study}: {p['a']['name']} and {p['b']['name']} were run on different "
                                f"utterances (corpora differ); pass --set matching.corpus=...")
        ca, cb = p["a"]["final"][0], p["b"]["final"][0]
        key = {"checkpoint_id": sid, "analysis_version": VERSION, "kind": p["kind"], "checkpoint_a": ca,
               "checkpoint_b": cb}
        cka = np.array([[linear_cka(va[i], vb[j]) for j in sorted(vb)] for i in sorted(va)])
        frames = next(iter(va.values())).shape[0]
        sims += [{**key, "layer_a": i, "layer_b": j, "cka": float(cka[i - 1, j - 1]), "frames": frames}
                 for i in sorted(va) for j in sorted(vb)]
        label = f"{p['kind']}:{p['a']['name']}~{p['b']['name']}"
        same, corr = [], []
        for layer in sorted(set(va) & set(vb)):
            unit_b, r = match_units(va[layer], vb[layer])
            matches += [{**key, "layer": layer, "unit_a": u, "unit_b": int(unit_b[u]), "corr": float(r[u])}
                        for u in range(len(unit_b))]
            same.append(float(cka[layer - 1, layer - 1]))
            corr.append(float(np.nanmean(np.abs(r))))
            rows += [{"label": label, "layer": layer, "metric": "cka_same_layer", "value": same[-1]},
                     {"label": label, "layer": layer, "metric": "matched_abs_corr", "value": corr[-1]}]
        rows += [{"label": label, "metric": "cka_same_layer", "value": float(np.mean(same))},
                 {"label": label, "metric": "matched_abs_corr", "value": float(np.mean(corr))}]
        drawn.append((p, label, cka))

    # the figure: up to `panels` matrices, taking the kinds in turn so each is shown
    chosen, queues = [], {k: [d for d in drawn if d[0]["kind"] == k] for k in KINDS}
    while len(chosen) < params.panels and any(queues.values()):
        for k in KINDS:
            if queues[k] and len(chosen) < params.panels:
                chosen.append(queues[k].pop(0))
    fig, axes = grid(max(len(chosen), 1), cols=3, size=(3.6, 3.2))
    for ax, (p, label, cka) in zip(axes, chosen):
        im = ax.imshow(cka, vmin=0, vmax=1, cmap="viridis", origin="lower",
                       extent=(0.5, cka.shape[1] + 0.5, 0.5, cka.shape[0] + 0.5))
        for (i, j), v in np.ndenumerate(cka):
            ax.text(j + 1, i + 1, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if v < 0.6 else "k")
        ax.set_xlabel(f"{p['b']['name']} layer", fontsize=7)
        ax.set_ylabel(f"{p['a']['name']} layer", fontsize=7)
        ax.set_title(f"{p['kind']}: linear CKA", fontsize=8)
        ax.tick_params(labelsize=7)
    if not chosen:
        axes[0].text(0.5, 0.5, "no pairs: one seed, one cell and one epoch per run", ha="center", va="center",
                     transform=axes[0].transAxes, fontsize=8)
        axes[0].set_axis_off()
    else:
        fig.colorbar(im, ax=axes, shrink=0.8)
    fig.suptitle(f"{FIGURE.paper}: study {study}, {len(drawn)} pairs on {params.utterances} {params.split} "
                 f"utterances (cell vectors c)", fontsize=9)
    figure = save(fig, figure_path(fig_dir, "study", f"{study}-{FIGURE.file}"), FIGURE.paper)
    tables = {t.name: pl.DataFrame(rows_, schema=t.schema) for t, rows_ in ((LAYER_SIMILARITY, sims),
                                                                            (UNIT_MATCH, matches))}
    return Output(NAME, VERSION, sid, summary_frame(rows, sid, NAME, VERSION), [figure], params.to_dict(), tables)


ANALYSIS = Analysis(NAME, VERSION, STUDY, order=110, params=MatchingParams, load=load, run=run, figures=(FIGURE,),
                    tables=(LAYER_SIMILARITY, UNIT_MATCH))
