"""The analyses driver: capture each run's final checkpoint, then run every registered analysis of
every checkpoint (and of every study) as parallel Ray tasks, with one writer.

    gatelens analyse --study table1 [--storage data/runs] [--store data/gatelens.duckdb]

1. The study's finished runs (``cluster.runs.iter_runs``) and each run's final checkpoint: the
   best-on-dev weights that were scored on test. Its store id is the capture's
   (``<arch>-<layers>x<hidden>-<sha256 prefix>``), so the same file is the same checkpoint in
   every study that holds it.
2. Checkpoints without a finished capture at the current summary version are captured
   (``cluster.capture``: sharded Ray tasks), with a raw sample of a few utterances for the
   temporal trace, and ingested in one transaction.
3. For every (checkpoint, analysis) of the registry (``analyses.registry``): the driver reads the
   inputs (``load``), submits ``run`` as a Ray task (figures and numbers; tasks never open the
   store), and as each task finishes, the driver alone writes its rows, summary and log entry in
   one transaction (``Store.ingest_output``). Study-scope analyses (Tables 1-3) are one task per
   study. A checkpoint's analyses that declare the same ``Analysis.shares`` (the two memory
   analyses: their noisy passes) are one task, each still settled and written on its own. An analysis already finished at its version with the same parameters and its figures
   on disk is not run again (``rerun`` forces it).

A failed analysis is logged failed in the store with its error, which names the checkpoint;
the others go on.
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import ray

from analyses import registry
from analyses.common import CHECKPOINT, AnalysisError, StudyRef
from cluster.capture import CaptureConfig, capture, plan_capture
from cluster.errors import InputError
from cluster.runs import RunDir, iter_runs
from cluster.runtime import ensure_ray
from cluster.summaries import SUMMARY_VERSION
from cluster.tables import CAPTURE
from service.store import Store


@dataclass
class Job:
    checkpoint_id: str
    analysis: str
    status: str = "pending"  # finished | skipped | failed
    error: str | None = None
    figures: list[str] = field(default_factory=list)
    seconds: float = 0.0


def study_runs(storage, studies: list[str]) -> list[RunDir]:
    """The finished runs of the studies, in study and run order."""
    return [run for study in studies for run in iter_runs(storage, study)]


def _log_row(store: Store, checkpoint_id: str, analysis: str, version: int) -> dict | None:
    if not store.path.is_file():
        return None
    df = store.query("SELECT status, params, figure_paths FROM analyses WHERE checkpoint_id = ? AND analysis = ? "
                     "AND analysis_version = ?", [checkpoint_id, analysis, version])
    return df.row(0, named=True) if df.height else None


def ensure_captured(store: Store, run: RunDir, path: Path, checkpoint_id: str, utterances: int = 500,
                    sample: int = 3, rules: tuple[str, ...] = (), corpus: str | None = None,
                    allow_pipes: bool = False, progress=print) -> bool:
    """Capture a checkpoint file of ``run`` unless the store holds a finished capture of it at the
    current summary version. True if it ran."""
    row = _log_row(store, checkpoint_id, CAPTURE, SUMMARY_VERSION)
    if row and row["status"] == "finished":
        return False
    config = CaptureConfig(checkpoint=str(path), corpus=corpus, utterances=utterances, rules=tuple(rules),
                           sample=sample, checkpoint_id=checkpoint_id, allow_pipes=allow_pipes)
    progress(f"capturing {run.name} ({checkpoint_id}) ...")
    try:
        plan = plan_capture(config)  # a request refused here has no finished capture to spoil (returned above)
    except InputError as e:
        store.log_failed(checkpoint_id, CAPTURE, SUMMARY_VERSION, f"{path}: {e}")
        raise
    store.log_started(checkpoint_id, CAPTURE, SUMMARY_VERSION, params=asdict(config))
    try:
        result = capture(config, plan=plan)
        store.ingest(checkpoint_id, CAPTURE, SUMMARY_VERSION, result.frames, params=result.params,
                     sample=result.sample, checkpoint={**result.checkpoint_row, "run_id": run.run_id,
                                                       "extra": {"study": run.study, "run_dir": str(run.path)}})
    except Exception as e:
        store.log_failed(checkpoint_id, CAPTURE, SUMMARY_VERSION, f"{path}: {type(e).__name__}: {e}")
        raise
    return True


def _up_to_date(store: Store, checkpoint_id: str, analysis: str, version: int, params: dict) -> bool:
    """Finished at this version, with these parameters, its figures on disk, and started after
    the checkpoint's latest capture finished (a re-capture makes every analysis of it stale)."""
    if not store.path.is_file():
        return False
    df = store.query("SELECT a.status, a.params, a.figure_paths, a.started_at, "
                     "(SELECT max(finished_at) FROM analyses c WHERE c.checkpoint_id = a.checkpoint_id "
                     " AND c.analysis = ?) AS captured_at "
                     "FROM analyses a WHERE a.checkpoint_id = ? AND a.analysis = ? AND a.analysis_version = ?",
                     [CAPTURE, checkpoint_id, analysis, version])
    if df.height == 0:
        return False
    row = df.row(0, named=True)
    return bool(row["status"] == "finished" and row["params"] is not None
                and json.loads(row["params"]) == json.loads(json.dumps(params))
                and row["figure_paths"] and all(Path(p).is_file() for p in row["figure_paths"])
                and (row["captured_at"] is None or row["started_at"] >= row["captured_at"]))


