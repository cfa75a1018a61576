"""`gatelens sql`: read-only by construction, clear refusals, output formats, busy handling."""

import io
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.capture import sample_table
from cluster.errors import EXIT_BUSY, EXIT_INPUT as EXIT_REFUSED, InputError
from cluster.summaries import QUANTITIES, IrregularityRule, UnitSummary
from service.cli import main as cli
from service.schema import tables
from service.sql import check_statement, limited_reader, run_query
from service.store import Store


def main(argv):
    return cli(["sql", *argv])

PHONES = ["<eps>", "SIL", "AA", "B"]
ROOT = Path(__file__).resolve().parents[2]


def capture_frames(checkpoint_id, seed=0, hidden=4, n=40):
    rng = np.random.default_rng(seed)
    s = UnitSummary("lstm", len(PHONES), rules=(IrregularityRule.parse("abs>2"),))
    values = {f"L{l}.{q}": (rng.standard_normal((n, hidden)) * 3).astype(np.float32) for l in (1, 2) for q in QUANTITIES}
    phones = rng.integers(1, len(PHONES), n)
    s.update(values, phones)
    return s.frames_for_store(checkpoint_id, PHONES), values, phones


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    st = Store(tmp_path_factory.mktemp("sql") / "gatelens.duckdb")
    frames, values, phones = capture_frames("ck")
    sample = sample_table("ck", 1, [("utt1", {k: v[:5] for k, v in values.items()}, phones[:5])], PHONES)
    st.ingest("ck", "capture", 1, frames, sample=sample, checkpoint={"arch": "lstm"})
    st.ingest_run({"run_id": "r1", "arch": "lstm"}, pl.DataFrame({"epoch": [1], "split": ["dev"], "frame_acc": [0.5]}))
    return st


