"""Hostile inputs to ``gatelens sql`` (rows of ``tests/service/test_hostile.py``).

An unwritable --out folder: the tests run as root, for whom a chmod'ed folder stays writable, so
the rows use a path under a file (``store.duckdb/x.csv``: ENOTDIR) and one under /proc, where
nobody can create a file.
"""

from __future__ import annotations

import os

from hostile_case import Case

RUNAWAY = "SELECT count(*) FROM range(100000000) a, range(100000000) b"
ELSEWHERE = r"; write the result elsewhere$"


def _plant_non_utf8(folder):
    (folder / "q.sql").write_bytes(b"SELECT 'caf\xe9' AS latin1")  # Latin-1, not UTF-8


def _plant_results_dir(folder):
    (folder / "results").mkdir()


def _plant_samples_link(folder):
    os.symlink(folder / "store.samples", folder / "samples-link")


SQL_CASES: list[Case] = [
    # time and memory limits
    Case("sql-runaway-query-timeout", lambda f: ["sql", RUNAWAY, "--timeout", "2"], 1,
         r"^gatelens sql: error: the query ran longer than 2 s and was stopped \(--timeout raises the limit\)$",
         timeout=30, own_process=True),
    Case("sql-out-of-memory", lambda f: ["sql", "SELECT list(i) FROM range(50000000) t(i)", "--memory-limit", "50MB",
                                         "--format", "csv"], 1,
         r"^gatelens sql: error: the query needed more memory than --memory-limit 50MB and was stopped "
         r"\(--memory-limit raises the limit; DuckDB: Out of Memory Error: [^\n]*\)$", timeout=60, own_process=True),
    Case("sql-timeout-zero", lambda f: ["sql", "SELECT 1", "--timeout", "0"], 2, r"^gatelens sql: error: .*--timeout"),
    Case("sql-timeout-negative", lambda f: ["sql", "SELECT 1", "--timeout=-5"], 2, r"^gatelens sql: error: .*--timeout"),
    Case("sql-timeout-nan", lambda f: ["sql", "SELECT 1", "--timeout", "nan"], 2, r"^gatelens sql: error: .*--timeout"),
    Case("sql-wait-nan", lambda f: ["sql", "SELECT 1", "--wait", "nan"], 2, r"^gatelens sql: error: .*--wait"),
    Case("sql-memory-limit-refused", lambda f: ["sql", "SELECT 1", "--memory-limit", "lots"], 2,
         r"^gatelens sql: error: --memory-limit 'lots': DuckDB refuses it \(.*\); give a size such as 500MB or 4GB$"),
    # --out
    Case("sql-out-onto-the-store", lambda f: ["sql", "SELECT 1 AS a", "--format", "csv", "--out", f / "store.duckdb"], 2,
         r"^gatelens sql: error: --out .*store\.duckdb: that is the store itself \(.*\)" + ELSEWHERE),
    Case("sql-out-onto-the-store-relative", lambda f: ["sql", "SELECT 1 AS a", "--out", "./results/../store.duckdb"], 2,
         r"^gatelens sql: error: --out \./results/\.\./store\.duckdb: that is the store itself \(.*\)" + ELSEWHERE,
         setup=_plant_results_dir),
    Case("sql-out-onto-the-wal", lambda f: ["sql", "SELECT 1 AS a", "--out", f / "store.duckdb.wal"], 2,
         r"^gatelens sql: error: --out .*store\.duckdb\.wal: that is the store itself"),
    Case("sql-out-into-the-samples", lambda f: ["sql", "SELECT 1 AS a", "--format", "parquet",
                                                "--out", f / "store.samples" / "x.parquet"], 2,
         r"^gatelens sql: error: --out .*: that is inside the store's samples folder \(.*store\.samples\)" + ELSEWHERE),
    Case("sql-out-into-the-samples-by-link", lambda f: ["sql", "SELECT 1 AS a", "--out", f / "samples-link" / "x.csv"], 2,
         r"^gatelens sql: error: --out .*samples-link/x\.csv: that is inside the store's samples folder \(.*\)" + ELSEWHERE,
         setup=_plant_samples_link),
    Case("sql-out-onto-a-directory", lambda f: ["sql", "SELECT 1 AS a", "--out", f / "results"], 2,
         r"^gatelens sql: error: --out .*results: is a directory; give a file name$", setup=_plant_results_dir),
    Case("sql-out-under-a-file", lambda f: ["sql", "SELECT 1 AS a", "--out", f / "store.duckdb" / "x.csv"], 2,
         r"^gatelens sql: error: --out .*store\.duckdb/x\.csv: cannot write there \(Not a directory\)$"),
    Case("sql-out-unwritable-folder", lambda f: ["sql", "SELECT 1 AS a", "--out", "/proc/gatelens-hostile.csv"], 2,
         r"^gatelens sql: error: --out /proc/gatelens-hostile\.csv: cannot write there \(.+\)$"),
    Case("sql-out-missing-folder", lambda f: ["sql", "SELECT 1 AS a", "--out", f / "nowhere" / "x.csv"], 2,
         r"^gatelens sql: error: --out .*: the folder .*nowhere does not exist$"),
    # statements and query files
    Case("sql-non-utf8-query-file", lambda f: ["sql", "-f", f / "q.sql"], 2,
         r"^gatelens sql: the query file .*q\.sql is not UTF-8 text \(byte 0xe9 at offset 11\); save it as UTF-8$",
         setup=_plant_non_utf8),
    Case("sql-update-extensions", lambda f: ["sql", "UPDATE EXTENSIONS"], 2,
         r"^gatelens sql: refused: UPDATE EXTENSIONS updates extensions; gatelens sql is read-only"),
    Case("sql-explain-analyze-option", lambda f: ["sql", "EXPLAIN (FORMAT json, ANALYZE false) SELECT * FROM runs"], 2,
         r"^gatelens sql: refused: EXPLAIN ANALYZE runs its statement"),
    Case("sql-explain-analyse", lambda f: ["sql", "EXPLAIN ANALYSE SELECT * FROM runs"], 2,
         r"^gatelens sql: refused: EXPLAIN ANALYZE runs its statement"),
]