def _cause(e: BaseException) -> str:
    cause = getattr(e, "cause", None) or e  # RayTaskError carries the task's own exception
    return f"{type(cause).__name__}: {cause}"


def analyse(store: Store, checkpoint_ids: list[str], fig_dir, analyses: list[str] | None = None,
            params: dict[str, dict] | None = None, studies: list[tuple[str, str]] = (), rerun: bool = False,
            progress=print, each=None) -> list[Job]:
    """Run the registered analyses of the stored checkpoints (and the study-scope ones of
    ``studies``: [(storage, study)]) as parallel Ray tasks; the driver writes every result.
    Returns one Job per task. ``each(job)`` is called as each job is settled (skipped, written or
    failed), in place of the line per analysis."""
    reg = registry.all_analyses()
    names = list(analyses or reg)
    for n in names:
        registry.get(n)  # unknown names are refused before anything runs
    params = params or {}
    fig_dir = str(Path(fig_dir).resolve())
    ensure_ray()
    task = ray.remote(num_cpus=1, max_retries=0)(registry.run_analysis)
    group_task = ray.remote(num_cpus=1, max_retries=0)(registry.run_analyses)
    cluster_cpus = int(ray.cluster_resources().get("CPU", 1))  # a task claiming more would never start
    pending, jobs = {}, []  # task -> [(job, version, submitted)]: a shared task settles several jobs
    groups: dict[tuple[str, str], list] = {}  # (checkpoint, Analysis.shares) -> [(job, version, name, inputs, p)]

    def submit(subject_id, a, p, load, check_fresh):
        job = Job(subject_id, a.name)
        jobs.append(job)
        if not rerun and check_fresh and _up_to_date(store, subject_id, a.name, a.version, p):
            job.status = "skipped"
            job.figures = _log_row(store, subject_id, a.name, a.version)["figure_paths"]
            if each is not None:
                each(job)
            return
        try:
            inputs = load()
            store.log_started(subject_id, a.name, a.version, params=p)
        except Exception as e:
            job.status, job.error = "failed", f"{a.name} of {subject_id}: {_cause(e)}"
            store.log_failed(subject_id, a.name, a.version, job.error)
            if each is not None:
                each(job)
            return
        if a.shares and a.scope == CHECKPOINT:
            groups.setdefault((subject_id, a.shares), []).append((job, a.version, a.name, inputs, p))
        else:
            cpus = max(1, min(a.cpus_for(inputs), cluster_cpus))  # never more than there are
            pending[task.options(num_cpus=cpus).remote(a.name, inputs, p, fig_dir, cpus)] = \
                [(job, a.version, time.perf_counter())]

    for name in names:
        a = reg[name]
        if a.scope == CHECKPOINT:
            p = a.params.from_dict(params.get(name)).to_dict()
            for cid in checkpoint_ids:
                submit(cid, a, p, lambda a=a, cid=cid, p=p: a.load(store, cid, a.params.from_dict(p)), True)
        else:
            for storage, study in studies:
                ref = StudyRef(str(storage), study)
                p = a.params.from_dict(params.get(name)).to_dict() | {"storage": str(storage)}
                # study results come from the runs, which change without the store knowing: always rerun
                submit(ref.subject_id, a, p, lambda a=a, ref=ref, p=p: a.load(store, ref, a.params.from_dict(p)),
                       False)
    for members in groups.values():
        now = time.perf_counter()
        ref = (task.remote(members[0][2], *members[0][3:], fig_dir) if len(members) == 1 else
               group_task.remote([(name, inputs, p) for _, _, name, inputs, p in members], fig_dir))
        pending[ref] = [(job, version, now) for job, version, *_ in members]
    left = {}  # analysis -> its tasks still running: a progress line as each analysis finishes everywhere
    for members in pending.values():
        for job, _, _ in members:
            left[job.analysis] = left.get(job.analysis, 0) + 1
    started = time.perf_counter()
    settled: dict[str, dict[str, int]] = {}  # analysis -> status -> jobs settled by its tasks
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        members = pending.pop(done[0])
        try:
            results = ray.get(done[0])
            results = results if isinstance(results, list) else [results]
        except Exception as e:  # the task itself failed: every job it held
            results = [e] * len(members)
        for (job, version, t0), out in zip(members, results):
            job.seconds = time.perf_counter() - t0
            try:
                if isinstance(out, Exception):
                    raise out
                store.ingest_output(out)
                job.status, job.figures = "finished", [f.path for f in out.figures]
            except Exception as e:
                job.status, job.error = "failed", f"{job.analysis} of {job.checkpoint_id}: {_cause(e)}"
                store.log_failed(job.checkpoint_id, job.analysis, version, job.error)
                if not isinstance(getattr(e, "cause", e), AnalysisError):
                    progress(getattr(e, "remote_traceback", None) or traceback.format_exc(limit=3))
                if each is None:
                    progress(f"  failed: {job.error}")
            if each is not None:
                each(job)
            left[job.analysis] -= 1
            settled.setdefault(job.analysis, {}).setdefault(job.status, 0)
            settled[job.analysis][job.status] += 1
            if not left[job.analysis] and each is None:  # with ``each``, its caller says what finished
                counts = ", ".join(f"{n} {st}" for st, n in sorted(settled[job.analysis].items(),
                                                                    key=lambda kv: kv[0] != "finished"))
                progress(f"  {job.analysis}: {counts} after {time.perf_counter() - started:.0f} s")
    return jobs


def analyse_study(store: Store, storage, studies: list[str], out_dir, analyses: list[str] | None = None,
                  params: dict[str, dict] | None = None, capture: dict | None = None, rerun: bool = False,
                  progress=print) -> tuple[list[RunDir], list[Job]]:
    """Capture what is missing, then run every analysis of the studies' final checkpoints."""
    runs = study_runs(storage, studies)
    if not runs:
        progress(f"no finished runs for {', '.join(studies)} under {Path(storage).resolve()}")
    seen = {}
    for run in runs:
        final = run.final_checkpoint
        cid = final.checkpoint_id
        if cid not in seen:
            ensure_captured(store, run, final.path, cid, progress=progress, **(capture or {}))
            seen[cid] = run
    jobs = analyse(store, list(seen), Path(out_dir) / "figures", analyses, params,
                   [(storage, s) for s in studies], rerun, progress)
    return runs, jobs
