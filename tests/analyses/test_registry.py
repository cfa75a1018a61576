"""The analysis registry: the paper's analyses in its order, and a new analysis module is all it
takes for the driver's list, the store's schema, the report's sections and ``--set`` to know it."""

from __future__ import annotations

import textwrap

import polars as pl
import pytest

import analyses
from analyses import registry
from analyses.common import AnalysisError
from cluster.errors import InputError
from service import schema
from service.cli.analyses import parse_sets
from service.store import Store

NEW_MODULE = '''
"""A test analysis: one table of its own, one figure."""
from dataclasses import dataclass

import polars as pl

from analyses.common import CHECKPOINT, Analysis, FigureSpec, Output, Params, summary_frame
from cluster.tables import C, Table

NAME = "unit_echo"
FIGURE = FigureSpec("fig99_echo.png", "Fig. 99", "Echo of the units")
ECHO = Table("unit_echo_rows", "one row per unit", (
    C("checkpoint_id", "VARCHAR", key=True), C("analysis_version", "INTEGER", key=True),
    C("unit", "INTEGER", key=True), C("value", "DOUBLE")), ("checkpoint_id", "analysis_version", "unit"))


@dataclass
class EchoParams(Params):
    units: int = 3
    scale: float | None = None


def load(reader, checkpoint_id, params):
    return {"checkpoint_id": checkpoint_id}


def run(inputs, params, fig_dir):
    cid = inputs["checkpoint_id"]
    rows = pl.DataFrame({"checkpoint_id": cid, "analysis_version": 1, "unit": list(range(params.units)),
                         "value": [float(u) for u in range(params.units)]})
    return Output(NAME, 1, cid, summary_frame([{"metric": "units", "value": params.units}], cid, NAME, 1), [], {},
                  tables={ECHO.name: rows})


ANALYSIS = Analysis(NAME, 1, CHECKPOINT, order=999, params=EchoParams, load=load, run=run, figures=(FIGURE,),
                    tables=(ECHO,))
'''


def test_the_papers_analyses_in_order():
    reg = registry.all_analyses()
    assert list(reg) == ["cell_distributions", "range_shares", "responsibility", "unit_ablation", "temporal_trace",
                         "memory_robustness", "unit_memory", "comparisons", "matching"]
    assert list(registry.study_analyses()) == ["comparisons", "matching"]
    figures = [f.paper for a in registry.checkpoint_analyses().values() for f in a.figures]
    assert figures == ["Figs. 1-2", "Fig. 3", "Figs. 4-5", "Fig. 6", "Ablation", "Figs. 7, 10", "Fig. 8",
                       "Memory per unit"]
    assert {t.name for t, _ in registry.owned_tables()} == {"traces", "noise_impact", "unit_memory", "unit_ablation", "layer_similarity",
                                                                  "unit_match"}
    with pytest.raises(AnalysisError, match="unknown analysis 'nope'; known: cell_distributions"):
        registry.get("nope")


@pytest.fixture
def new_analysis(tmp_path, monkeypatch):
    (tmp_path / "unit_echo.py").write_text(textwrap.dedent(NEW_MODULE))
    monkeypatch.setattr(analyses, "__path__", [*analyses.__path__, str(tmp_path)])
    registry._discover.cache_clear()
    yield registry.get("unit_echo")
    registry._discover.cache_clear()


def test_one_new_module_is_all_an_analysis_needs(new_analysis, tmp_path):
    assert list(registry.checkpoint_analyses())[-1] == "unit_echo"
    assert "unit_echo_rows" in schema.tables()  # the store creates its table
    assert [t.name for t in schema.owned_tables("unit_echo")] == ["unit_echo_rows"]
    assert parse_sets(["unit_echo.units=5", "unit_echo.scale=none"]) == {"unit_echo": {"units": 5, "scale": None}}
    with pytest.raises(InputError, match="--set 'unit_echo.units=many': 'many' is not a int"):
        parse_sets(["unit_echo.units=many"])

    store = Store(tmp_path / "s.duckdb")
    out = registry.run_analysis("unit_echo", new_analysis.load(store, "ck", None), {"units": 4}, str(tmp_path))
    written = store.ingest_output(out)
    assert written == {"unit_echo_rows": 4, "analysis_summary": 1}
    assert store.query("SELECT sum(value) AS s FROM unit_echo_rows")["s"][0] == 6.0
    log = store.query("SELECT status, rows FROM analyses WHERE analysis = 'unit_echo'").row(0)
    assert log == ("finished", 5)


def test_an_ingest_is_one_transaction(new_analysis, tmp_path):
    """Rows, summary and log land together: a bad summary leaves the earlier rows and log as they were."""
    store = Store(tmp_path / "s.duckdb")
    store.ingest_output(registry.run_analysis("unit_echo", {"checkpoint_id": "ck"}, {"units": 2}, str(tmp_path)))
    bad = registry.run_analysis("unit_echo", {"checkpoint_id": "ck"}, {"units": 7}, str(tmp_path))
    bad.summary = pl.concat([bad.summary, bad.summary])  # a repeated key
    with pytest.raises(Exception, match="repeat a key"):
        store.ingest_output(bad)
    assert store.query("SELECT count(*) AS n FROM unit_echo_rows")["n"][0] == 2
    assert store.query("SELECT rows FROM analyses WHERE analysis = 'unit_echo'")["rows"][0] == 3


def test_parse_sets_refuses_unknown_analyses_and_parameters():
    with pytest.raises(AnalysisError, match="ANALYSIS.KEY=VALUE"):
        parse_sets(["utterances=3"])
    with pytest.raises(AnalysisError, match="unknown analysis 'nosuch'"):
        parse_sets(["nosuch.x=1"])
    with pytest.raises(InputError, match="KEY one of utt_id, utterances"):
        parse_sets(["temporal_trace.nope=1"])
    assert parse_sets(["memory_robustness.snr_db=5", "memory_robustness.at_s=none"]) == \
        {"memory_robustness": {"snr_db": 5.0, "at_s": None}}


def test_analyses_that_share_work_compute_it_once_and_fail_alone(new_analysis, tmp_path):
    """``run_analyses`` (one Ray task for analyses with one ``shares``): what they ask ``shared``
    for under one key is made once per task, every time outside one; one job's failure is
    returned in its place and the jobs after it still run."""
    from analyses.common import shared, sharing

    made = []
    make = lambda: made.append(1) or len(made)  # noqa: E731
    with sharing():
        assert [shared("k", make), shared("k", make), shared("other", make)] == [1, 1, 2]
    assert shared("k", make) == 3 and len(made) == 3  # outside: computed each time

    out = registry.run_analyses([("unit_echo", {"checkpoint_id": "ck"}, {"units": 2}),
                                 ("unit_echo", {"checkpoint_id": "ck"}, {"units": "many"}),  # fails in run
                                 ("no_such_analysis", {}, {}),
                                 ("unit_echo", {"checkpoint_id": "ck2"}, {"units": 3})], str(tmp_path))
    assert out[0].tables["unit_echo_rows"].height == 2 and out[3].tables["unit_echo_rows"].height == 3
    assert isinstance(out[1], TypeError) and "remote_traceback" in vars(out[1])
    assert isinstance(out[2], AnalysisError) and "no_such_analysis" in str(out[2])
