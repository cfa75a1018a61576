"""The store: schema, idempotent ingest, atomicity under SIGKILL, the analyses log, raw samples."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

from cluster.capture import sample_table
from cluster.summaries import QUANTITIES, SUMMARY_VERSION, IrregularityRule, UnitSummary
from service.schema import tables
from service.store import Store, StoreBusy, StoreError

PHONES = ["<eps>", "SIL", "AA", "B"]
ROOT = Path(__file__).resolve().parents[2]


def capture_frames(checkpoint_id, seed=0, layers=(1, 2), hidden=4, n=60):
    rng = np.random.default_rng(seed)
    s = UnitSummary("lstm", len(PHONES), rules=(IrregularityRule.parse("abs>2"),))
    s.update({f"L{l}.{q}": (rng.standard_normal((n, hidden)) * 3).astype(np.float32)
              for l in layers for q in QUANTITIES}, rng.integers(1, len(PHONES), n))
    return s.frames_for_store(checkpoint_id, PHONES)


def counts(store):
    return {t: store.query(f"SELECT count(*) AS n FROM {t}")["n"][0] for t in tables()}


def table_rows(store, table):
    return store.query(f"SELECT * EXCLUDE (analysis_version) FROM {table} ORDER BY ALL")


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "data" / "gatelens.duckdb", busy_timeout=5)


def test_double_ingest_leaves_identical_rows(store):
    frames = capture_frames("lstm-2x4-e3")
    store.ingest("lstm-2x4-e3", "capture", SUMMARY_VERSION, frames, params={"utterances": 2})
    first = counts(store)
    before = {t: table_rows(store, t) for t in ("unit_stats", "layer_stats", "unit_histograms", "phone_responsibility")}
    store.ingest("lstm-2x4-e3", "capture", SUMMARY_VERSION, frames, params={"utterances": 2})
    assert counts(store) == first
    for t, df in before.items():
        assert table_rows(store, t).equals(df)
    assert first["unit_stats"] == 2 * 4 * 6 and first["layer_stats"] == 2 * 6 and first["analyses"] == 1


def test_reingest_replaces_only_that_checkpoint_and_version(store):
    store.ingest("a", "capture", 1, capture_frames("a", seed=0) | {})
    store.ingest("b", "capture", 1, capture_frames("b", seed=1))
    v2 = {t: df.with_columns(pl.lit(2, dtype=pl.Int32).alias("analysis_version"))
          for t, df in capture_frames("a", seed=2, layers=(1,)).items()}
    store.ingest("a", "capture", 2, v2)
    # a new capture of a, version 1, with one layer only: a's older version-1 rows are gone
    store.ingest("a", "capture", 1, capture_frames("a", seed=3, layers=(1,)))
    n = store.query("SELECT checkpoint_id, analysis_version, count(*) AS n FROM unit_stats "
                    "GROUP BY ALL ORDER BY ALL").rows()
    assert n == [("a", 1, 24), ("a", 2, 24), ("b", 1, 48)]
    log = store.query("SELECT checkpoint_id, analysis_version, status FROM analyses ORDER BY ALL").rows()
    assert log == [("a", 1, "finished"), ("a", 2, "finished"), ("b", 1, "finished")]


def test_bad_rows_are_refused_naming_the_store_and_checkpoint(store):
    store.ingest("good", "capture", 1, capture_frames("good"))
    before = counts(store)
    frames = capture_frames("ck")
    with pytest.raises(StoreError, match=r"gatelens.duckdb: rows for \w+ of checkpoint other .* of another checkpoint"):
        store.ingest("other", "capture", 1, frames)
    dup = dict(frames, unit_stats=pl.concat([frames["unit_stats"], frames["unit_stats"].head(1)]))
    with pytest.raises(StoreError, match="repeat the key"):
        store.ingest("ck", "capture", 1, dup)
    bad = dict(frames, unit_stats=frames["unit_stats"].drop("variance"))
    with pytest.raises(StoreError, match=r"missing columns \['variance'\]"):
        store.ingest("ck", "capture", 1, bad)
    with pytest.raises(StoreError, match="does not own"):
        store.ingest("ck", "temporal_trace", 1, frames)
    with pytest.raises(StoreError, match="unknown analysis .trace."):
        store.ingest("ck", "trace", 1, frames)
    with pytest.raises(StoreError, match="checkpoint_id 'a b'"):
        store.ingest("a b", "capture", 1, frames)
    assert counts(store) == before  # nothing was written by any of them


def test_killed_ingest_leaves_no_partial_rows(store):
    """SIGKILL while a transaction has deleted the old rows and inserted half of the new ones:
    the store keeps exactly the rows it had before."""
    store.ingest("ck", "capture", 1, capture_frames("ck", seed=0))
    before = {t: table_rows(store, t) for t in ("unit_stats", "phone_responsibility")}
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_store import capture_frames
        from service.store import Store, _insert
        frames = capture_frames("ck", seed=9, hidden=50)
        big = frames["unit_stats"]  # ~360k rows: more than a row group, so DuckDB writes blocks early
        big = __import__("polars").concat([big.with_columns(unit=big["unit"] + 50 * k) for k in range(600)])
        with Store({str(store.path)!r}).transaction() as con:
            con.execute("DELETE FROM unit_stats WHERE checkpoint_id = 'ck'")
            con.execute("DELETE FROM phone_responsibility WHERE checkpoint_id = 'ck'")
            _insert(con, "unit_stats", big)
            print("half-written", flush=True)
            time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-X", "faulthandler", "-c", script], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = p.stdout.readline().strip()  # the store switches DuckDB's progress bar off: nothing else
        alive = p.poll() is None
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.kill()
        _, err = p.communicate(timeout=30)
    assert line == "half-written", (alive, p.returncode, err)
    for t, df in before.items():
        assert table_rows(store, t).equals(df)


def test_analysis_log_records_start_finish_and_failure(store):
    store.log_started("ck", "fig1", 1, params={"units": 50})
    row = store.query("SELECT * FROM analyses").row(0, named=True)
    assert row["status"] == "running" and row["finished_at"] is None and row["started_at"] is not None
    store.log_finished("ck", "fig1", 1, figure_paths=["figs/fig1.png"])
    row = store.query("SELECT * FROM analyses").row(0, named=True)
    assert row["status"] == "finished" and row["figure_paths"] == ["figs/fig1.png"]
    assert row["params"] == '{"units": 50}' and row["finished_at"] >= row["started_at"]
    store.log_failed("ck", "fig2", 1, ValueError("no cell values in layer 3"))
    row = store.query("SELECT * FROM analyses WHERE analysis = 'fig2'").row(0, named=True)
    assert row["status"] == "failed" and row["error"] == "no cell values in layer 3"


def test_runs_checkpoints_and_epoch_metrics(store):
    epochs = pl.DataFrame({"epoch": [1, 1, 2, 2], "split": ["train", "dev"] * 2,
                           "frame_ce": [2.0, 2.1, 1.5, 1.7], "frame_acc": [0.4, 0.38, 0.6, 0.55]})
    store.ingest_run({"run_id": "r1", "arch": "gru", "layers": 2, "hidden": 128, "config": {"lr": 1e-3},
                      "status": "running"}, epochs)
    store.ingest_run({"run_id": "r1", "status": "finished"}, epochs.filter(pl.col("epoch") == 2))
    run = store.query("SELECT * FROM runs").row(0, named=True)
    assert (run["arch"], run["status"], run["config"]) == ("gru", "finished", '{"lr": 0.001}')  # kept, updated
    assert store.query("SELECT epoch, split FROM epoch_metrics ORDER BY ALL").rows() == [(2, "dev"), (2, "train")]
    store.add_epoch_metrics(pl.DataFrame({"run_id": ["r1"], "epoch": [3], "split": ["dev"], "per": [0.2]}))
    assert counts(store)["epoch_metrics"] == 3
    store.register_checkpoint({"checkpoint_id": "r1-e3", "run_id": "r1", "epoch": 3, "arch": "gru",
                               "extra": {"metrics": {"frame_acc": 0.6}}})
    # a capture registering the same checkpoint does not overwrite what training wrote
    store.ingest("r1-e3", "capture", 1, capture_frames("r1-e3"), checkpoint={"arch": "lstm", "path": "x"})
    ck = store.query("SELECT * FROM checkpoints").row(0, named=True)
    assert (ck["arch"], ck["run_id"], ck["path"]) == ("gru", "r1", None)
    with pytest.raises(StoreError, match="no columns"):
        store.add_epoch_metrics(pl.DataFrame({"run_id": ["r1"], "epoch": [4], "split": ["dev"], "wer": [0.1]}))


def test_raw_sample_as_float16_parquet_behind_a_view(store):
    rng = np.random.default_rng(0)
    t, h = 7, 5
    values = {f"L{l}.{q}": rng.standard_normal((t, h)).astype(np.float32) for l in (1, 2) for q in QUANTITIES}
    phones = rng.integers(1, len(PHONES), t)
    sample = sample_table("ck", SUMMARY_VERSION, [("utt1", values, phones)], PHONES)
    store.ingest("ck", "capture", SUMMARY_VERSION, capture_frames("ck"), sample=sample)
    files = sorted(p.relative_to(store.samples_dir) for p in store.samples_dir.rglob("*.parquet"))
    assert files == [Path("ck") / f"v{SUMMARY_VERSION}.parquet"]
    import pyarrow.parquet as pq

    schema = pq.read_schema(store.samples_dir / files[0])
    assert str(schema.field("c").type) == "list<element: halffloat>"
    got, got_phones = store.sample_values("ck", "utt1", layer=2, quantity="c")
    np.testing.assert_array_equal(got, values["L2.c"].astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(got_phones, phones)
    n = store.query("SELECT count(*) AS n, min(phone) AS p FROM raw_sample WHERE layer = 1")
    assert n["n"][0] == t
    # the plain duckdb client (default settings, another process) opens the file and the view
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import duckdb
        con = duckdb.connect({str(store.path)!r}, read_only=True)
        print(con.execute("SELECT count(*) FROM raw_sample").fetchone()[0], con.execute("SELECT count(*) FROM unit_stats").fetchone()[0])
    """)], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(2 * t), "48"]
    # a capture without a sample replaces the earlier sample too; the view goes with the last one
    store.ingest("ck", "capture", SUMMARY_VERSION, capture_frames("ck"))
    assert not list(store.samples_dir.rglob("*.parquet"))
    assert store.query("SELECT count(*) AS n FROM duckdb_views() WHERE view_name = 'raw_sample'")["n"][0] == 0


