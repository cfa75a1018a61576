"""The registry of analyses: every module of this package that declares ``ANALYSIS``.

The study driver, the watcher, the report and the store's schema all read it, so adding an
analysis is one new module and nothing else: its figures appear in the report, its tables in
the store, its name in ``gatelens analyse --analyses``.
"""

from __future__ import annotations

import importlib
import pkgutil
import traceback
from functools import lru_cache

import torch

import analyses
from analyses.common import CHECKPOINT, STUDY, Analysis, AnalysisError, Output, sharing, task_cpus_set


@lru_cache(maxsize=1)
def _discover() -> dict[str, Analysis]:
    found = []
    for info in pkgutil.iter_modules(analyses.__path__):
        module = importlib.import_module(f"analyses.{info.name}")
        a = getattr(module, "ANALYSIS", None)
        if isinstance(a, Analysis):
            found.append(a)
    found.sort(key=lambda a: (a.order, a.name))
    names = [a.name for a in found]
    if len(set(names)) != len(names):
        raise RuntimeError(f"two analyses share a name: {names}")
    return {a.name: a for a in found}


def all_analyses() -> dict[str, Analysis]:
    """Every analysis, in the paper's order."""
    return dict(_discover())


def checkpoint_analyses() -> dict[str, Analysis]:
    return {n: a for n, a in _discover().items() if a.scope == CHECKPOINT}


def study_analyses() -> dict[str, Analysis]:
    return {n: a for n, a in _discover().items() if a.scope == STUDY}


def get(name: str) -> Analysis:
    reg = _discover()
    if name not in reg:
        raise AnalysisError(f"unknown analysis {name!r}; known: {', '.join(reg)}")
    return reg[name]


def owned_tables():
    """(table, owning analysis) for every table an analysis declares."""
    return [(t, a.name) for a in _discover().values() for t in a.tables]


def run_analysis(name: str, inputs: dict, params: dict, fig_dir: str, cpus: int = 1) -> Output:
    """What a Ray task runs: one analysis of one checkpoint (or one study), figures and numbers.
    ``cpus``: what the task holds (``Analysis.cpus``, at most the cluster's): one torch thread,
    and the analysis may run that many threads of its own (``common.task_cpus``)."""
    torch.set_num_threads(1)
    a = get(name)
    with task_cpus_set(cpus):
        return a.run(inputs, a.params.from_dict(params), fig_dir)


def run_analyses(jobs: list[tuple[str, dict, dict]], fig_dir: str) -> list[Output | Exception]:
    """What one Ray task runs for analyses that share work (``Analysis.shares``): each of
    ``jobs`` (name, inputs, params) in turn, what they share computed once. One's failure is its
    own: returned in its place (with the traceback as ``remote_traceback``), the others still run."""
    out: list[Output | Exception] = []
    with sharing():
        for name, inputs, params in jobs:
            try:
                out.append(run_analysis(name, inputs, params, fig_dir))
            except Exception as e:
                e.remote_traceback = traceback.format_exc(limit=3)
                out.append(e)
    return out
