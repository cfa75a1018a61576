"""What a long command shows on the console: its own progress, while Ray's messages go to a file."""

from __future__ import annotations

import sys

from cluster.runtime import log_ray_to


def quiet_ray(folder, what: str):
    """Ray's own messages to a log file, named here before anything starts (``log_ray_to``); returns it."""
    path = log_ray_to(folder, what)
    print(f"Ray's messages: {path} (it names the folder of the workers' output)", file=sys.stderr, flush=True)
    return path