def _sample(t=4, h=3, seed=0):
    rng = np.random.default_rng(seed)
    values = {f"L{l}.{q}": rng.standard_normal((t, h)).astype(np.float32) for l in (1, 2) for q in QUANTITIES}
    return sample_table("ck", SUMMARY_VERSION, [("utt1", values, rng.integers(1, len(PHONES), t))], PHONES)


def test_a_sample_whose_rename_a_crash_cut_off_is_published_on_the_next_open(store, monkeypatch):
    def crash(*a, **k):
        raise SystemExit("killed between the commit and the rename")

    monkeypatch.setattr(Store, "_publish_sample", crash)
    with pytest.raises(SystemExit):
        store.ingest("ck", "capture", SUMMARY_VERSION, capture_frames("ck"), sample=_sample())
    assert store.query("SELECT status FROM analyses")["status"].to_list() == ["finished"]
    assert not store.sample_files()
    monkeypatch.undo()
    again = Store(store.path)
    again.log_started("other", "capture", 1)  # any writer repairs on opening
    assert again.query("SELECT count(*) AS n FROM raw_sample")["n"][0] == 2 * 4
    assert not list((again.samples_dir / ".incoming").iterdir())


def test_a_copied_store_reads_its_own_samples_even_with_glob_characters_in_its_path(store, tmp_path):
    store.ingest("ck", "capture", SUMMARY_VERSION, capture_frames("ck"), sample=_sample())
    dest = tmp_path / "copy [1] *" / "gatelens.duckdb"
    dest.parent.mkdir()
    shutil.copy2(store.path, dest)
    shutil.copytree(store.samples_dir, Store(dest).samples_dir)
    shutil.rmtree(store.samples_dir)  # the original's files are gone: the copy must not need them
    reader = Store(dest)
    assert reader.query("SELECT count(*) AS n FROM raw_sample")["n"][0] == 2 * 4
    reader.log_started("x", "capture", 1)  # a writer repoints the stored view too (for other clients)
    with duckdb.connect(str(dest), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM raw_sample").fetchone()[0] == 2 * 4


def test_writer_waits_for_a_reader_then_reports_busy(store):
    store.ingest("ck", "capture", 1, capture_frames("ck"))
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import duckdb, time
        con = duckdb.connect({str(store.path)!r}, read_only=True)
        print("reading", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "reading"
        impatient = Store(store.path, busy_timeout=0.3)
        with pytest.raises(StoreBusy, match=rf"{store.path.name} is busy: PID {holder.pid} holds it open"):
            impatient.ingest("ck", "capture", 1, capture_frames("ck"))
    finally:
        holder.kill()
        holder.wait()
    Store(store.path).ingest("ck", "capture", 1, capture_frames("ck"))  # free again


def test_reading_a_missing_store_says_where(tmp_path):
    with pytest.raises(StoreError, match="no store here yet"):
        Store(tmp_path / "nope.duckdb").query("SELECT 1")


def test_a_store_of_a_newer_gatelens_is_refused_by_writers_and_readers(store):
    store.log_started("ck", "x", 1)
    con = duckdb.connect(str(store.path), config={"storage_compatibility_version": "v1.5.0"})
    con.execute("INSERT INTO schema_migrations VALUES ('9999_from_the_future', now())")
    con.close()
    for use in (lambda s: s.log_finished("ck", "x", 1), lambda s: s.query("FROM runs")):
        with pytest.raises(StoreError, match="newer gatelens .migrations 9999_from_the_future"):
            use(Store(store.path))


def test_many_reading_threads_and_a_writing_process_never_poison_each_other(store):
    """Threads of one process read at once (as a Serve replica's pool does) while another process
    commits in between: every read answers, and every thread's reader keeps the sandbox."""
    import threading

    store.ingest("ck", "capture", 1, capture_frames("ck"))
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        from service.store import Store
        s = Store({str(store.path)!r}, busy_timeout=60)
        for i in range(8):
            s.log_started("w", "x", i)
            s.log_finished("w", "x", i, rows=i)
        print("wrote", flush=True)
    """)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    errors, answers = [], []

    def read(k: int) -> None:
        s = store if k % 2 else Store(store.path, busy_timeout=60)  # a shared Store and own ones
        try:
            for _ in range(10):
                answers.append(s.query("SELECT count(*) AS n FROM unit_stats")["n"][0])
                with s.reader() as con:
                    for sql in ("SELECT * FROM read_csv('/etc/passwd')", "SET enable_external_access = true"):
                        try:
                            con.execute(sql)
                            errors.append(f"thread {k}: {sql} ran")
                        except (duckdb.PermissionException, duckdb.InvalidInputException):
                            pass
        except Exception as e:  # noqa: BLE001 -- every failure is the finding
            errors.append(f"thread {k}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=read, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    out, err = writer.communicate(timeout=120)
    assert errors == []
    assert answers == [2 * 4 * 6] * 8 * 10
    assert writer.returncode == 0 and out.strip() == "wrote", err
    assert store.query("SELECT count(*) AS n FROM analyses WHERE checkpoint_id = 'w'")["n"][0] == 8
