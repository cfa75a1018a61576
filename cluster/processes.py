"""Which process left something behind: a pid with its start time names one process, since a pid
alone may be reused by the time a later process asks whether its owner still runs. Read by the
store (running analysis rows, writers' markers) and by the corpus writers (staging folders)."""

from __future__ import annotations

import os
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
