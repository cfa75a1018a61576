"""Helpers shared by test modules (tests/ is put on sys.path by conftest.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from cluster.data.kaldi import read_corpus
from cluster.decode import estimate_graph
from cluster.models import ModelConfig, build_model, save_checkpoint


def make_checkpoint(corpus_dir: Path, path: Path, cell: str, seed: int) -> Path:
    """A real (untrained) checkpoint laid out as Ray Train stores them: <run>/checkpoint_*/model.pt."""
    corpus = read_corpus(corpus_dir)
    torch.manual_seed(seed)
    model = build_model(ModelConfig(cell=cell, layers=2, hidden=8, num_targets=corpus.num_targets),
                        corpus.cmvn_mean, corpus.cmvn_std)
    graph = estimate_graph([(a.phones, a.targets) for a in corpus.split("train").alignments.values()],
                           corpus.num_targets, phone_symbols=corpus.phones)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(path, model, corpus.identity, extra={
        "decode_graph": graph.to_dict(), "metrics": {"epoch": 1},
        "stamps": {"config": {"corpus": str(corpus_dir)}}})
