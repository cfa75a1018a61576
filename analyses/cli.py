"""Command lines of the analyses: ``gatelens analyse``, ``gatelens claims``, ``gatelens report``.

Wired into ``service/cli.py`` with ``add_parsers(sub)``. Options shared by the three:

    --study NAME          repeatable or comma-separated (claims about lazy update and residual
                          shortcuts need table2 / table3)
    --storage DIR         where the studies' runs are (default data/runs)
    --store FILE          the store (default $GATELENS_STORE or data/gatelens.duckdb)
    --out DIR             figures and the report (default data/reports/<study>)
    --set ANALYSIS.KEY=V  an analysis parameter, e.g. --set memory_robustness.noise=babble
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path


def add_study_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", action="append", default=[], help="study name (repeatable, or comma-separated)")
    p.add_argument("--storage", default="data/runs", help="where the runs are (default: %(default)s)")
    p.add_argument("--store", help="store file (default: $GATELENS_STORE or data/gatelens.duckdb)")
    p.add_argument("--out", help="figures and report folder (default: data/reports/<study>)")
    p.add_argument("--set", action="append", default=[], metavar="ANALYSIS.KEY=VALUE",
                   help="analysis parameter, e.g. --set temporal_trace.utterances=5 --set memory_robustness.snr_db=5")
    p.add_argument("--utterances", type=int, default=500, help="utterances a capture summarises (default: %(default)s)")
    p.add_argument("--sample", type=int, default=3,
                   help="utterances a capture keeps whole, for the temporal trace (default: %(default)s)")
    p.add_argument("--rule", action="append", default=[], help="irregularity rule for captures (default: the paper's)")
    p.add_argument("--corpus", help="corpus for captures (default: the one each checkpoint was trained on)")
    p.add_argument("--rerun", action="store_true", help="run analyses again even when up to date")


def parse_sets(items: list[str]) -> dict[str, dict]:
    """``--set analysis.key=value`` -> {analysis: {key: value}}, typed by the parameter's field."""
    from analyses.comparisons import NAME as COMPARISONS, ComparisonParams
    from analyses.common import AnalysisError
    from analyses.study import PARAMS

    classes = PARAMS | {COMPARISONS: ComparisonParams}
    out: dict[str, dict] = {}
    for item in items:
        key, sep, value = item.partition("=")
        analysis, dot, name = key.partition(".")
        if not sep or not dot or analysis not in classes:
            raise AnalysisError(f"--set {item!r}: expected ANALYSIS.KEY=VALUE, ANALYSIS one of {', '.join(classes)}")
        types = {f.name: str(f.type) for f in fields(classes[analysis])}
        if name not in types:
            raise AnalysisError(f"--set {item!r}: {analysis} has no parameter {name!r} (it has {', '.join(types)})")
        t = types[name]
        if value.lower() in ("none", "null") and "None" in t:
            v = None
        elif t.startswith("int"):
            v = int(value)
        elif t.startswith("float"):
            v = float(value)
        elif t.startswith("bool"):
            v = value.lower() in ("1", "true", "yes", "on")
        else:
            v = value
        out.setdefault(analysis, {})[name] = v
    return out


def open_study(args):
    """(store, studies, out dir, analysis params, capture options) from the shared options."""
    from analyses.common import AnalysisError
    from service.store import Store

    studies = [s for item in args.study for s in item.split(",") if s]
    if not studies:
        raise AnalysisError("give --study (e.g. --study table1)")
    store = Store(args.store) if args.store else Store()
    out = Path(args.out) if args.out else Path("data/reports") / "+".join(studies)
    capture = {"utterances": args.utterances, "sample": args.sample, "rules": tuple(args.rule), "corpus": args.corpus}
    return store, studies, out, parse_sets(args.set), capture


def input_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the input's fault: reported in one line naming the file, exit status 2."""
    from analyses.common import AnalysisError
    from cluster.data.kaldi import CorpusError
    from cluster.models import CheckpointError
    from service.store import StoreError

    return AnalysisError, StoreError, CorpusError, CheckpointError, FileNotFoundError


def cmd_analyse(args: argparse.Namespace) -> int:
    from analyses.study import analyse_study

    try:
        store, studies, out, params, capture = open_study(args)
        names = [n for item in args.analyses for n in item.split(",")] if args.analyses else None
        cks, jobs = analyse_study(store, args.storage, studies, out, analyses=names, params=params, capture=capture,
                                  rerun=args.rerun, progress=lambda m: print(m, file=sys.stderr, flush=True))
    except input_errors() as e:
        print(f"gatelens analyse: {e}", file=sys.stderr)
        return 2
    failed = [j for j in jobs if j.status == "failed"]
    print(f"{len(cks)} checkpoints, {len(jobs)} analyses: "
          + ", ".join(f"{sum(j.status == s for j in jobs)} {s}" for s in ("finished", "skipped", "failed")))
    for j in failed:
        print(f"  failed: {j.error}", file=sys.stderr)
    print(f"figures under {(Path(out) / 'figures').resolve()}; store {store.path}")
    return 1 if failed else 0


def cmd_claims(args: argparse.Namespace) -> int:
    from analyses.claims import evaluate, format_claims, gather_studies, to_json

    try:
        store, studies, _, _, _ = open_study(args)
        claims = evaluate(gather_studies(store, args.storage, studies))
    except input_errors() as e:
        print(f"gatelens claims: {e}", file=sys.stderr)
        return 2
    print(to_json(claims) if args.format == "json" else format_claims(claims))
    return 0


def add_parsers(subparsers) -> None:
    """Add ``analyse``, ``claims`` and ``report`` to the gatelens command line."""
    from service.report import add_report_parser

    p = subparsers.add_parser("analyse", help="run a study's analyses (the paper's figures) as parallel Ray tasks",
                              description="Capture each finished run's final checkpoint if the store lacks it, then "
                                          "run every analysis (Figs. 1-8, 10; Tables 1-3) as Ray tasks; the driver "
                                          "writes the rows to the store.")
    add_study_options(p)
    p.add_argument("--analyses", action="append", default=[],
                   help="only these (comma-separated): cell_distributions, range_shares, responsibility, "
                        "temporal_trace, memory_robustness, comparisons (default: all)")
    p.set_defaults(func=cmd_analyse)

    p = subparsers.add_parser("claims", help="check the paper's findings against the stored numbers",
                              description="Print each of the paper's claims with the numbers measured on the study's "
                                          "checkpoints and trial results, and a verdict: holds / does not hold / "
                                          "not measured.")
    add_study_options(p)
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=cmd_claims)

    add_report_parser(subparsers)
