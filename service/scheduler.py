"""Scheduled reanalysis: every checkpoint in the training storage gets its analyses, without asking.

    gatelens watch --every 10m     # a detached, named actor on the running Ray cluster (0 CPU)
    gatelens watch --once          # one pass, here
    gatelens watch --status        # last pass, pending and failed checkpoints
    gatelens watch --stop

A pass finds every ``checkpoint_*/model.pt`` under the storage, skips files still being written
(modified less than ``settle`` seconds ago: Ray copies a checkpoint into storage file by file),
and for each checkpoint that lacks a finished capture or analysis at the *current* version runs
capture (sharded Ray tasks), the analyses (Ray tasks) and the ingest (this process: the one
writer). A checkpoint that fails (truncated, unloadable, another corpus) is logged ``failed`` with
its error in the store's analyses log and is not retried until its file changes; the pass goes
on. Ray has no cron, so the loop is an actor method; an exception in a pass is logged and the
loop continues (an uncaught one would end the actor silently).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import ray

from analyses import registry
from cluster.models.checkpoint import checkpoint_id, file_digest, load_checkpoint
from cluster.runs import RunDir
from cluster.summaries import SUMMARY_VERSION
from cluster.tables import CAPTURE
from service.store import Store, default_store_path
from service.study import analyse, ensure_captured

ACTOR_NAME = "gatelens-watcher"
NAMESPACE = "gatelens"
log = logging.getLogger("gatelens.watch")


@dataclass
class WatchConfig:
    storage: str = "data/runs"  # training storage (where Ray Train writes checkpoints)
    store: str = field(default_factory=lambda: str(default_store_path()))
    figures: str = "data/figures"
    every: float = 600.0  # seconds between passes
    settle: float = 10.0  # a file younger than this may still be being copied
    utterances: int = 500  # utterances captured per checkpoint (the paper's 500)
    sample: int = 3  # utterances kept frame by frame (temporal trace)
    analyses: list[str] | None = None  # default: all per-checkpoint analyses
    corpus: str | None = None  # default: each checkpoint's training corpus
    allow_pipes: bool = False  # the watcher never runs Kaldi pipes unless its own configuration says so

    def resolved(self) -> "WatchConfig":
        return WatchConfig(**{**asdict(self), "storage": str(Path(self.storage).resolve()),
                              "store": str(Path(self.store).resolve()), "figures": str(Path(self.figures).resolve())})


@dataclass
class PassReport:
    started: str
    seconds: float = 0.0
    found: int = 0
    settling: int = 0
    done: list[str] = field(default_factory=list)  # checkpoint ids analysed in this pass
    up_to_date: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # path -> error
    error: str | None = None  # an exception that ended the pass early

    def line(self) -> str:
        return (f"pass at {self.started}: {self.found} checkpoints, {len(self.done)} analysed, {self.up_to_date} "
                f"up to date, {self.settling} still being written, {len(self.failed)} failed"
                + (f"; pass error: {self.error}" if self.error else "") + f" ({self.seconds:.1f} s)")


def discover(storage: str | Path) -> list[Path]:
    """Every checkpoint file Ray Train wrote under ``storage``, oldest first."""
    root = Path(storage)
    if not root.is_dir():
        return []
    files = [p for p in root.rglob("checkpoint_*/model.pt") if p.is_file()]
    return sorted(files, key=lambda p: (p.stat().st_mtime, str(p)))


def _known_ids(store) -> dict[str, str]:
    """path -> checkpoint_id of checkpoints the store has registered (saves re-hashing them)."""
    if not Path(store.path).is_file():
        return {}
    df = store.query("SELECT path, checkpoint_id FROM checkpoints WHERE path IS NOT NULL")
    return dict(zip(df["path"].to_list(), df["checkpoint_id"].to_list()))


def _status(store, checkpoint_id: str, analysis: str, version: int) -> str | None:
    if not Path(store.path).is_file():
        return None
    df = store.query("SELECT status FROM analyses WHERE checkpoint_id = ? AND analysis = ? AND analysis_version = ?",
                     [checkpoint_id, analysis, version])
    return df["status"][0] if df.height else None


def run_pass(config: WatchConfig, progress=log.info) -> PassReport:
    """One pass over the storage; never raises for one checkpoint's failure.

    First the rows a killed pass left ``running`` (their owner process is gone) are logged failed
    and so redone. Then every new checkpoint is captured (one at a time: the capture's shards are
    Ray tasks over every core already), and then the analyses of all of them are Ray tasks at
    once, as many in parallel as the cluster has CPUs. One line is printed per capture and per
    analysis as it finishes, then one per checkpoint when its last analysis is written."""
    report = PassReport(datetime.now(timezone.utc).isoformat(timespec="seconds"))
    t0 = time.time()
    store = Store(config.store)
    analyses = registry.checkpoint_analyses()
    names = config.analyses or list(analyses)
    try:
        for r in store.reap_orphans().iter_rows(named=True):
            progress(f"  redoing {r['analysis']} of {r['checkpoint_id']}: left running by {r['owner'] or 'an older gatelens'}, "
                     f"which is gone")
        known = _known_ids(store)
        failures = store.watch_failures()
        files = discover(config.storage)
        report.found = len(files)
        todo: dict[str, tuple] = {}  # checkpoint_id -> (path, stat, key, earlier failure)
        for path in files:
            st = path.stat()
            if time.time() - st.st_mtime < config.settle:
                report.settling += 1
                continue
            key = str(path.resolve())
            earlier = failures.get(key)
            if earlier is not None and earlier[:2] == (st.st_size, st.st_mtime):
                report.failed[str(path)] = f"failed earlier, file unchanged: {earlier[2]}"
                continue  # not loaded, not hashed, not captured again until the file changes
            cid = known.get(key)
            try:
                if cid is None:
                    _, meta = load_checkpoint(path)
                    cid = checkpoint_id(path, meta.facts)
                states = [_status(store, cid, CAPTURE, SUMMARY_VERSION)] + \
                         [_status(store, cid, n, registry.get(n).version) for n in names]
                if all(s == "finished" for s in states):
                    report.up_to_date += 1
                    if earlier is not None:
                        store.clear_watch_failure(key)
                    continue
                if cid in todo:  # the same file twice (a copy): analysed once
                    continue
                c0 = time.time()
                if ensure_captured(store, RunDir.of_checkpoint(path), path, cid, utterances=config.utterances,
                                   sample=config.sample, corpus=config.corpus, allow_pipes=config.allow_pipes,
                                   progress=progress):
                    progress(f"  {cid} capture: finished ({time.time() - c0:.1f} s) {path}")
                todo[cid] = (path, st, key, earlier)
            except Exception as e:  # one checkpoint's failure must not stop the pass
                _failed(store, report, path, st, key, cid, f"{path}: {type(e).__name__}: {e}", progress)
        if todo:
            left = {cid: len(names) for cid in todo}
            failed_of = dict.fromkeys(todo, 0)  # per checkpoint, counted as jobs settle: O(1) each

            def each(job) -> None:
                progress(f"  {job.checkpoint_id} {job.analysis}: {job.status} ({job.seconds:.1f} s)"
                         + (f": {job.error}" if job.error else ""))
                left[job.checkpoint_id] -= 1
                failed_of[job.checkpoint_id] += job.status == "failed"
                if not left[job.checkpoint_id]:
                    bad = failed_of[job.checkpoint_id]
                    progress(f"{job.checkpoint_id}: {len(names) - bad} of {len(names)} analyses finished"
                             + (f", {bad} failed" if bad else "") + f" ({todo[job.checkpoint_id][0]})")

            jobs = analyse(store, list(todo), config.figures, names, progress=progress, each=each)
            errors: dict[str, list[str]] = {cid: [] for cid in todo}
            for j in jobs:
                if j.status == "failed":
                    errors[j.checkpoint_id].append(j.error)
            for cid, (path, st, key, earlier) in todo.items():
                bad = errors[cid]
                if bad:
                    report.failed[str(path)] = "; ".join(bad)
                    store.record_watch_failure(key, st.st_size, st.st_mtime, cid, "; ".join(bad))
                else:
                    report.done.append(cid)
                    if earlier is not None:
                        store.clear_watch_failure(key)
    except Exception as e:
        report.error = f"{type(e).__name__}: {e}"
        progress(traceback.format_exc())
    report.seconds = time.time() - t0
    progress(report.line())
    return report


def _failed(store, report: PassReport, path: Path, st, key: str, cid: str | None, error: str, progress) -> None:
    report.failed[str(path)] = error
    fail_id = cid or f"unloadable-{file_digest(path)}"
    if _status(store, fail_id, CAPTURE, SUMMARY_VERSION) != "failed":
        store.log_failed(fail_id, CAPTURE, SUMMARY_VERSION, error)
    store.record_watch_failure(key, st.st_size, st.st_mtime, fail_id, error)
    progress(f"  failed: {error}")


class Watcher:
    """The detached actor: a loop of passes, and its status."""

    def __init__(self, config: dict):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        self.config = WatchConfig(**config)
        self.reports: list[PassReport] = []
        self.stopping = threading.Event()
        self.started = datetime.now(timezone.utc).isoformat(timespec="seconds")

    def loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.reports = (self.reports + [run_pass(self.config)])[-20:]
            except Exception:  # run_pass catches everything; this is the belt to its braces
                log.error("pass crashed:\n%s", traceback.format_exc())
            self.stopping.wait(self.config.every)

    def status(self) -> dict:
        last = self.reports[-1] if self.reports else None
        return {"started": self.started, "config": asdict(self.config), "passes": len(self.reports),
                "last": asdict(last) if last else None}

    def stop(self) -> None:
        self.stopping.set()


def deploy(config: WatchConfig):
    """Start the watcher as a detached named actor, replacing a running one (whose code may be old)."""
    old = existing()
    if old is not None:
        ray.kill(old, no_restart=True)
        for _ in range(50):  # the name is released asynchronously
            if existing() is None:
                break
            time.sleep(0.1)
    actor_cls = ray.remote(num_cpus=0, max_concurrency=4)(Watcher)
    actor = actor_cls.options(name=ACTOR_NAME, namespace=NAMESPACE, lifetime="detached",
                              max_restarts=-1, max_task_retries=0).remote(asdict(config.resolved()))
    actor.loop.remote()
    return actor


def existing():
    """The running watcher actor, or None."""
    try:
        return ray.get_actor(ACTOR_NAME, namespace=NAMESPACE)
    except ValueError:
        return None


def running(config: WatchConfig) -> list[str]:
    """The log's running rows, each as one line: who runs it, or that its owner is gone (a killed
    pass: the next pass redoes it)."""
    rows = Store(config.store).running()
    return [f"{r['checkpoint_id']} ({r['analysis']}) since "
            + (f"{r['started_at']:%Y-%m-%d %H:%M:%S} UTC: " if r["started_at"] else "an unknown time: ")
            + (f"running in {r['owner']}" if r["alive"] else
               f"orphaned, {r['owner'] or 'an older gatelens'} is gone; the next pass redoes it")
            for r in rows.iter_rows(named=True)]


def pending_and_failed(config: WatchConfig) -> tuple[list[str], dict[str, str]]:
    """Checkpoints not yet analysed at the current versions, and the store's failed ones."""
    store = Store(config.store)
    known = _known_ids(store)
    names = config.analyses or list(registry.checkpoint_analyses())
    pending = []
    for path in discover(config.storage):
        cid = known.get(str(path.resolve()))
        if cid is None or not all(_status(store, cid, n, v) == "finished" for n, v in
                                  [(CAPTURE, SUMMARY_VERSION)] + [(n, registry.get(n).version) for n in names]):
            pending.append(str(path))
    failed = {f"{path} (not retried until the file changes)": error
              for path, (_, _, error) in store.watch_failures().items()}
    if Path(store.path).is_file():
        df = store.query("SELECT checkpoint_id, analysis, error FROM analyses WHERE status = 'failed' ORDER BY finished_at")
        failed |= {f"{r['checkpoint_id']} ({r['analysis']})": r["error"] for r in df.iter_rows(named=True)}
    return pending, failed
