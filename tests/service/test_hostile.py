"""Hostile inputs, one line each: files in storage that would run code, arguments that would break
the store or report wrong data as success. Every case runs ``gatelens`` in a real process on a copy
of a real store (the 0.1.0 fixture, migrated) and checks the exit status, the one-line message,
that the store's contents did not change, and that nothing planted ran.

A case is ``Case(id, argv, exit, message, setup=..., changes_store=False, marker=...)``: ``argv`` and
``setup`` receive the case's folder (holding ``store.duckdb``, its samples, and whatever ``setup``
made); ``marker`` names a file that a planted command or pickle would create.
"""

from __future__ import annotations

import gzip
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
    """(rows, order-free hash of the rows) per table: what "the store did not change" compares."""
    store = Store(store_path)
    names = store.query("SELECT table_name FROM duckdb_tables() ORDER BY 1")["table_name"].to_list()
    out = {}
    for t in names:
        df = store.query(f"FROM {t}")
        out[t] = (df.height, int(df.hash_rows().sum()) if df.height else 0)
    return out


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_hostile_input(case, base_store, tmp_path):
    shutil.copytree(base_store, tmp_path, dirs_exist_ok=True)
    if case.setup is not None:
        case.setup(tmp_path)
    before = contents(tmp_path / "store.duckdb")
    env = {**os.environ, "GATELENS_STORE": str(tmp_path / "store.duckdb"), "PYTHONUNBUFFERED": "1"}
    out = subprocess.run([sys.executable, "-m", "service.cli", *[str(a) for a in case.argv(tmp_path)]],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=case.timeout,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == case.exit, (out.returncode, out.stderr[-3000:])
    err = out.stderr.strip().splitlines()
    assert err and re.search(case.message, err[-1]), out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    if case.marker is not None:
        assert not (tmp_path / case.marker).exists(), f"{case.marker} was created: planted code ran"
    if not case.changes_store:
        assert contents(tmp_path / "store.duckdb") == before
