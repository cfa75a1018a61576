"""``gatelens watch``: the scheduler of reanalysis (``service/scheduler.py``) deployed, run once,
asked for its status, or stopped."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

import ray

from analyses import registry
from cluster.errors import InputError
from cluster.runtime import ensure_ray
from service.scheduler import ACTOR_NAME, NAMESPACE, PassReport, Watcher, WatchConfig, deploy, existing, \
    pending_and_failed, run_pass, running


def parse_every(text: str) -> float:
    """'10m', '90s', '1h' or plain seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    t = text.strip().lower()
    try:
        seconds = float(t[:-1]) * units[t[-1]] if t[-1] in units else float(t)
    except (ValueError, IndexError):
        raise InputError(f"--every {text!r}: expected e.g. 90s, 10m, 1h") from None
    if not seconds > 0:
        raise InputError(f"--every {text!r}: the interval must be positive")
    return seconds


def cmd_watch(args: argparse.Namespace) -> int:
    config = WatchConfig(storage=args.storage, store=args.store, figures=args.figures, utterances=args.utterances,
                         settle=args.settle, analyses=args.analyses.split(",") if args.analyses else None,
                         corpus=args.corpus, allow_pipes=args.allow_pipes)
    if args.every:
        config.every = parse_every(args.every)
    for name in config.analyses or []:
        registry.get(name)  # an unknown name is refused here, not in every pass
    if args.once:
        ensure_ray()
        report = run_pass(config.resolved(), progress=print)
        for path, error in report.failed.items():
            print(f"  failed: {path}: {error}")
        return 0 if report.error is None else 1
    if args.status:
        pending, failed = pending_and_failed(config)
        started_here = ensure_ray(connect_only=True)
        actor = existing() if not started_here else None
        if actor is None:
            print("watcher: not running")
        else:
            st = ray.get(actor.status.remote())
            print(f"watcher: running since {st['started']}, every {st['config']['every']:.0f} s, "
                  f"{st['passes']} passes")
            if st["last"]:
                print("  last " + PassReport(**st["last"]).line())
        print(f"pending: {len(pending)}" + "".join(f"\n  {p}" for p in pending[:20]))
        print(f"failed: {len(failed)}" + "".join(f"\n  {k}: {v}" for k, v in list(failed.items())[:20]))
        now = running(config)
        print(f"running: {len(now)}" + "".join(f"\n  {line}" for line in now[:20]))
        return 0
    if args.stop:
        if ensure_ray(connect_only=True):
            print("watcher: no Ray cluster is running")
            return 0
        actor = existing()
        if actor is None:
            print("watcher: not running")
            return 0
        ray.kill(actor, no_restart=True)
        print("watcher: stopped")
        return 0
    started_here = ensure_ray()
    if started_here:
        # a detached actor would die with this process's private cluster: loop here instead
        print(f"no running Ray cluster (start one with `gatelens up`); watching in the foreground every "
              f"{config.every:.0f} s, Ctrl-C to stop")
        w = Watcher(asdict(config.resolved()))
        try:
            w.loop()
        except KeyboardInterrupt:
            w.stop()
        return 0
    deploy(config)
    print(f"watcher deployed as detached actor {NAMESPACE}/{ACTOR_NAME}: a pass every {config.every:.0f} s over "
          f"{Path(config.storage).resolve()}; `gatelens watch --status` to follow it")
    return 0
