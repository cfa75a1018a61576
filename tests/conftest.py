"""Shared fixtures: one real local Ray cluster and one small real embedded corpus per test session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).parent))  # for tests_helpers


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def small_corpus(ray_cluster, tmp_path_factory):
    """120 utterances (96 / 12 / 12), several shards per split: enough for every phone to occur."""
    from cluster.data.embedded import prepare_embedded

    out = tmp_path_factory.mktemp("corpus") / "embedded"
    prepare_embedded(out, utterances=120, seed=7, shard_size=40)
    return out
