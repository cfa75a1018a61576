"""Connecting to Ray: a running cluster when there is one, else an embedded local one."""

from __future__ import annotations

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
_started_local = False


def ensure_ray(num_cpus: int | None = None, connect_only: bool = False) -> bool:
    """Join the cluster named by RAY_ADDRESS (as ``ray job submit`` sets it) or a head started on
    this machine; otherwise start a local cluster for this process (unless ``connect_only``).

    Returns True when there is no shared cluster: this process runs a private one (which dies
    with it) or, with ``connect_only``, none at all.
    """
    global _started_local
    import ray

    if ray.is_initialized():
        return _started_local
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        return False
    try:
        ray.init(address="auto", log_to_driver=True)
        return False
    except (ConnectionError, RuntimeError, ValueError):
        if connect_only:
            return True
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
    _started_local = True
    return True