def sql(store, *args, stdin=None, capsys=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    rc = main(["--store", str(store.path), "--wait", "0.5", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def snapshot(store):
    with store.reader() as con:
        counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in tables()}
    files = sorted(str(p) for p in store.path.parent.rglob("*"))
    return counts, files


ATTACKS = {
    "insert": "INSERT INTO runs (run_id) VALUES ('x')",
    "update": "UPDATE runs SET status = 'x'",
    "delete": "DELETE FROM unit_stats",
    "drop": "DROP TABLE unit_stats",
    "create": "CREATE TABLE t AS SELECT 1",
    "create temp": "CREATE TEMP TABLE t (a INT)",
    "create view": "CREATE VIEW v AS SELECT 1",
    "create macro": "CREATE MACRO m(a) AS a",
    "create secret": "CREATE SECRET s (TYPE s3, KEY_ID 'k', SECRET 's')",
    "alter": "ALTER TABLE runs ADD COLUMN x INT",
    "merge": "MERGE INTO runs USING (SELECT 'x' AS run_id) s ON runs.run_id = s.run_id WHEN MATCHED THEN DELETE",
    "attach": "ATTACH '/tmp/gatelens-attack.duckdb' AS evil",
    "attach memory": "ATTACH ':memory:' AS m",
    "detach": "DETACH ck",
    "copy to": "COPY unit_stats TO '/tmp/gatelens-attack.csv'",
    "copy query to": "COPY (SELECT * FROM runs) TO '/tmp/gatelens-attack.parquet' (FORMAT parquet)",
    "copy from": "COPY runs FROM '/etc/hostname'",
    "export": "EXPORT DATABASE '/tmp/gatelens-attack-export'",
    "import": "IMPORT DATABASE '/tmp/gatelens-attack-export'",
    "install": "INSTALL httpfs",
    "force install": "FORCE INSTALL httpfs",
    "load": "LOAD httpfs",
    "pragma profiling": "PRAGMA enable_profiling",
    "pragma checkpoint": "PRAGMA force_checkpoint",
    "pragma memory": "PRAGMA memory_limit = '1GB'",
    "pragma import": "PRAGMA import_database('/tmp/x')",
    "set": "SET enable_external_access = true",
    "reset": "RESET lock_configuration",
    "set variable": "SET VARIABLE x = 1",
    "use": "USE memory",
    "checkpoint": "CHECKPOINT",
    "vacuum": "VACUUM",
    "analyze": "ANALYZE",
    "begin": "BEGIN TRANSACTION",
    "call": "CALL pragma_version()",
    "prepare": "PREPARE p AS SELECT 1",
    "explain analyze": "EXPLAIN ANALYZE DELETE FROM runs",
    "explain insert": "EXPLAIN INSERT INTO runs (run_id) VALUES ('x')",
    "explain (analyze)": "EXPLAIN (ANALYZE) DELETE FROM runs",
    "explain (analyze false)": "EXPLAIN (FORMAT json, ANALYZE false) DELETE FROM runs",  # DuckDB 2.0 runs it anyway
    "explain analyse": "EXPLAIN ANALYSE DELETE FROM runs",
    "explain (format json) delete": "EXPLAIN (FORMAT json) DELETE FROM runs",
    "update extensions": "UPDATE EXTENSIONS",
    "two statements": "SELECT 1; DROP TABLE runs",
    "two selects": "SELECT 1; SELECT 2",
    "hidden second": "SELECT 1 /* ; */ ; -- comment\n DELETE FROM runs",
    "comment then pragma": "/* x */ -- y\n PRAGMA enable_profiling",
}
ESCAPES = {
    "read file": "SELECT * FROM read_csv('/etc/passwd')",
    "read text": "SELECT * FROM read_text('/etc/hostname')",
    "glob": "SELECT * FROM glob('/etc/*')",
    "parquet elsewhere": "SELECT * FROM read_parquet('/tmp/*.parquet')",
    "url": "SELECT * FROM read_csv('https://example.com/x.csv')",
    "query()": "SELECT * FROM query('DELETE FROM runs')",
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_writes_are_refused_before_the_store_is_opened(name, store, capsys):
    before = snapshot(store)
    rc, out, err = sql(store, ATTACKS[name], capsys=capsys)
    assert rc == EXIT_REFUSED, (out, err)
    assert err.startswith("gatelens sql: refused:") and out == ""
    assert snapshot(store) == before


@pytest.mark.parametrize("name", sorted(ESCAPES))
def test_escapes_are_refused_by_the_sandbox(name, store, capsys):
    before = snapshot(store)
    rc, out, err = sql(store, ESCAPES[name], capsys=capsys)
    assert rc in (EXIT_REFUSED, 1) and out == ""
    assert "refused" in err or "Parser Error" in err, err
    assert "Traceback" not in err
    assert snapshot(store) == before


def test_every_attack_is_refused_by_duckdb_too(store):
    """Second line of defence: were the statement check bypassed, the read-only, sandboxed and
    locked connection would still refuse every write and escape."""
    import duckdb

    with store.reader() as con:
        for name, q in {**ATTACKS, **ESCAPES}.items():
            if name in ("two selects", "explain analyze", "create temp", "call", "prepare", "checkpoint",
                        "begin", "analyze", "vacuum", "use", "set variable"):
                continue  # harmless on a read-only connection (temp objects live in memory)
            with pytest.raises(duckdb.Error):
                con.execute(q)
    assert not Path("/tmp/gatelens-attack.csv").exists() and not Path("/tmp/gatelens-attack.duckdb").exists()


@pytest.mark.parametrize("q", [
    "SELECT count(*) AS n FROM unit_stats",
    "  with x AS (SELECT 1 AS a) SELECT a FROM x;",
    "FROM runs",
    "SHOW TABLES",
    "DESCRIBE unit_stats",
    "SUMMARIZE SELECT mean FROM unit_stats",
    "PRAGMA table_info('unit_stats')",
    "-- a comment\nPRAGMA show_tables",
    "EXPLAIN SELECT * FROM runs",
    "EXPLAIN (FORMAT json) SELECT * FROM runs",
    "explain ( format /* the plan as */ 'html' ) FROM runs",
    "SELECT layer, count(*) AS n FROM raw_sample GROUP BY layer ORDER BY layer",
])
def test_reading_statements_are_allowed(q, store):
    assert check_statement(q)


def test_table_csv_json_parquet_output(store, capsys, tmp_path):
    q = "SELECT layer, unit, quantity, mean, count FROM unit_stats WHERE quantity = 'c' ORDER BY layer, unit"
    want = store.query(q)
    rc, out, _ = sql(store, q, capsys=capsys)
    assert rc == 0 and "quantity" in out and "(8 rows)" in out
    rc, out, _ = sql(store, q, "--format", "csv", capsys=capsys)
    assert rc == 0 and pl.read_csv(io.StringIO(out)).equals(want.with_columns(pl.col("layer", "unit").cast(pl.Int64)))
    rc, out, _ = sql(store, q, "--format", "json", capsys=capsys)
    rows = json.loads(out)
    assert len(rows) == 8 and rows[0]["quantity"] == "c" and rows[0]["mean"] == pytest.approx(want["mean"][0])
    rc, out, _ = sql(store, q, "--format", "parquet", "--out", str(tmp_path / "r.parquet"), capsys=capsys)
    assert rc == 0 and pl.from_arrow(pq.read_table(tmp_path / "r.parquet")).equals(want)
    # lists (histogram counts, raw sample values) survive csv and json
    rc, out, _ = sql(store, "SELECT counts FROM unit_histograms LIMIT 1", "--format", "csv", capsys=capsys)
    assert rc == 0 and len(json.loads(pl.read_csv(io.StringIO(out))["counts"][0])) == 160
    rc, out, _ = sql(store, "SELECT c FROM raw_sample WHERE layer = 1 AND frame = 0", "--format", "json", capsys=capsys)
    assert rc == 0 and len(json.loads(out)[0]["c"]) == 4


def test_query_from_a_file_and_from_stdin(store, capsys, monkeypatch, tmp_path):
    f = tmp_path / "q.sql"
    f.write_text("-- how many runs\nSELECT count(*) AS n FROM runs;\n")
    rc, out, _ = sql(store, "-f", str(f), "--format", "csv", capsys=capsys)
    assert (rc, out) == (0, "n\n1\n")
    rc, out, _ = sql(store, "--format", "csv", stdin="SELECT 41 + 1 AS answer", capsys=capsys, monkeypatch=monkeypatch)
    assert (rc, out) == (0, "answer\n42\n")
    rc, out, err = sql(store, "-f", str(tmp_path / "missing.sql"), capsys=capsys)
    assert rc == EXIT_REFUSED and "missing.sql: query file not found" in err


def test_sql_errors_are_reported_without_a_traceback(store, capsys):
    rc, out, err = sql(store, "SELECT nope FROM runs", capsys=capsys)
    assert rc == 1 and "gatelens.duckdb" in err and "nope" in err and "Traceback" not in err
    rc, out, err = sql(store, "SELEC 1", capsys=capsys)
    assert rc == EXIT_REFUSED and "not valid SQL" in err


def test_a_query_while_the_writer_holds_the_store_says_busy(store, capsys):
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from service.store import Store
        with Store({str(store.path)!r}).transaction() as con:
            con.execute("DELETE FROM runs")
            print("writing", flush=True)
            time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "writing"
        rc, out, err = sql(store, "SELECT count(*) FROM runs", capsys=capsys)
        assert rc == EXIT_BUSY and out == ""
        assert f"store {store.path} is busy: PID {p.pid} holds it for writing; waited 0.5 s" in err
        assert "IO Error" not in err and "Conflicting lock" not in err
    finally:
        p.kill()
        p.wait()
    rc, out, _ = sql(store, "SELECT count(*) AS n FROM runs", "--format", "csv", capsys=capsys)
    assert (rc, out) == (0, "n\n1\n")  # the killed transaction left the run in place


@pytest.mark.slow
def test_queries_during_repeated_ingests_are_answered_or_busy(store, capsys):
    """A writer ingesting again and again (holding the file only while it writes) and queries in
    between: each query gets the right answer or the busy message, never a lock error."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_sql import capture_frames
        from service.store import Store
        st = Store({str(store.path)!r}, busy_timeout=30)
        frames = capture_frames("ck")[0]
        print("start", flush=True)
        t0 = time.time()
        while time.time() - t0 < 4:
            st.ingest("ck", "capture", 1, frames)
    """)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    answered = busy = 0
    try:
        assert p.stdout.readline().strip() == "start"
        while p.poll() is None:
            rc, out, err = sql(store, "SELECT count(*) AS n FROM unit_stats WHERE checkpoint_id = 'ck'",
                               "--format", "csv", "--wait", "0.05", capsys=capsys)
            if rc == 0:
                assert out == "n\n48\n"  # never a half-replaced capture
                answered += 1
            else:
                assert rc == EXIT_BUSY and "is busy" in err and "IO Error" not in err, err
                busy += 1
    finally:
        p.kill()
        p.wait()
    assert answered + busy > 0


# -- limits: time, memory, Ctrl-C ------------------------------------------------------------------

RUNAWAY = "SELECT count(*) FROM range(100000000) a, range(100000000) b"


def test_a_runaway_query_is_stopped_at_the_timeout(store, capsys):
    # the cross join runs for hours: returning at all means it was interrupted (no wall-clock check)
    rc, out, err = sql(store, RUNAWAY, "--timeout", "1", capsys=capsys)
    assert rc == 1 and out == ""
    assert err == "gatelens sql: error: the query ran longer than 1 s and was stopped (--timeout raises the limit)\n"
    rc, out, _ = sql(store, "SELECT count(*) AS n FROM runs", "--format", "csv", capsys=capsys)
    assert (rc, out) == (0, "n\n1\n")  # the next query is unaffected


def test_the_limits_are_set_before_the_lock(store):
    import duckdb

    with limited_reader(store, memory_limit="300MB") as con:
        got = con.execute("SELECT current_setting('memory_limit'), current_setting('temp_directory'), "
                          "current_setting('enable_external_access'), current_setting('lock_configuration')").fetchall()
        assert got == [("286.1 MiB", "", False, True)]  # 300 MB in MiB; no spilling; sandboxed; locked
        for q in ("SET memory_limit = '100GB'", "SET temp_directory = '/tmp/spill'", "RESET memory_limit",
                  "SET max_temp_directory_size = '1TB'"):
            with pytest.raises(duckdb.Error, match="locked"):
                con.execute(q)


def test_bad_limits_are_refused(store, capsys):
    rc, out, err = sql(store, "SELECT 1", "--memory-limit", "2 lemons", capsys=capsys)
    assert rc == EXIT_REFUSED and err.startswith("gatelens sql: error: --memory-limit '2 lemons': DuckDB refuses it")
    assert err.count("\n") == 1
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(InputError, match="--timeout must be a positive number of seconds"):
            run_query("SELECT 1", store, timeout=bad)


def test_ctrl_c_stops_a_running_query(store):
    p = subprocess.Popen([sys.executable, "-m", "service.cli", "sql", RUNAWAY, "--store", str(store.path)],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        fds = Path(f"/proc/{p.pid}/fd")
        while not any(os.path.realpath(fd) == str(store.path.resolve()) for fd in _links(fds)):
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()
            time.sleep(0.05)
        time.sleep(0.5)  # the store is open: the query is running now
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)  # the runaway would take hours: ending at all is the interrupt
    finally:
        p.kill()
        p.wait()
    assert p.returncode == 130, err
    assert err == "gatelens sql: interrupted; nothing half-written was kept\n" and out == ""


def _links(fds: Path) -> list[str]:
    try:
        return [str(fd) for fd in fds.iterdir()]
    except FileNotFoundError:
        return []


# -- --out: never the store, always whole ----------------------------------------------------------

def test_an_existing_out_file_survives_a_failed_query_or_write(store, capsys, tmp_path):
    out = tmp_path / "result.csv"
    out.write_text("the old result\n")
    out.chmod(0o640)
    for args in (["SELECT nope FROM runs"],  # a failed query
                 [RUNAWAY, "--timeout", "0.5"],  # stopped at the limit
                 ["SELECT 1 AS a, 2 AS a"]):  # polars cannot write duplicate column names
        rc, _, err = sql(store, *args, "--format", "csv", "--out", str(out), capsys=capsys)
        assert rc == 1 and "Traceback" not in err, err
        assert out.read_text() == "the old result\n"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["result.csv"]  # no temporary file left
    rc, _, _ = sql(store, "SELECT count(*) AS n FROM runs", "--format", "csv", "--out", str(out), capsys=capsys)
    assert rc == 0 and out.read_text() == "n\n1\n"
    assert stat.S_IMODE(out.stat().st_mode) == 0o640  # replaced, with the old file's permissions
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.csv"]
    new = tmp_path / "new.json"
    rc, _, _ = sql(store, "SELECT 1 AS a", "--format", "json", "--out", str(new), capsys=capsys)
    umask = os.umask(0)
    os.umask(umask)
    assert rc == 0 and json.loads(new.read_text()) == [{"a": 1}]
    assert stat.S_IMODE(new.stat().st_mode) == 0o666 & ~umask  # as any new file, not mkstemp's 0600


def test_out_refuses_the_store_and_its_samples(store, capsys, tmp_path):
    link = tmp_path / "link.duckdb"
    link.symlink_to(store.path)
    before = snapshot(store)
    for target, why in ((store.path, "that is the store itself"), (link, "that is the store itself"),
                        (Path(str(store.path) + ".wal"), "that is the store itself"),
                        (store.samples_dir / "ck" / "v9.parquet", "inside the store's samples folder"),
                        (store.samples_dir, "is a directory")):
        rc, out, err = sql(store, "SELECT 1 AS a", "--format", "parquet", "--out", str(target), capsys=capsys)
        assert rc == EXIT_REFUSED and why in err and err.count("\n") == 1, err
    assert snapshot(store) == before
    rc, _, _ = sql(store, "SELECT 1 AS a", "--format", "csv", "--out", "/dev/null", capsys=capsys)
    assert rc == 0 and Path("/dev/null").is_char_device()  # a device is written in place, not replaced


def test_a_non_utf8_query_on_stdin_is_refused(store, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"SELECT '\xff'")))
    rc, out, err = sql(store, capsys=capsys)
    assert rc == EXIT_REFUSED and out == ""
    assert err == "gatelens sql: the statement on stdin is not UTF-8 text (byte 0xff at offset 8); save it as UTF-8\n"


