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

import html
import json
import os
import shutil
import sys
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import polars as pl

from analyses import registry
from analyses.claims import FINDING, SANITY, effect_text, evaluate, forest_plot, gather, source_text, study_utterances
from analyses.common import StudyRef
from analyses.comparisons import paper_tables
from cluster.runs import RunDir, studies_results
from cluster.runtime import git_revision
from service.study import analyse_study, study_runs

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
.holds { background: #d8f0d8; } .contradicted { background: #f6d6d6; } .undecided { background: #fbe3c8; }
.not-measured { background: #e8e8e8; } .no-effect { background: #d6e4f6; }
.flip { color: #a00; font-weight: bold; }
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
    test = f"test: {_e(c.test)}" if c.test else ""
    margin = f"margin: +-{c.margin:g} {_e(c.unit)} ({_e(c.margin_reason)})" if c.kind == FINDING else ""
    sens = ""
    for label, s in c.sensitivity.items():
        eff = "n/a" if s.get("effect") is None else f"{s['effect']:+.3g}"
        sens += (f'<li>{_e(label)}: <span class="verdict {_e(s["verdict"].replace(" ", "-"))}">{_e(s["verdict"])}'
                 f"</span> effect {_e(eff)}</li>")
    flip = ('<span class="flip" data-flips="1"> flips at a neighbouring threshold</span>' if c.flips else "")
    return (f'<div class="claim" data-claim="{_e(c.key)}" data-verdict="{_e(c.verdict)}" data-kind="{_e(c.kind)}">'
            f'<span class="verdict {cls}">{_e(c.verdict)}</span> {_e(c.statement)}{flip}'
            f'<div class="rule">{_e(source_text(c))}</div>'
            f'<div class="rule">effect: {_e(c.effect_name)} = <b>{_e(effect_text(c))}</b></div>'
            f'{f"<div class=rule>{margin}</div>" if margin else ""}'
            f'{f"<div class=rule>{test}</div>" if test else ""}'
            f'{f"<details><summary>sensitivity</summary><ul>{sens}</ul></details>" if sens else ""}'
            f'{f"<details><summary>numbers</summary><ul>{items}</ul></details>" if items else ""}</div>')


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


def build_html(studies: list[str], runs: list[RunDir], log: pl.DataFrame, tables: list, claims: list,
               out_dir: Path, store_path: Path, study_figures: dict[str, list[str]]) -> tuple[str, int]:
    """The page, and the number of figures on it. Sections follow the analysis registry: every
    figure a checkpoint-scope analysis declares, for every final checkpoint of the runs, then the
    figures of the study-scope ones (``study_figures``: analysis -> paths; Tables 1-3's figure sits
    with the tables)."""
    name = ", ".join(studies)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    checkpoints = {run.final_checkpoint.checkpoint_id: run for run in runs}
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
    parts += [img(p, "error by depth") for p in study_figures.get("comparisons", [])]

    parts.append("<h2>Claims</h2>")
    if claims:
        parts.append(img(str(forest_plot(claims, out_dir / "figures" / "claims_forest.png").path),
                         "claims: effect sizes with their 95 % intervals"))
    findings, sanity = [c for c in claims if c.kind == FINDING], [c for c in claims if c.kind == SANITY]
    if claims:
        parts.append("<p class=rule>Findings: one family, Holm-adjusted one-sided p-values; <i>no effect</i>: the "
                     "95 % interval inside the claim's margin; a claim marked <span class=flip>flips</span> changes "
                     "its verdict at a neighbouring threshold.</p>")
    parts += [_claim_html(c) for c in findings]
    if sanity:
        parts.append("<h3>Sanity checks (true by construction: they test the capture, not the paper)</h3>")
        parts += [_claim_html(c) for c in sanity]

    sections = [(a.name, f) for a in registry.checkpoint_analyses().values() for f in a.figures]
    for analysis, spec in sections:
        fig = spec.paper
        parts.append(f'<h2 id="{_e(fig.replace(" ", "").replace(",", "_").lower())}">{_e(fig)}: {_e(spec.title)}</h2>')
        for cid, run in checkpoints.items():
            row = log.filter((pl.col("checkpoint_id") == cid) & (pl.col("analysis") == analysis))
            if row.height == 0:
                parts.append(f'<p class="error">{_e(run.name)} ({_e(cid)}): {analysis} not run</p>')
                continue
            r = row.row(0, named=True)
            if r["status"] != "finished":
                parts.append(f'<p class="error">{_e(run.name)} ({_e(cid)}): {analysis} {_e(r["status"])}: '
                             f'{_e(r["error"] or "")}</p>')
                continue
            paths = [p for p in (r["figure_paths"] or []) if Path(p).name == spec.file]
            parts.append(f"<h3>{_e(run.name)}</h3>" + img(paths[0] if paths else None, f"{fig}, {run.name} ({cid})"))

    for a in registry.study_analyses().values():
        if a.name == "comparisons":
            continue
        for spec in a.figures:
            parts.append(f"<h2>{_e(spec.paper)}: {_e(spec.title)}</h2>")
            paths = [p for p in study_figures.get(a.name, []) if Path(p).name.endswith(spec.file)]
            parts += [img(p, f"{spec.paper}, {Path(p).name}") for p in paths] or \
                [f'<p class="error">{_e(a.name)}: not run</p>']

    parts.append("<h2>Run stamps</h2>")
    parts.append(f"<p>This report: gatelens git revision <code>{_e(git_revision())}</code>, Python "
                 f"{_e(sys.version.split()[0])}</p><pre>{_e(json.dumps(_versions(), indent=1))}</pre>")
    for run in runs:
        stamp = run.stamp
        parts.append(f"<h3>{_e(run.study)} / {_e(run.name)}</h3><p>git revision <code>{_e(stamp.git_revision)}"
                     f"</code>, seed {_e(stamp.seed)}, corpus {_e(stamp.corpus.get('name'))} "
                     f"<code>{_e((stamp.corpus.get('manifest_sha256') or '')[:12])}</code></p>"
                     f"<details><summary>config and package versions</summary><pre>"
                     f"{_e(json.dumps({'config': stamp.config, 'packages': stamp.packages}, indent=1))}"
                     f"</pre></details>")
    body = "\n".join(parts)
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>gatelens: {_e(name)}</title>'
            f"<style>{_CSS}</style></head><body>\n{body}\n<script>{_SCRIPT}</script></body></html>\n")
    return page, n_figures


def write_report(store, storage, studies: list[str], out_dir, analyse: bool = True, params: dict | None = None,
                 capture: dict | None = None, rerun: bool = False, progress=print) -> tuple[Path, list]:
    """Run what is missing (unless ``analyse`` is False), then write ``<out_dir>/index.html``.
    Returns the page's path and the claims it shows."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if analyse:
        runs, _ = analyse_study(store, storage, studies, out_dir, params=params, capture=capture, rerun=rerun,
                                progress=progress)
    else:
        runs = study_runs(storage, studies)  # each run's final checkpoint is then loaded (and hashed) once
    ck_ids = list(dict.fromkeys(run.final_checkpoint.checkpoint_id for run in runs))
    study_ids = [StudyRef(str(storage), s).subject_id for s in studies]
    ids = ck_ids + study_ids
    log = pl.DataFrame(schema={"checkpoint_id": pl.String, "analysis": pl.String, "status": pl.String,
                               "error": pl.String, "figure_paths": pl.List(pl.String)})
    if store.path.is_file() and ids:
        marks = ", ".join("?" for _ in ids)
        log = store.query(f"SELECT checkpoint_id, analysis, status, error, figure_paths FROM analyses WHERE "
                          f"checkpoint_id IN ({marks}) QUALIFY row_number() OVER (PARTITION BY checkpoint_id, analysis "
                          f"ORDER BY analysis_version DESC) = 1", ids)
    results = studies_results(storage, studies)
    tables = paper_tables(results)
    claims = evaluate(gather(store, ck_ids, results if results.height else None, study_utterances(storage, studies)))
    study_names = list(registry.study_analyses())
    study_figs: dict[str, list[str]] = {}
    for r in log.filter(pl.col("checkpoint_id").is_in(study_ids) & pl.col("analysis").is_in(study_names)).iter_rows(
            named=True):
        study_figs.setdefault(r["analysis"], []).extend(r["figure_paths"] or [])
    page, n = build_html(studies, runs, log, tables, claims, out_dir, store.path, study_figs)
    tmp = out_dir / f".index.html.{os.getpid()}.tmp"
    tmp.write_text(page)
    os.replace(tmp, out_dir / "index.html")
    progress(f"report with {n} figures: {(out_dir / 'index.html').resolve()}")
    return out_dir / "index.html", claims
