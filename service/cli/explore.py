"""``gatelens explore``: the unit explorer (``service/explorer``) deployed on Ray Serve."""

from __future__ import annotations

import argparse
import time
import urllib.error
import urllib.request
from pathlib import Path

import ray  # before quiet_ray: importing Ray gives its logger a console handler, which quiet_ray replaces

from cluster.errors import GatelensError, InputError
from cluster.runtime import ensure_ray
from service.cli.console import quiet_ray
from service.store import Store


def wait_healthy(url: str, timeout: float = 120.0) -> None:
    """Until the deployment answers /api/health (Serve starts the replica in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "api/health", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise GatelensError(f"the explorer did not answer at {url} within {timeout:g} s; see Ray's Serve logs")
        time.sleep(0.5)


def cmd_explore(args: argparse.Namespace) -> int:
    quiet_ray(Path(args.store).resolve().parent / "logs", "explore")
    # deferred: importing Ray Serve warns (pydantic) and logs, which must reach the log file named above
    from service.explorer.app import MAX_REPLICAS, deploy, quiet_serve, undeploy
    from service.explorer.data import ExplorerConfig

    quiet_serve()
    if args.stop:
        if ensure_ray(connect_only=True):
            raise InputError("no running Ray cluster here: there is no explorer to stop")
        print("explorer removed" if undeploy() else "no explorer was deployed")
        return 0
    store = Store(args.store)
    with store.reader(samples=False):  # refused now, in one line, if it is missing or not a store
        pass
    config = ExplorerConfig(store=str(Path(args.store).resolve()),
                            storage=str(Path(args.storage).resolve()) if args.storage else None,
                            corpus=str(Path(args.corpus).resolve()) if args.corpus else None,
                            report=str(Path(args.report).resolve()) if args.report else None,
                            utterances=args.utterances)
    private = ensure_ray()
    print("deploying the explorer on Ray Serve (its replica loads nothing until a view asks) ...", flush=True)
    url = deploy(config, args.host, args.port, autoscale=not private)
    quiet_serve()
    wait_healthy(url)
    print(f"explorer: {url}")
    if not private:
        print(f"deployed on the running Ray cluster, 1 to {MAX_REPLICAS} replicas as its users need; "
              f"`gatelens explore --stop` removes it")
        return 0
    print("serving from a private Ray cluster until interrupted (Ctrl-C); `ray start --head` first keeps it running")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        ray.shutdown()  # the private cluster, and Serve on it, go with this process
        print("explorer stopped")
        return 0