# -- statements and column types the writers had no answer for --------------------------------------

def test_explain_with_a_format_returns_the_plan(store, capsys):
    q = "EXPLAIN (FORMAT json) SELECT quantity, max(mean) FROM unit_stats GROUP BY quantity"
    rc, out, err = sql(store, q, "--format", "json", capsys=capsys)
    assert rc == 0, err
    (row,) = json.loads(out)
    assert row["explain_key"] == "physical_plan"
    plan = json.dumps(json.loads(row["explain_value"]))  # the plan, as JSON
    assert "GROUP_BY" in plan and "unit_stats" in plan.lower(), plan


ODD = ("SELECT 1::VARIANT AS v, union_value(num := 2)::UNION(num INT, str VARCHAR) AS u, MAP {'a': 1} AS m, "
       "{'a': 1, 'b': [1, 2]} AS s, '\\xAA\\x00'::BLOB AS b, INTERVAL 3 DAY AS i, "
       "170141183460469231731687303715884105727::HUGEINT AS h, '00000000-0000-0000-0000-000000000001'::UUID AS id, "
       "340282366920938463463374607431768211455::UHUGEINT AS uh, 'infinity'::DATE AS d, [INTERVAL 1 DAY] AS li")
BIG = "170141183460469231731687303715884105727"  # HUGEINT's largest
UBIG = "340282366920938463463374607431768211455"  # UHUGEINT's largest (Arrow's decimal128 would wrap it)
UUID1 = "00000000-0000-0000-0000-000000000001"


