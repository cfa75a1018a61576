"""Hostile inputs, one line each: files in storage that would run code, arguments that would break
the store or report wrong data as success. Every case runs ``gatelens`` on a copy of a real store
(the 0.1.0 fixture, migrated) and checks the exit status, the one-line message, that the store's
contents did not change, and that nothing planted ran. A case runs ``service.cli.main`` in this
process (what the console script calls; starting an interpreter and importing torch and Ray for
each case cost 1.5-6 s) unless it is marked ``own_process``: those whose failure would exhaust or
hang the interpreter, or that reach Ray workers, run as ``python -m service.cli``.

A case is ``Case(id, argv, exit, message, setup=..., changes_store=False, marker=...)``: ``argv`` and
``setup`` receive the case's folder (holding ``store.duckdb``, its samples, and whatever ``setup``
made); ``marker`` names a file that a planted command or pickle would create.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service.store import Store

# pytest runs with --import-mode=importlib: make this folder's case tables importable.
sys.path.insert(0, str(Path(__file__).parent))

from hostile_cases import STORAGE_CASES  # noqa: E402
from hostile_sql import SQL_CASES  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "store_v1"
CASES = STORAGE_CASES + SQL_CASES


@pytest.fixture(scope="module")
def base_store(tmp_path_factory) -> Path:
    """A real store with data: the 0.1.0 fixture, migrated once."""
    d = tmp_path_factory.mktemp("base")
    with gzip.open(FIXTURE / "gatelens.duckdb.gz") as src, open(d / "store.duckdb", "wb") as dst:
        shutil.copyfileobj(src, dst)
    shutil.copytree(FIXTURE / "gatelens.samples", d / "store.samples")
    Store(d / "store.duckdb").migrate()
    return d


def contents(store_path: Path) -> dict[str, tuple[int, int]]:
    """(rows, order-free hash of the rows) per table: what "the store did not change" compares. One
    reader for all tables (a ``Store.query`` each cost ~10x as much, twice per case)."""
    with Store(store_path).reader(samples=False) as con:
        names = [t for (t,) in con.execute("SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall()]
        out = {}
        for t in names:
            df = con.sql(f"FROM {t}").pl()
            out[t] = (df.height, int(df.hash_rows().sum()) if df.height else 0)
    return out


def run_own_process(case, folder: Path) -> tuple[int, str]:
    env = {**os.environ, "GATELENS_STORE": str(folder / "store.duckdb"), "PYTHONUNBUFFERED": "1"}
    out = subprocess.run([sys.executable, "-m", "service.cli", *[str(a) for a in case.argv(folder)]],
                         cwd=folder, env=env, capture_output=True, text=True, timeout=case.timeout,
                         stdin=subprocess.DEVNULL)
    return out.returncode, out.stderr


def run_in_process(case, folder: Path, monkeypatch, capsys) -> tuple[int, str]:
    """``gatelens`` as the console script runs it: ``main``'s return is the exit status, argparse's
    refusals are a SystemExit; an exception that escapes ``main`` fails the test (it would be a
    traceback)."""
    from cluster import runtime
    from service.cli import main

    monkeypatch.chdir(folder)
    monkeypatch.setenv("GATELENS_STORE", str(folder / "store.duckdb"))
    monkeypatch.setattr(sys, "stdin", io.StringIO())  # as the process's /dev/null
    monkeypatch.setattr(runtime, "say", runtime.say)  # main sets it; restored afterwards
    capsys.readouterr()
    try:
        status = main([str(a) for a in case.argv(folder)])
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return status, capsys.readouterr().err


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_hostile_input(case, base_store, tmp_path, monkeypatch, capsys):
    shutil.copytree(base_store, tmp_path, dirs_exist_ok=True)
    if case.setup is not None:
        case.setup(tmp_path)
    before = contents(tmp_path / "store.duckdb")
    if case.own_process:
        status, stderr = run_own_process(case, tmp_path)
    else:
        status, stderr = run_in_process(case, tmp_path, monkeypatch, capsys)
    assert status == case.exit, (status, stderr[-3000:])
    err = stderr.strip().splitlines()
    assert err and re.search(case.message, err[-1]), stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    if case.marker is not None:
        assert not (tmp_path / case.marker).exists(), f"{case.marker} was created: planted code ran"
    if not case.changes_store:
        assert contents(tmp_path / "store.duckdb") == before
