"""Helpers of the analyses tests: small real checkpoints with planted weights, captures into a
real store, a fabricated finished study, an image check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import torch

# Fast settings every test uses for the slow parts (t-SNE iterations, utterances).
FAST = {"temporal_trace": {"tsne_iter": 250, "utterances": 2}, "memory_robustness": {"noise_s": 0.2, "utterances": 3}}


def save_model(corpus_dir: Path, path: Path, cell: str, layers: int = 2, hidden: int = 16, seed: int = 0,
               edit=None, extra: dict | None = None) -> Path:
    """An untrained model with larger input weights (so cells leave 0 and gates move), stamped
    with its seed as training stamps it; ``edit`` plants weights (a model without memory, or with
    perfect memory)."""
    from cluster.data.kaldi import read_corpus
    from cluster.models import ModelConfig, build_model, save_checkpoint

    corpus = read_corpus(corpus_dir)
    torch.manual_seed(seed)
    model = build_model(ModelConfig(cell=cell, layers=layers, hidden=hidden, num_targets=corpus.num_targets),
                        corpus.cmvn_mean, corpus.cmvn_std)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf.startswith("W_") and leaf.endswith("x"):
                p.mul_(4)
        if edit is not None:
            for layer in model.layers:
                edit(layer)
    return save_checkpoint(path, model, corpus.identity,
                           extra={"stamps": {"config": {"corpus": str(corpus_dir)}, "seed": seed}, **(extra or {})})


def no_memory(layer) -> None:
    """Forget gate 0 and no recurrent input: c_t depends on the current (spliced) frame only.
    LSTM: f = sigma(-1e4) = 0, W_*m = 0, peepholes 0. GRU (f = 1 - i): update gate i = 1 and
    reset gate o = 0, so c_t = g_t = tanh(W_cx x_t + b_c)."""
    if hasattr(layer, "W_fm"):
        for g in "ifco":
            getattr(layer, f"W_{g}m").zero_()
        for g in "ifo":
            getattr(layer, f"V_{g}c").zero_()
        layer.W_fx.zero_()
        layer.b_f.fill_(-1e4)
    else:
        for w in (layer.W_ix, layer.W_ox, layer.W_ic, layer.W_oc):
            w.zero_()
        layer.b_i.fill_(1e4)
        layer.b_o.fill_(-1e4)


def perfect_memory(layer) -> None:
    """LSTM with forget gate exactly 1: c_t = c_{t-1} + i g never forgets."""
    layer.W_fx.zero_()
    layer.W_fm.zero_()
    layer.V_fc.zero_()
    layer.b_f.fill_(1e4)


def capture_into(store, checkpoint: Path, rules=(), sample: int = 2) -> str:
    from cluster.capture import CaptureConfig, capture
    from cluster.summaries import SUMMARY_VERSION

    res = capture(CaptureConfig(checkpoint=str(checkpoint), split="test", utterances=12, shards=2, batch_size=4,
                                rules=tuple(rules), sample=sample))
    store.ingest(res.checkpoint_id, "capture", SUMMARY_VERSION, res.frames, params=res.params,
                 sample=res.sample, checkpoint=res.checkpoint_row)
    return res.checkpoint_id


def make_study(storage: Path, study: str, corpus_dir: Path, runs: list[dict]) -> None:
    """A study folder as a finished grid leaves it: per run a checkpoint directory whose model.pt
    is the final (test) report stamped with the run's seed (0, as run.json says; ``seed`` only seeds
    the weights), run.json stamps and epochs.parquet."""
    for r in runs:
        name = f"{r['cell']}_L{r['layers']}_H16{'_res' if r.get('residual') else ''}_s0"
        run_dir = storage / study / "runs" / name
        metrics = {"final": True, "test_per": r["per"], "test_frame_acc": r["acc"]}
        if r.get("model", True):
            save_model(corpus_dir, run_dir / "checkpoint_2026-01-01_00-00-00.000000" / "model.pt", r["cell"],
                       layers=r["layers"], seed=r.get("seed", 0),
                       extra={"metrics": metrics, "stamps": {"config": {"corpus": str(corpus_dir)}, "seed": 0}})
        config = {"corpus": str(corpus_dir), "cell": r["cell"], "layers": r["layers"], "hidden": 16,
                  "residual": bool(r.get("residual")), "lazy_layers": "last", "precision": "fp32", "seed": 0}
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "run.json").write_text(json.dumps({
            "config": config, "seed": 0, "corpus": {"name": "embedded", "manifest_sha256": "0" * 64, "num_targets": 120},
            "packages": {"torch": torch.__version__}, "git_revision": "abc123", "python": "3.11"}))
        pl.DataFrame([
            {"epoch": 1, "split": "dev", "frame_ce": 2.0, "frame_acc": r["acc"] - 0.01, "per": r["per"] + 0.01,
             "frames": 100},
            {"epoch": 1, "split": "test", "frame_ce": 2.0, "frame_acc": r["acc"], "per": r["per"], "frames": 100},
        ]).write_parquet(run_dir / "epochs.parquet")


def png_is_drawn(path: str) -> bool:
    """A real, non-blank image."""
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    return img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100 and float(np.std(img[..., :3])) > 0.01
