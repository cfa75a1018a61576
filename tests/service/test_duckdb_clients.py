"""The store opens in other DuckDB clients: the plain `duckdb` CLI of the 1.x line (duckdb-cli 1.5.6,
from the test extra), which reads storage versions 64-68 and refuses DuckDB 2.0's default (69).

``service.store.connect`` must create new files with ``storage_compatibility_version = 'v1.5.0'``
(storage 68); DuckDB 2.0 keeps writing an existing file in the version it was created with, so later
sessions (inserts, deletes, a killed writer's WAL) leave it readable by 1.x clients.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from service import store as store_mod
from service.store import Store

CLI_VERSION = "v1.5.6"  # the duckdb-cli pin of the test extra in pyproject.toml


@pytest.fixture(scope="module")
def duckdb_cli() -> str:
    """The `duckdb` executable of this venv (duckdb-cli), checked to be the 1.x reader we pin."""
    beside = Path(sys.executable).parent / "duckdb"
    exe = str(beside) if beside.is_file() else shutil.which("duckdb")
    if exe is None:
        reason = (f"the duckdb CLI is not installed: the test extra pins duckdb-cli=={CLI_VERSION[1:]} "
                  f"(pip install -e '.[test]')")
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith(CLI_VERSION), (exe, out.stdout, out.stderr)
    return exe


def run_cli(exe: str, db: Path, sql: str, home: Path) -> subprocess.CompletedProcess:
    """`duckdb -readonly DB -csv -c SQL`, as a user would run it, without any ~/.duckdbrc."""
    home.mkdir(exist_ok=True)
    return subprocess.run([exe, "-init", os.devnull, "-readonly", str(db), "-csv", "-c", sql],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(home)})


def storage_tag(path: Path) -> str:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute("SELECT tags['storage_version'] FROM duckdb_databases() "
                           "WHERE database_name = current_database()").fetchone()[0]
    finally:
        con.close()


def write_sample_parquet(path: Path) -> None:
    """Like the capture's raw sample: float16 lists (Parquet FLOAT16, read as FLOAT[])."""
    values = pa.array(np.array([0.5, 1.5, 2.5, -3.25], np.float16), pa.float16())
    pq.write_table(pa.table({"utt_id": ["u1", "u2"],
                             "c": pa.ListArray.from_arrays(pa.array([0, 2, 4], pa.int32()), values)}),
                   path, compression="zstd")


def make_store_file(tmp_path: Path) -> Path:
    db = tmp_path / "gatelens.duckdb"
    samples = tmp_path / "samples"
    samples.mkdir()
    write_sample_parquet(samples / "v1.parquet")
    con = store_mod.connect(db, read_only=False, timeout=5)
    try:
        con.execute("""CREATE TABLE hist (
            checkpoint_id VARCHAR PRIMARY KEY, layer INTEGER, lo DOUBLE, counts BIGINT[],
            created_at TIMESTAMP)""")
        con.execute("INSERT INTO hist VALUES ('lstm-1x4-aa', 1, -2.5, [3, 1, 4], TIMESTAMP '2026-01-02 03:04:05'), "
                    "('gru-1x4-bb', 2, 0.25, [2, 7], TIMESTAMP '2026-01-03 00:00:00')")
        # enough rows that the checkpoint compresses real segments, not only constants
        con.execute("INSERT INTO hist SELECT 'bulk-' || i, i % 4, i / 7, [i, i + 1], "
                    "TIMESTAMP '2026-01-01' + INTERVAL (i) SECOND FROM range(50000) t(i)")
        con.execute(f"CREATE VIEW raw_sample AS SELECT * FROM read_parquet('{samples}/*.parquet')")
    finally:
        con.close()
    return db


def test_a_store_written_by_connect_opens_in_the_1x_cli(duckdb_cli, tmp_path):
    db = make_store_file(tmp_path)
    out = run_cli(duckdb_cli, db, "SELECT checkpoint_id, counts[1] AS first, len(counts) AS n, lo, created_at "
                                  "FROM hist WHERE checkpoint_id NOT LIKE 'bulk-%' ORDER BY checkpoint_id; "
                                  "SELECT count(*) AS rows, sum(counts[2]) AS s FROM hist; "
                                  "SELECT utt_id, c[2] AS c2 FROM raw_sample ORDER BY utt_id", tmp_path / "home")
    assert out.returncode == 0, (f"duckdb {CLI_VERSION} cannot open the store (written in storage "
                                 f"{storage_tag(db)!r}; connect() must create it with "
                                 f"storage_compatibility_version = 'v1.5.0'): {out.stderr.strip()}")
    assert out.stdout.splitlines() == [
        "checkpoint_id,first,n,lo,created_at",
        "gru-1x4-bb,2,2,0.25,2026-01-03 00:00:00",
        "lstm-1x4-aa,3,3,-2.5,2026-01-02 03:04:05",
        "rows,s",
        f"50002,{1 + 7 + sum(range(1, 50001))}",
        "utt_id,c2",
        "u1,1.5",
        "u2,-3.25",
    ]
    assert storage_tag(db) == "v1.5.0+"


