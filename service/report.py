"""``gatelens report``: one static HTML page per study, readable in a browser with no server.

    gatelens report --study table1 [--storage data/runs] [--store ...] [--out data/reports/table1]

The page holds: the paper's tables (1-3) from the trial results, the claims with their numbers
and verdicts, every analysis figure of the study's final checkpoints grouped by paper figure,
the failures the analyses log holds, and the run stamps (each run's config, package versions
and git revision; the report's own versions and revision). Before writing, it runs what is
missing (captures and analyses; ``--no-analyse`` only draws what the store has).

Figures are PNG files beside the page (``figures/...``, relative links), copied there when
the store logged them elsewhere; no script, font or style is fetched from anywhere. A small
inline script marks each figure that loaded (``data-loaded``) and counts them on the body
(``data-figures-loaded`` / ``data-figures-total``), for the reader and for the headless-browser test.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import shutil
import sys
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# Paper figure -> (section title, the analysis and file that draws it), in the paper's order.
SECTIONS = [
    ("Figs. 1-2", "Cell value distributions: 50 random units per layer (LSTM clipped to +-10)",
     "cell_distributions", "fig01-02_cell_distributions.png"),
    ("Fig. 3", "Range shares: LSTM c in (-2, 2), GRU c outside (-0.7, 0.7)", "range_shares", "fig03_range_shares.png"),
    ("Figs. 4-5", "Units with responsibility above the threshold, per phone and layer", "responsibility",
     "fig04-05_responsible_units.png"),
    ("Fig. 6", "Single-phone units and their responsibility profiles", "responsibility", "fig06_single_phone_units.png"),
    ("Figs. 7, 10", "Temporal traces (t-SNE of the cell vectors of one utterance)", "temporal_trace",
     "fig07-10_temporal_trace.png"),
    ("Fig. 8", "Memory robustness: |c noisy - c clean| after an inserted noise segment", "memory_robustness",
     "fig08_memory_robustness.png"),
]
PACKAGES = ("gatelens", "torch", "ray", "duckdb", "polars", "numpy", "scipy", "scikit-learn", "matplotlib")

_CSS = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; } h3 { margin-bottom: 0.3em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; } caption { text-align: left; font-weight: bold; padding: 0.3em 0; }
td, th { border: 1px solid #bbb; padding: 0.2em 0.6em; text-align: right; } th { background: #f2f2f2; }
td.l, th.l { text-align: left; }
figure { margin: 0.5em 0 1.5em; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #555; }
.verdict { font-weight: bold; padding: 0 0.4em; border-radius: 3px; }
.holds { background: #d8f0d8; } .does-not-hold { background: #f6d6d6; } .not-measured { background: #e8e8e8; }
.claim { margin-bottom: 1em; } .claim ul { margin: 0.2em 0; font-size: 0.9em; } .rule { font-size: 0.85em; color: #555; }
pre { background: #f7f7f7; padding: 0.5em; overflow-x: auto; font-size: 0.8em; } .error { color: #a00; }
img.missing { outline: 3px solid #c00; }
"""
_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.querySelectorAll("img.figure"), ok = 0;
  imgs.forEach(function (img) {
    if (img.complete && img.naturalWidth > 0) { img.dataset.loaded = "1"; ok++; }
    else { img.dataset.loaded = "0"; img.classList.add("missing"); }
  });
  document.body.dataset.figuresLoaded = String(ok);
  document.body.dataset.figuresTotal = String(imgs.length);
});
"""


def _e(s) -> str:
    return html.escape(str(s))


def _versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _table_html(t) -> str:
    rows = [f"<caption>{_e(t.name)}: {_e(t.title)}</caption>"]
    for header in t.header:
        rows.append("<tr>" + "".join(f'<th colspan="{span}">{_e(text)}</th>' for text, span in header if span) + "</tr>")
    for r in t.rows:
        rows.append("<tr>" + "".join(f'<td class="{"l" if k == 0 else ""}">{_e(c)}</td>' for k, c in enumerate(r)) + "</tr>")
    return "<table>" + "".join(rows) + "</table>"


def _claim_html(c) -> str:
    cls = c.verdict.replace(" ", "-")
    items = "".join(f"<li>{_e(n)}</li>" for n in c.numbers)
    return (f'<div class="claim" data-claim="{_e(c.key)}"><span class="verdict {cls}">{_e(c.verdict)}</span> '
            f'{_e(c.statement)}{f" <small>({_e(c.summary)})</small>" if c.summary else ""}'
            f'<div class="rule">rule: {_e(c.rule)}</div>{f"<ul>{items}</ul>" if items else ""}</div>')


def _place(src: str, out_dir: Path) -> str | None:
    """A figure's path relative to the page, copying it beside the page when it lies elsewhere."""
    p = Path(src)
    if not p.is_file():
        return None
    try:
        return p.resolve().relative_to(out_dir.resolve()).as_posix()
    except ValueError:
        dest = out_dir / "figures" / p.parent.name / p.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, dest)
        return dest.relative_to(out_dir).as_posix()