@pytest.mark.parametrize("fmt", ["table", "csv", "json", "parquet"])
def test_unusual_column_types_are_written_in_every_format(fmt, store, capsys, tmp_path):
    out_file = tmp_path / f"odd.{fmt}"
    rc, out, err = sql(store, ODD, "--format", fmt, "--out", str(out_file), capsys=capsys)
    assert rc == 0 and err == "", err
    if fmt == "table":
        text = out_file.read_text()
        assert all(v in text for v in ("3 days", "infinity", "\\xAA\\x00", '{"num":2}')), text
    elif fmt == "csv":  # nested values as JSON text, the rest as DuckDB writes them
        (row,) = pl.read_csv(out_file, infer_schema=False).to_dicts()
        assert row == {"v": "1", "u": '{"num":2}', "m": '{"a":1}', "s": '{"a":1,"b":[1,2]}', "b": "\\xAA\\x00",
                       "i": "3 days", "h": BIG, "id": UUID1, "uh": UBIG, "d": "infinity", "li": '["1 day"]'}
    elif fmt == "json":
        (row,) = json.loads(out_file.read_text())
        assert row == {"v": 1, "u": {"num": 2}, "m": [["a", 1]], "s": {"a": 1, "b": [1, 2]}, "b": "\\xAA\\x00",
                       "i": "3 days", "h": BIG, "id": UUID1, "uh": UBIG, "d": "infinity", "li": ["1 day"]}
    else:
        t = pq.read_table(out_file)
        row = t.drop_columns(["d"]).to_pylist()[0]
        assert row["v"] == "1" and row["u"] == '{"num":2}' and row["m"] == [("a", 1)] and row["b"] == b"\xaa\x00"
        assert row["i"] == "3 days" and str(row["h"]) == BIG and row["uh"] == UBIG and row["li"] == '["1 day"]'
        assert t.schema.field("d").type == pa.date32()  # Parquet holds DuckDB's dates as they are


def test_variant_and_friends_on_stdout(store, capsys):
    for fmt in ("table", "csv", "json"):
        rc, out, err = sql(store, "SELECT 1::VARIANT AS v", "--format", fmt, capsys=capsys)
        assert rc == 0 and err == "" and "1" in out, (fmt, out, err)
