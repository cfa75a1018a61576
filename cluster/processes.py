"""Which process left something behind: a pid with its start time names one process, since a pid
alone may be reused by the time a later process asks whether its owner still runs, and the host
names it on a cluster whose nodes share the storage. Read by the store (running analysis rows,
writers' markers) and by the corpus writers (staging folders)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path


def started(pid: int) -> str | None:
    """When process ``pid`` started, in clock ticks since boot (``/proc/PID/stat`` field 22), or
    None where it is gone or /proc is not there."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": comm may hold spaces
    return fields[19] if len(fields) > 19 else None


def this_process() -> str:
    """This process as ``pid.start`` (``pid`` alone where /proc is missing)."""
    start = started(os.getpid())
    return f"{os.getpid()}" + (f".{start}" if start else "")


def alive(proc: str) -> bool:
    """Whether the process ``pid[.start]`` of this host still runs: it answers signal 0 and, where
    its start was recorded, started then (another start is a reuse of the pid)."""
    pid, _, start = proc.partition(".")
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        pass
    now = started(int(pid))
    return not start or now is None or now == start


def owner() -> str:
    """This process as ``host:pid.start``: what a writer's marker, a running analysis row and a
    corpus writer's staging folder record."""
    return f"{socket.gethostname()}:{this_process()}"


def owner_alive(who: str | None, stale_after: float | None = None, since: float | None = None) -> bool:
    """Whether the process ``host:pid[.start]`` still runs. On this host it is asked (``alive``:
    a pid that started at another time than recorded is a reuse, so the owner is gone); a
    process on another host cannot be asked, so it is taken as alive unless ``since`` (epoch
    seconds) is more than ``stale_after`` seconds ago. A bare ``pid[.start]`` (what corpus
    writers recorded before the host was) is this host's."""
    if not who:
        return False
    host, sep, proc = who.rpartition(":")
    if not sep or host == socket.gethostname():
        return alive(proc)
    return stale_after is None or since is None or time.time() - since < stale_after