def build_html(studies: list[str], checkpoints: list, log: pl.DataFrame, tables: list, claims: list,
               runs: list[dict], out_dir: Path, store_path: Path, study_figures: list[str]) -> tuple[str, int]:
    """The page, and the number of figures on it."""
    import polars as pl

    from cluster.train import git_revision

    name = ", ".join(studies)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"<h1>gatelens report: {_e(name)}</h1>",
             f"<p>{len(checkpoints)} final checkpoints of {len(runs)} finished runs; store <code>{_e(store_path)}</code>; "
             f"written {now}. After Tang, Shi &amp; Wang, <i>Visualization Analysis for Recurrent Networks</i>.</p>"]
    n_figures = 0

    def img(path: str | None, caption: str) -> str:
        nonlocal n_figures
        rel = _place(path, out_dir) if path else None
        if rel is None:
            return f'<p class="error">missing figure: {_e(caption)} ({_e(path)})</p>'
        n_figures += 1
        return (f'<figure><img class="figure" src="{_e(rel)}" alt="{_e(caption)}" loading="eager">'
                f"<figcaption>{_e(caption)}</figcaption></figure>")

    parts.append("<h2>Tables 1-3: error by cell, depth, lazy update and residual</h2>")
    parts += [_table_html(t) for t in tables] or ["<p>No finished runs.</p>"]
    parts.append("<p><small>Test set, best-on-dev weights. PER from Viterbi decoding over a phone loop (SIL excluded), "
                 "in place of the paper's WER; frame accuracy on the frame targets.</small></p>")
    parts += [img(p, "error by depth") for p in study_figures]

    parts.append("<h2>Claims</h2>")
    parts += [_claim_html(c) for c in claims]

    by_id = {ck.checkpoint_id: ck for ck in checkpoints}
    for fig, title, analysis, file in SECTIONS:
        parts.append(f'<h2 id="{_e(fig.replace(" ", "").replace(",", "_").lower())}">{_e(fig)}: {_e(title)}</h2>')
        for cid, ck in by_id.items():
            row = log.filter((pl.col("checkpoint_id") == cid) & (pl.col("analysis") == analysis))
            if row.height == 0:
                parts.append(f'<p class="error">{_e(ck.run)} ({_e(cid)}): {analysis} not run</p>')
                continue
            r = row.row(0, named=True)
            if r["status"] != "finished":
                parts.append(f'<p class="error">{_e(ck.run)} ({_e(cid)}): {analysis} {_e(r["status"])}: '
                             f'{_e(r["error"] or "")}</p>')
                continue
            paths = [p for p in (r["figure_paths"] or []) if Path(p).name == file]
            parts.append(f"<h3>{_e(ck.run)}</h3>" + img(paths[0] if paths else None, f"{fig}, {ck.run} ({cid})"))

    parts.append("<h2>Run stamps</h2>")
    parts.append(f"<p>This report: gatelens git revision <code>{_e(git_revision())}</code>, Python "
                 f"{_e(sys.version.split()[0])}</p><pre>{_e(json.dumps(_versions(), indent=1))}</pre>")
    for r in runs:
        stamp = r["stamp"]
        parts.append(f"<h3>{_e(r['study'])} / {_e(r['run'])}</h3><p>git revision <code>{_e(stamp.get('git_revision'))}"
                     f"</code>, seed {_e(stamp.get('seed'))}, corpus {_e((stamp.get('corpus') or {}).get('name'))} "
                     f"<code>{_e(((stamp.get('corpus') or {}).get('manifest_sha256') or '')[:12])}</code></p>"
                     f"<details><summary>config and package versions</summary><pre>"
                     f"{_e(json.dumps({'config': stamp.get('config'), 'packages': stamp.get('packages')}, indent=1))}"
                     f"</pre></details>")
    body = "\n".join(parts)
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>gatelens: {_e(name)}</title>'
            f"<style>{_CSS}</style></head><body>\n{body}\n<script>{_SCRIPT}</script></body></html>\n")
    return page, n_figures


