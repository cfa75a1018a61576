"""Fixtures for the analyses: small real checkpoints of the session corpus, captured for real
(Ray tasks) into a real DuckDB store, once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# pytest runs with --import-mode=importlib: make the helpers module of this folder importable.
sys.path.insert(0, str(Path(__file__).parent))

from analysis_helpers import capture_into, save_model  # noqa: E402


@pytest.fixture(scope="session")
def captured(ray_cluster, small_corpus, tmp_path_factory):
    """A store holding the captures of a 2-layer LSTM and a 2-layer GRU (16 units, 12 test
    utterances, 2 kept whole): {"store", "lstm", "gru", "corpus", "dir"}."""
    from service.store import Store

    root = tmp_path_factory.mktemp("analyses")
    store = Store(root / "store.duckdb")
    lstm = capture_into(store, save_model(small_corpus, root / "lstm.pt", "lstm"), rules=("abs>10", "pct>95"))
    gru = capture_into(store, save_model(small_corpus, root / "gru.pt", "gru", seed=1))
    return {"store": store, "lstm": lstm, "gru": gru, "corpus": small_corpus, "dir": root}
