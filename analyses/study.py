"""A study's analyses: capture each run's final checkpoint, then run every analysis of every
checkpoint as parallel Ray tasks, with one writer.

    gatelens analyse --study table1 [--storage data/runs] [--store data/gatelens.duckdb]

1. The study's finished runs (``<storage>/<study>/runs/<run>/`` with ``epochs.parquet``) and
   each run's final checkpoint: the last one the trainer reported, the best-on-dev weights that
   were scored on test (its metrics say ``final``). Its store id is the capture's
   (``<arch>-<layers>x<hidden>-<sha256 prefix>``), so the same file is the same checkpoint in
   every study that holds it.
2. Checkpoints without a finished capture at the current summary version are captured
   (``cluster.capture``: sharded Ray tasks, one ingest), with a raw sample of a few
   utterances for the temporal trace.
3. For every (checkpoint, analysis): the driver reads the inputs with SQL (``load``), submits
   ``run`` as a Ray task (figures and numbers; tasks never open the store), and as each task
   finishes, the driver alone writes its rows (``analyses.common.record``). Tables 1-3 are one
   more task per study. An analysis already finished at its version with the same parameters
   and its figures on disk is not run again (``rerun`` forces it).

A failed analysis is logged failed in the store with its error, which names the checkpoint;
the others go on.
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from analyses import (cell_distributions, comparisons, memory_robustness, range_shares, responsibility,
                      temporal_trace)
from analyses.common import AnalysisError, Output, record

# In the paper's order. Each module: NAME, VERSION, a Params dataclass, load(), run().
MODULES = {m.NAME: m for m in (cell_distributions, range_shares, responsibility, temporal_trace, memory_robustness)}
PARAMS = {
    cell_distributions.NAME: cell_distributions.CellDistributionParams,
    range_shares.NAME: range_shares.RangeShareParams,
    responsibility.NAME: responsibility.ResponsibilityParams,
    temporal_trace.NAME: temporal_trace.TraceParams,
    memory_robustness.NAME: memory_robustness.RobustnessParams,
}


@dataclass
class StudyCheckpoint:
    study: str
    run: str
    run_dir: Path
    path: Path  # model.pt of the final checkpoint
    checkpoint_id: str
    arch: str
    layers: int
    hidden: int
    residual: bool


@dataclass
class Job:
    checkpoint_id: str
    analysis: str
    status: str = "pending"  # finished | skipped | failed
    error: str | None = None
    figures: list[str] = field(default_factory=list)
    seconds: float = 0.0


def final_checkpoint(run_dir: Path):
    """(model.pt path, loaded model) of the run's final report (best-on-dev weights scored on test)."""
    from cluster.models import load_checkpoint

    dirs = sorted(d for d in run_dir.glob("checkpoint_*") if (d / "model.pt").is_file())
    if not dirs:
        raise AnalysisError(f"{run_dir}: finished run without a checkpoint holding model.pt")
    path = dirs[-1] / "model.pt"
    model, meta = load_checkpoint(path)
    if not ((meta.get("extra") or {}).get("metrics") or {}).get("final"):
        raise AnalysisError(f"{path}: the run's last checkpoint is not its final (test) report")
    return path, model


def study_checkpoints(storage, study: str) -> list[StudyCheckpoint]:
    """The final checkpoints of a study's finished runs, in run-name order."""
    from cluster.capture import checkpoint_id_for, model_facts
    from cluster.grid import study_dir
    from cluster.train import EPOCHS_FILE

    runs = study_dir(storage, study) / "runs"
    out = []
    for run_dir in sorted(runs.glob("*")) if runs.is_dir() else []:
        if not (run_dir / EPOCHS_FILE).is_file():
            continue  # unfinished
        path, model = final_checkpoint(run_dir)  # loaded once: its metrics and its facts
        facts = model_facts(model)
        out.append(StudyCheckpoint(study, run_dir.name, run_dir, path, checkpoint_id_for(path, facts), facts["arch"],
                                   facts["layers"], facts["hidden"], facts["residual"]))
    return out


def _log_row(store, checkpoint_id: str, analysis: str, version: int) -> dict | None:
    if not store.path.is_file():
        return None
    df = store.query("SELECT status, params, figure_paths FROM analyses WHERE checkpoint_id = ? AND analysis = ? "
                     "AND analysis_version = ?", [checkpoint_id, analysis, version])
    return df.row(0, named=True) if df.height else None


def ensure_captured(store, ck: StudyCheckpoint, utterances: int = 500, sample: int = 3, rules: tuple[str, ...] = (),
                    corpus: str | None = None, progress=print) -> bool:
    """Capture the checkpoint unless the store holds a finished capture of it. True if it ran."""
    from dataclasses import asdict

    from cluster.capture import CaptureConfig, capture
    from cluster.summaries import SUMMARY_VERSION

    row = _log_row(store, ck.checkpoint_id, "capture", SUMMARY_VERSION)
    if row and row["status"] == "finished":
        return False
    config = CaptureConfig(checkpoint=str(ck.path), corpus=corpus, utterances=utterances, rules=tuple(rules),
                           sample=sample, checkpoint_id=ck.checkpoint_id)
    progress(f"capturing {ck.run} ({ck.checkpoint_id}) ...")
    store.log_started(ck.checkpoint_id, "capture", SUMMARY_VERSION, params=asdict(config))
    try:
        result = capture(config)
        store.ingest_analysis(ck.checkpoint_id, "capture", SUMMARY_VERSION, result.frames, params=result.params,
                              sample=result.sample, checkpoint={**result.checkpoint_row, "run_id": ck.run,
                                                                "extra": {"study": ck.study, "run_dir": str(ck.run_dir)}})
    except Exception as e:
        store.log_failed(ck.checkpoint_id, "capture", SUMMARY_VERSION, f"{ck.path}: {type(e).__name__}: {e}")
        raise
    return True


