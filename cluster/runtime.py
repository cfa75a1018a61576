"""Connecting to Ray: a running cluster when there is one, else an embedded local one."""

from __future__ import annotations

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def ensure_ray(num_cpus: int | None = None) -> None:
    """Join the cluster named by RAY_ADDRESS (as ``ray job submit`` sets it) or a head started on
    this machine; otherwise start a local cluster for this process.
    """
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        return
    try:
        ray.init(address="auto", log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError):
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