def write_report(store, storage, studies: list[str], out_dir, analyse: bool = True, params: dict | None = None,
                 capture: dict | None = None, rerun: bool = False, progress=print) -> Path:
    """Run what is missing (unless ``analyse`` is False), then write ``<out_dir>/index.html``."""
    import polars as pl

    from analyses.claims import evaluate, gather
    from analyses.comparisons import NAME as COMPARISONS, paper_tables, study_id
    from analyses.study import analyse_study, study_checkpoints
    from cluster.grid import study_dir
    from cluster.train import RUN_FILE
    from service.results import collect

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if analyse:
        analyse_study(store, storage, studies, out_dir, params=params, capture=capture, rerun=rerun, progress=progress)
    cks = [ck for s in studies for ck in study_checkpoints(storage, s)]
    ids = list(dict.fromkeys(ck.checkpoint_id for ck in cks)) + [study_id(s) for s in studies]
    log = pl.DataFrame(schema={"checkpoint_id": pl.String, "analysis": pl.String, "status": pl.String,
                               "error": pl.String, "figure_paths": pl.List(pl.String)})
    if store.path.is_file() and ids:
        marks = ", ".join("?" for _ in ids)
        log = store.query(f"SELECT checkpoint_id, analysis, status, error, figure_paths FROM analyses WHERE "
                          f"checkpoint_id IN ({marks}) QUALIFY row_number() OVER (PARTITION BY checkpoint_id, analysis "
                          f"ORDER BY analysis_version DESC) = 1", ids)
    results = [collect(storage, s).with_columns(pl.lit(s).alias("study")) for s in studies]
    results = pl.concat([r for r in results if r.height], how="diagonal_relaxed") if any(r.height for r in results) \
        else pl.DataFrame()
    tables = paper_tables(results)
    claims = evaluate(gather(store, list(dict.fromkeys(ck.checkpoint_id for ck in cks)),
                             results if results.height else None))
    study_figs = [p for s in studies for p in (log.filter((pl.col("checkpoint_id") == study_id(s))
                                                          & (pl.col("analysis") == COMPARISONS))["figure_paths"].to_list() or [[]])[0] or []]
    runs = []
    for s in studies:
        for run_dir in sorted((study_dir(storage, s) / "runs").glob("*")):
            if (run_dir / RUN_FILE).is_file() and run_dir.name in {ck.run for ck in cks if ck.study == s}:
                runs.append({"study": s, "run": run_dir.name, "stamp": json.loads((run_dir / RUN_FILE).read_text())})
    page, n = build_html(studies, cks, log, tables, claims, runs, out_dir, store.path, study_figs)
    tmp = out_dir / f".index.html.{os.getpid()}.tmp"
    tmp.write_text(page)
    os.replace(tmp, out_dir / "index.html")
    progress(f"report with {n} figures: {(out_dir / 'index.html').resolve()}")
    return out_dir / "index.html"


# ---------------------------------------------------------------------------------------------
# Command line (wired by analyses.cli.add_parsers)


def add_report_parser(subparsers) -> argparse.ArgumentParser:
    from analyses.cli import add_study_options

    p = subparsers.add_parser("report", help="write a study's static HTML report (figures, tables, claims, stamps)",
                              description="Run the study's missing captures and analyses, then write one HTML page "
                                          "with the paper's tables, the claims and every figure; it opens from disk.")
    add_study_options(p)
    p.add_argument("--no-analyse", action="store_true", help="draw only what the store already holds")
    p.set_defaults(func=cmd_report)
    return p


def cmd_report(args: argparse.Namespace) -> int:
    from analyses.cli import input_errors, open_study

    try:
        store, studies, out, params, capture = open_study(args)
        path = write_report(store, args.storage, studies, out, analyse=not args.no_analyse, params=params,
                            capture=capture, rerun=args.rerun,
                            progress=lambda m: print(m, file=sys.stderr, flush=True))
    except input_errors() as e:
        print(f"gatelens report: {e}", file=sys.stderr)
        return 2
    print(f"report: {path.resolve()}  (open file://{path.resolve()})")
    return 0
