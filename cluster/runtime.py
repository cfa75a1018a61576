"""Connecting to Ray: a running cluster when there is one, else an embedded local one."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

from cluster.errors import GatelensError

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
_started_local = False
_log_to_driver = True
_session_dir: str | None = None


def log_ray_to(folder: str | os.PathLike, what: str) -> Path:
    """Send Ray's, Tune's and Train's own messages (banners, token-auth notes, trial tables) to a
    file ``<folder>/<what>-<UTC time>.log`` instead of the console, and keep the workers' output
    in Ray's session logs (not forwarded to this process); returns the file. Errors are not
    hidden by this: a command still prints a failed trial's or task's error and where its log is.
    Call it before ``ensure_ray``; a process that joined Ray earlier keeps its forwarding."""
    global _log_to_driver
    path = Path(folder) / f"{what}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("ray", "py.warnings"):
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            logger.removeHandler(h)
        logger.addHandler(handler)
        logger.propagate = False
    logging.captureWarnings(True)
    _log_to_driver = False
    return path


def session_dir() -> str | None:
    """Ray's session folder of this process's cluster (its ``logs/`` hold every worker's output)."""
    return _session_dir


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


# Ray Train V2 settings a trial waits on or starts processes for: (Ray's default, gatelens's value).
# bench/startup.py times a run under each in one bench run; a value already in the environment wins.
TRAIN_SETTINGS = {
    # the controller polls its workers every 2 s: it collects their reports, and sees that training
    # has ended, only then; a poll is one small actor call per worker
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": ("2.0", "0.2"),
    # a PreemptionWatcher actor per trial (a Python process of its own, importing Ray) that tells
    # the workers of a node being drained; without it a drained node's worker fails and the run
    # restarts from its last checkpoint (FailureConfig), as before the watcher existed
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": ("1", "0"),
    # the controller's and workers' metrics for Ray's dashboard (Prometheus), which runs read from
    # their own run.json / epochs.parquet instead
    "RAY_TRAIN_METRICS_ENABLED": ("1", "0"),
}


def train_settings(force: str | None = None) -> dict[str, str]:
    """Put ``TRAIN_SETTINGS`` into this process's environment where a variable is not set already
    (Ray Train hands them to the controller and workers of every trainer fitted from here) and
    return the values in force. ``force="ray"`` or ``"gatelens"`` sets Ray's defaults or gatelens's
    values over what is there (the benchmark's two arms)."""
    if force not in (None, "ray", "gatelens"):
        raise ValueError(f"force must be None, 'ray' or 'gatelens', not {force!r}")
    for name, (default, ours) in TRAIN_SETTINGS.items():
        if force:
            os.environ[name] = default if force == "ray" else ours
        else:
            os.environ.setdefault(name, ours)
    return {name: os.environ[name] for name in TRAIN_SETTINGS}


say = None  # where ensure_ray says which cluster a command runs on (the CLI sets it: one stderr line)


def _say(message: str) -> None:
    if say is not None:
        say(message)


def _token_auth_for_head() -> None:
    """Join a head that uses Ray's token auth (``ray start`` enables it where a token exists, as
    ``gatelens up`` does) without the user exporting RAY_AUTH_MODE: a client only sends its token
    when that variable says so, and otherwise retries for ~20 s and fails. An explicit setting is
    kept. Ray's own helper is used (it also refreshes the configuration Ray cached at import)."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    try:  # deferred: Ray costs ~1 s to import (see ensure_ray)
        from ray._private.authentication.authentication_token_setup import \
            maybe_enable_token_auth_if_token_available
    except ImportError:  # another Ray: the variable alone (read when Ray starts its core worker)
        if (Path.home() / ".ray" / "auth_token").is_file() or os.environ.get("RAY_AUTH_TOKEN"):
            os.environ["RAY_AUTH_MODE"] = "token"
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _listening(address: str, timeout: float = 2.0) -> bool:
    """Whether something accepts connections at ``host:port`` (a head's GCS), before ray.init's
    own ~20 s of retries."""

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def _join_failed(address: str, how: str, e: Exception):

    auth = os.environ.get("RAY_AUTH_MODE", "unset")
    return GatelensError(f"cannot join the Ray head at {address} ({how}): {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}; RAY_AUTH_MODE is {auth} (a head started "
                         f"with token auth needs RAY_AUTH_MODE=token and its token in ~/.ray/auth_token); "
                         f"nothing was run on a private cluster instead")


def ensure_ray(num_cpus: int | None = None, connect_only: bool = False) -> bool:
    """Join the cluster named by RAY_ADDRESS (as ``ray job submit`` sets it) or the head started
    on this machine with ``ray start`` (``gatelens up``), with its token auth; otherwise start a
    local cluster for this process (unless ``connect_only``). A head that is meant (RAY_ADDRESS,
    or a head file whose address answers) and refuses raises ``GatelensError`` rather than
    falling back to a private cluster; a head file of a head that is gone is said and passed by.
    Which cluster it is goes to ``say`` in one line.

    Returns True when there is no shared cluster: this process runs a private one (which dies
    with it) or, with ``connect_only``, none at all.
    """
    global _started_local
    import ray  # deferred: checkpoints import this module for git_revision, and Ray costs ~1 s to import

    if ray.is_initialized():
        return _started_local

    def init(**kw) -> None:
        global _session_dir
        ctx = ray.init(log_to_driver=_log_to_driver, **kw)
        _session_dir = ctx.address_info.get("session_dir")
        if not _log_to_driver:
            logging.getLogger("ray").warning("worker output: %s/logs", _session_dir)

    def join(address: str, how: str) -> bool:
        if re.fullmatch(r"[\w.-]+:\d+", address) and not _listening(address):
            raise GatelensError(f"cannot join the Ray head at {address} ({how}): nothing answers there; "
                                f"nothing was run on a private cluster instead")
        _token_auth_for_head()
        try:
            init(address=address)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise _join_failed(address, how, e) from None
        cpus = int(ray.cluster_resources().get("CPU", 0))
        _say(f"ray: on the cluster at {address} ({how}; {cpus} CPUs, {len(ray.nodes())} nodes)")
        return False

    if os.environ.get("RAY_ADDRESS"):
        return join(os.environ["RAY_ADDRESS"], "RAY_ADDRESS")
    head = head_address()
    if head and _listening(head):
        return join(head, "the head `gatelens up` started")
    if head:
        _say(f"ray: the head `gatelens up` started at {head} is gone (nothing answers there)")
    if connect_only:
        return True
    # Tune's trial actors and Train's controllers hold no CPU, so a grid runs about three processes
    # per CPU by design; Ray's default cap on starting workers (the CPU count) throttles them and
    # warns on the console at four times it
    cpus = num_cpus or os.cpu_count() or 1
    os.environ.setdefault("RAY_worker_maximum_startup_concurrency", str(max(8, 4 * cpus)))
    train_settings()  # before the cluster starts: every process of it inherits them
    init(address="local", num_cpus=num_cpus, include_dashboard=False)
    _started_local = True
    _say(f"ray: on a private cluster of this command ({int(ray.cluster_resources().get('CPU', 0))} CPUs; it ends "
         f"with it; `gatelens up` starts a shared head)")
    return True


def machine() -> str:
    """This machine's CPU as benchmarks name it: model, cores, AVX-512 (and bf16) when present."""
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown CPU":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    avx = ", AVX-512" + (" incl. avx512_bf16" if "avx512_bf16" in flags else "") if "avx512f" in flags else ""
    return f"{model} ({os.cpu_count()} cores{avx})"


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
