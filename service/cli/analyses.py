"""``gatelens analyse``, ``claims``, ``report``: a study's analyses, the paper's findings, the page.

Shared options (``parsers._add_study_options``): ``--study`` (repeatable or comma-separated; the
claims about lazy update and residual shortcuts need table2 / table3), ``--storage``, ``--store``,
``--out``, ``--set ANALYSIS.KEY=VALUE`` and the capture options.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from analyses import registry
from analyses.claims import evaluate, format_claims, gather_studies, to_json
from analyses.common import AnalysisError
from cluster.settings import parse_assignment
from service.cli.console import quiet_ray
from service.report import write_report
from service.store import Store
from service.study import analyse_study


def parse_sets(items: list[str]) -> dict[str, dict]:
    """``--set analysis.key=value`` -> {analysis: {key: value}}, typed by the parameter's field."""
    out: dict[str, dict] = {}
    for item in items:
        key, sep, _ = item.partition("=")
        analysis, dot, _ = key.partition(".")
        if not sep or not dot:
            raise AnalysisError(f"--set {item!r}: expected ANALYSIS.KEY=VALUE, ANALYSIS one of "
                                f"{', '.join(registry.all_analyses())}")
        a = registry.get(analysis)
        name, value = parse_assignment(a.params, item[len(analysis) + 1:], f"--set {item!r}")
        out.setdefault(analysis, {})[name] = value
    return out


@dataclass
class StudyArgs:
    store: Store
    studies: list[str]
    out: Path
    params: dict[str, dict]
    capture: dict


def study_args(args: argparse.Namespace) -> StudyArgs:
    studies = [s for item in args.study for s in item.split(",") if s]
    if not studies:
        raise AnalysisError("give --study (e.g. --study table1)")
    out = Path(args.out) if args.out else Path("data/reports") / "+".join(studies)
    capture = {"utterances": args.utterances, "sample": args.sample, "rules": tuple(args.rule), "corpus": args.corpus,
               "allow_pipes": args.allow_pipes}
    return StudyArgs(Store(args.store), studies, out, parse_sets(args.set), capture)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_analyse(args: argparse.Namespace) -> int:
    if args.list:
        for a in registry.all_analyses().values():
            figs = ", ".join(f.paper for f in a.figures)
            print(f"{a.name:20s} v{a.version}  {a.scope:10s}  {figs}")
        return 0
    s = study_args(args)
    names = [n for item in args.analyses for n in item.split(",") if n] or None
    for n in names or []:
        registry.get(n)
    quiet_ray(s.out / "logs", "analyse")
    runs, jobs = analyse_study(s.store, args.storage, s.studies, s.out, analyses=names, params=s.params,
                               capture=s.capture, rerun=args.rerun, progress=_progress)
    failed = [j for j in jobs if j.status == "failed"]
    print(f"{len(runs)} runs, {len(jobs)} analyses: "
          + ", ".join(f"{sum(j.status == st for j in jobs)} {st}" for st in ("finished", "skipped", "failed")))
    for j in failed:
        print(f"  failed: {j.error}", file=sys.stderr)
    print(f"figures under {(s.out / 'figures').resolve()}; store {s.store.path}")
    return 1 if failed else 0


def cmd_claims(args: argparse.Namespace) -> int:
    s = study_args(args)
    claims = evaluate(gather_studies(s.store, args.storage, s.studies))
    print(to_json(claims) if args.format == "json" else format_claims(claims))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    s = study_args(args)
    if not args.no_analyse:
        quiet_ray(s.out / "logs", "report")
    path, claims = write_report(s.store, args.storage, s.studies, s.out, analyse=not args.no_analyse, params=s.params,
                        capture=s.capture, rerun=args.rerun, progress=_progress)
    if args.claims:
        print(format_claims(claims))
    print(f"report: {path.resolve()}  (open file://{path.resolve()})")
    return 0