def test_later_sessions_keep_the_file_readable(duckdb_cli, tmp_path):
    """Reopening the file (with or without the setting) writes it in its own version: inserts,
    deletes, updates and a writer killed before its checkpoint (WAL replay) stay readable."""
    db = make_store_file(tmp_path)
    con = store_mod.connect(db, read_only=False, timeout=5)
    con.execute("INSERT INTO hist VALUES ('lazy-1x4-cc', 3, 1.0, [9, 9, 9], TIMESTAMP '2026-02-01 00:00:00')")
    con.execute("DELETE FROM hist WHERE checkpoint_id LIKE 'bulk-%' AND layer = 0")
    con.close()
    con = duckdb.connect(str(db))  # a plain 2.0 session, no setting: the file keeps its version
    con.execute("UPDATE hist SET lo = lo + 1 WHERE checkpoint_id = 'lstm-1x4-aa'")
    con.execute("CREATE TABLE extra AS SELECT i::VARCHAR AS s, [i, i]::BIGINT[] AS l FROM range(3) t(i)")
    con.close()
    killed = subprocess.run([sys.executable, "-c", (
        "import duckdb, os, sys\n"
        "con = duckdb.connect(sys.argv[1])\n"
        "con.execute(\"INSERT INTO hist VALUES ('killed', 5, 0, [42], NULL)\")\n"
        "os._exit(0)\n"), str(db)], capture_output=True, text=True, timeout=120)
    assert killed.returncode == 0, killed.stderr
    assert Path(str(db) + ".wal").is_file()  # the killed writer left its WAL for the reader to replay

    out = run_cli(duckdb_cli, db, "SELECT checkpoint_id, counts[1] AS first, lo FROM hist "
                                  "WHERE checkpoint_id NOT LIKE 'bulk-%' ORDER BY checkpoint_id; "
                                  "SELECT count(*) AS bulk FROM hist WHERE checkpoint_id LIKE 'bulk-%'; "
                                  "SELECT sum(l[2]) AS s FROM extra", tmp_path / "home")
    assert out.returncode == 0, (f"duckdb {CLI_VERSION} cannot open the store after later sessions "
                                 f"(storage {storage_tag(db)!r}): {out.stderr.strip()}")
    assert out.stdout.splitlines() == [
        "checkpoint_id,first,lo",
        "gru-1x4-bb,2,0.25",
        "killed,42,0.0",
        "lazy-1x4-cc,9,1.0",
        "lstm-1x4-aa,3,-1.5",
        "bulk",
        str(50000 - len(range(0, 50000, 4))),
        "s",
        "3",
    ]
    assert storage_tag(db) == "v1.5.0+"


def test_the_real_schema_opens_in_the_1x_cli(duckdb_cli, tmp_path):
    """Every table and column of the store as Store creates it, seen alike by the 1.x CLI."""
    store = Store(tmp_path / "data" / "gatelens.duckdb", busy_timeout=5)
    with store.transaction():
        pass
    columns = ("SELECT table_name, column_name, data_type FROM duckdb_columns() "
               "WHERE database_name = current_database() ORDER BY ALL")
    con = duckdb.connect(str(store.path), read_only=True)
    try:
        expected = [[str(v) for v in row] for row in con.execute(columns).fetchall()]
    finally:
        con.close()
    assert len({row[0] for row in expected}) >= 5, expected  # the schema was created
    out = run_cli(duckdb_cli, store.path, columns, tmp_path / "home")
    assert out.returncode == 0, (f"duckdb {CLI_VERSION} cannot open the store (storage "
                                 f"{storage_tag(store.path)!r}): {out.stderr.strip()}")
    assert list(csv.reader(io.StringIO(out.stdout))) == [["table_name", "column_name", "data_type"]] + expected


def test_the_cli_is_a_1x_reader_that_refuses_the_2_0_format(duckdb_cli, tmp_path):
    """The check above means something: a file in DuckDB 2.0's default format is refused."""
    db = tmp_path / "plain.duckdb"
    con = duckdb.connect(str(db))  # no setting: storage v2.0.0+ (69)
    con.execute("CREATE TABLE t AS SELECT 1 AS a")
    con.close()
    out = run_cli(duckdb_cli, db, "SELECT a FROM t", tmp_path / "home")
    assert out.returncode != 0
    assert re.search(r"version number 69, but we can only read versions between 64 and 68", out.stderr), out.stderr