def run_analysis(name: str, inputs: dict, params: dict, fig_dir: str) -> Output:
    """The Ray task: one analysis of one checkpoint (or of a study, for Tables 1-3)."""
    import torch

    torch.set_num_threads(1)
    if name == comparisons.NAME:
        return comparisons.run(inputs, comparisons.ComparisonParams.from_dict(params), fig_dir)
    return MODULES[name].run(inputs, PARAMS[name].from_dict(params), fig_dir)


def _up_to_date(store, checkpoint_id: str, analysis: str, version: int, params: dict) -> bool:
    """Finished at this version, with these parameters, its figures on disk, and started after
    the checkpoint's latest capture finished (a re-capture makes every analysis of it stale)."""
    if not store.path.is_file():
        return False
    df = store.query("SELECT a.status, a.params, a.figure_paths, a.started_at, "
                     "(SELECT max(finished_at) FROM analyses c WHERE c.checkpoint_id = a.checkpoint_id "
                     " AND c.analysis = 'capture') AS captured_at "
                     "FROM analyses a WHERE a.checkpoint_id = ? AND a.analysis = ? AND a.analysis_version = ?",
                     [checkpoint_id, analysis, version])
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


def analyse(store, checkpoint_ids: list[str], fig_dir, analyses: list[str] | None = None,
            params: dict[str, dict] | None = None, studies: list[tuple[str, str]] = (), rerun: bool = False,
            progress=print) -> list[Job]:
    """Run the analyses of the stored checkpoints (and Tables 1-3 of ``studies``: [(storage,
    study)]) as parallel Ray tasks; the driver writes every result. Returns one Job per task."""
    import ray

    from cluster.runtime import ensure_ray

    names = list(analyses or MODULES)
    unknown = set(names) - set(MODULES) - {comparisons.NAME}
    if unknown:
        raise AnalysisError(f"unknown analyses {sorted(unknown)}; known: {', '.join([*MODULES, comparisons.NAME])}")
    params = params or {}
    fig_dir = str(Path(fig_dir).resolve())
    ensure_ray()
    task = ray.remote(num_cpus=1, max_retries=0)(run_analysis)
    pending, jobs = {}, []

    def submit(cid, name, version, p, load):
        job = Job(cid, name)
        jobs.append(job)
        if not rerun and name != comparisons.NAME and _up_to_date(store, cid, name, version, p):
            job.status = "skipped"
            job.figures = _log_row(store, cid, name, version)["figure_paths"]
            return
        try:
            inputs = load()
            store.log_started(cid, name, version, params=p)
        except Exception as e:
            job.status, job.error = "failed", f"{name} of {cid}: {_cause(e)}"
            store.log_failed(cid, name, version, job.error)
            return
        pending[task.remote(name, inputs, p, fig_dir)] = (job, version, time.perf_counter())

    for name in names:
        if name == comparisons.NAME:
            continue
        mod, cls = MODULES[name], PARAMS[name]
        p = cls.from_dict(params.get(name)).to_dict()
        for cid in checkpoint_ids:
            submit(cid, name, mod.VERSION, p, lambda mod=mod, cid=cid, p=p, cls=cls: mod.load(store, cid, cls.from_dict(p)))
    if comparisons.NAME in names or analyses is None:
        for storage, study in studies:
            p = comparisons.ComparisonParams.from_dict(params.get(comparisons.NAME)).to_dict()
            submit(comparisons.study_id(study), comparisons.NAME, comparisons.VERSION, p | {"storage": str(storage)},
                   lambda storage=storage, study=study: comparisons.load_study(storage, study))
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        job, version, t0 = pending.pop(done[0])
        job.seconds = time.perf_counter() - t0
        try:
            out = ray.get(done[0])
            record(store, out)
            job.status, job.figures = "finished", [f.path for f in out.figures]
        except Exception as e:
            job.status, job.error = "failed", f"{job.analysis} of {job.checkpoint_id}: {_cause(e)}"
            store.log_failed(job.checkpoint_id, job.analysis, version, job.error)
            if not isinstance(getattr(e, "cause", e), AnalysisError):
                progress(traceback.format_exc(limit=3))
        progress(f"  {job.analysis} of {job.checkpoint_id}: {job.status} ({job.seconds:.1f} s)"
                 + (f": {job.error}" if job.error else ""))
    return jobs


def analyse_study(store, storage, studies: list[str], out_dir, analyses: list[str] | None = None,
                  params: dict[str, dict] | None = None, capture: dict | None = None, rerun: bool = False,
                  progress=print) -> tuple[list[StudyCheckpoint], list[Job]]:
    """Capture what is missing, then run every analysis of the studies' final checkpoints."""
    cks = [ck for study in studies for ck in study_checkpoints(storage, study)]
    if not cks:
        progress(f"no finished runs for {', '.join(studies)} under {Path(storage).resolve()}")
    seen = {}
    for ck in cks:
        if ck.checkpoint_id not in seen:
            ensure_captured(store, ck, progress=progress, **(capture or {}))
            seen[ck.checkpoint_id] = ck
    jobs = analyse(store, list(seen), Path(out_dir) / "figures", analyses, params,
                   [(storage, s) for s in studies], rerun, progress)
    return cks, jobs
