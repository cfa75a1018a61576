"""Connecting to Ray: a running cluster when there is one, else an embedded local one."""

from __future__ import annotations

import os
import subprocess
from functools import lru_cache
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
_started_local = False


def head_address() -> str | None:
    """The GCS address of the head that ``ray start`` (``gatelens up``) last started here, if any.

    Read from Ray's ``ray_current_cluster`` file rather than with ``address="auto"``, whose legacy
    fallback joins *any* Ray process on the machine, e.g. another program's private cluster, and
    dies with it.
    """
    temp = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
    try:
        return temp.read_text().strip() or None
    except OSError:
        return None


def ensure_ray(num_cpus: int | None = None, connect_only: bool = False) -> bool:
    """Join the cluster named by RAY_ADDRESS (as ``ray job submit`` sets it) or the head started
    on this machine with ``ray start``; otherwise start a local cluster for this process (unless
    ``connect_only``).

    Returns True when there is no shared cluster: this process runs a private one (which dies
    with it) or, with ``connect_only``, none at all.
    """
    global _started_local
    import ray  # deferred: checkpoints import this module for git_revision, and Ray costs ~1 s to import

    if ray.is_initialized():
        return _started_local
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        return False
    head = head_address()
    if head:
        try:
            ray.init(address=head, log_to_driver=True)
            return False
        except (ConnectionError, RuntimeError, ValueError):
            pass  # a stale file from a head that is gone
    if connect_only:
        return True
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
    _started_local = True
    return True


@lru_cache(maxsize=1)
def git_revision() -> str | None:
    """HEAD of the repository this code runs from, with "-dirty" when tracked files differ from it;
    None outside a git checkout. One lookup per process: runs and checkpoints stamp it."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if rev.returncode != 0 or not rev.stdout.strip():
        return None
    return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
