"""The store: one DuckDB file holding what gatelens learned about every run, checkpoint and unit.

One writer. Ray tasks never open the file: they return polars/Arrow frames, and the process that
launched them ingests a checkpoint's rows in one transaction, replacing the rows that checkpoint
had for the same analysis version (ingesting twice leaves the same rows; a killed ingest leaves
none: DuckDB rolls back a transaction that never committed). The writer holds the file only
while it writes, so queries (``gatelens sql``) get in between; both sides wait for the other with
a bounded retry and then raise ``StoreBusy``.

The tables are declared as data (``service/schema.py`` collects them: the store's own, the
capture's, and each analysis's), and a writer that opens an older store applies the named
migrations it lacks first. The README lists the tables with their keys and example queries.

Keys of the small tables are PRIMARY KEYs. The per-unit tables carry no index (an ART index on
~12M responsibility rows makes the file ~5x larger and a re-ingest ~8x slower, measured); the
single writer guarantees their keys (``_check_rows`` before inserting).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from cluster.processes import owner, owner_alive
from cluster.errors import EXIT_BUSY, BusyError, InputError
from cluster.tables import ANALYSIS_SUMMARY as SUMMARY, CAPTURE, QUANTITIES, Table
from service import schema
from service.schema import SAMPLE_VIEW

INCOMING = ".incoming"  # samples written, not yet published (outside the views' file lists)

DEFAULT_STORE = Path("data/gatelens.duckdb")
DEFAULT_BUSY_TIMEOUT = 30.0  # seconds a writer or reader waits for the other side
MARKER_LIFE = 4 * DEFAULT_BUSY_TIMEOUT  # seconds a writer's marker is believed (it waits for the file, then goes)
# New files are written in the v1.5.0 storage format (2.0 writes a newer one by default), so DuckDB
# 1.5+ clients -- the `duckdb` CLI, notebooks, DBeaver -- open the store too. Every connection in a
# process must pass the same configuration, so readers pass it as well. It sets the format of a new
# file only: an existing file keeps the format it was created with (``convert_storage`` copies it).
STORAGE_VERSION = "v1.5.0"
STORAGE_COMPATIBILITY = {"storage_compatibility_version": STORAGE_VERSION}

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+=@-]{0,199}$")


class StoreError(InputError):
    """A store that cannot be used as asked; the message names the file (and checkpoint)."""


class StoreBusy(StoreError, BusyError):
    """Another process held the store for longer than the wait allowed."""

    exit_status = EXIT_BUSY


def default_store_path() -> Path:
    return Path(os.environ.get("GATELENS_STORE", DEFAULT_STORE))


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _lock_holder(err: Exception) -> str | None:
    """'Could not set lock on file ...: Conflicting lock is held in ... (PID 123)' -> 'PID 123'."""
    msg = str(err)
    if "Could not set lock" not in msg and "Conflicting lock" not in msg:
        return None
    m = re.search(r"\(PID (\d+)\)", msg)
    return f"PID {m.group(1)}" if m else "another process"


def connect(path: Path, read_only: bool, timeout: float, config: dict | None = None,
            waited: float | None = None) -> duckdb.DuckDBPyConnection:
    """Open the DuckDB file, retrying while another process holds its lock (DuckDB allows one
    writing process, or any number of reading ones). Raises StoreBusy after ``timeout`` seconds
    (saying it waited ``waited`` seconds, when the caller waited part of that before)."""
    deadline = time.monotonic() + timeout
    timeout = timeout if waited is None else waited
    delay = 0.02
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only, config={**STORAGE_COMPATIBILITY, **(config or {})})
            # No progress bar: DuckDB draws it on stdout for queries over 2 s, in the middle of
            # `gatelens sql --format csv` output or of a capture's report.
            con.execute("SET enable_progress_bar = false")
            return con
        except duckdb.IOException as e:
            holder = _lock_holder(e)
            if holder is None:
                raise StoreError(f"{path}: cannot open the store: {e}") from None
            if time.monotonic() + delay > deadline:
                raise StoreBusy(f"the store {path} is busy: {holder} holds it "
                                f"{'for writing' if read_only else 'open'}; waited {timeout:g} s. "
                                f"Try again when it is done.") from None
        except duckdb.ConnectionException as e:
            # This process already holds the file with another configuration (a writer and a
            # reader in one process): the same wait applies, the other side is this process.
            if time.monotonic() + delay > deadline:
                raise StoreBusy(f"the store {path} is busy in this process ({e}); waited {timeout:g} s") from None
        time.sleep(delay)
        delay = min(delay * 2, 0.1)  # a writer waiting for readers to drain should not sleep long past it


# -- owners: which process holds a writer's marker or runs an analysis: ``owner`` and ``owner_alive``
# (cluster.processes, shared with the corpus writers' staging folders)


# -- readers: one read-only instance per store file and process -----------------------------------
#
# DuckDB keeps one database instance per file per process: a second ``duckdb.connect`` of the file
# joins the first one's instance, and its settings (``lock_configuration`` above all) are the
# instance's, not the connection's. So each connection configuring itself after opening (as the
# readers once did) fails as soon as two threads read at once ("Cannot change configuration option
# ... the configuration has been locked"). Hand-written because DuckDB documents exactly this as the
# thread-safe way and offers no pool: the first reader opens the instance and sets its sandbox once,
# before anyone else can use it; every reader gets its own ``cursor()`` (a connection of its own,
# with its own temporary views); the last one to leave closes the instance, so the file is not held
# between reads and a writing process gets in. A writer waiting to commit leaves a marker
# (``_writing``): readers then stop joining, the instance drains and closes, and new readers wait
# (their bounded wait) until the writer is done, so a steady stream of readers cannot starve it.

_READERS = threading.Condition()
_OPEN: dict[str, "_Instance"] = {}


class _Instance:
    def __init__(self, key: tuple):
        self.key, self.con, self.users, self.draining = key, None, 0, False


def _writers_dir(path: Path) -> Path:
    return path.with_name(path.name + ".writers")


def _writer_waiting(path: Path) -> bool:
    """Whether a live writer left its marker (stale ones are removed: of a process that is gone, or
    older than ``MARKER_LIFE`` on any host, since a marker spans only a writer's wait for the file
    and a killed writer's pid may be reused or live on another host)."""
    folder = _writers_dir(path)
    try:
        names = os.listdir(folder)
    except OSError:
        return False
    for name in names:
        who = name.rsplit("-", 1)[0].replace("@", ":")
        try:
            since = (folder / name).stat().st_mtime
        except OSError:
            continue
        if time.time() - since < MARKER_LIFE and owner_alive(who):
            return True
        with contextlib.suppress(OSError):
            (folder / name).unlink()
    return False


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """A writer's marker while it waits for and holds the file (see the readers' note above)."""
    folder = _writers_dir(path)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f"{owner().replace(':', '@')}-{uuid.uuid4().hex[:8]}"
    marker.touch()
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            marker.unlink()


def _shared_reader(path: Path, key: tuple, timeout: float, open_instance):
    """A cursor of this process's read-only instance of ``path`` with configuration ``key``, opening
    it (``open_instance(remaining seconds)``) if none is open; raises StoreBusy after ``timeout``."""
    name = str(path.absolute())
    deadline = time.monotonic() + timeout
    with _READERS:
        while True:
            inst = _OPEN.get(name)
            waiting = _writer_waiting(path)
            if inst is not None and inst.con is not None and inst.key == key and not inst.draining and not waiting:
                inst.users += 1
                try:
                    return inst, inst.con.cursor()
                except BaseException:
                    inst.users -= 1
                    raise
            if inst is None and not waiting:
                inst = _OPEN[name] = _Instance(key)
                break
            if inst is not None and inst.con is not None and waiting:
                inst.draining = True  # let the writer in: no new readers join, the last one closes it
            left = deadline - time.monotonic()
            if left <= 0:
                why = "a writer is committing" if waiting else "this process reads it with other settings"
                raise StoreBusy(f"the store {path} is busy: {why}; waited {timeout:g} s. Try again when it is done.")
            _READERS.wait(min(left, 0.05))
    try:
        con = open_instance(max(deadline - time.monotonic(), 0.0))
    except BaseException:
        with _READERS:
            del _OPEN[name]
            _READERS.notify_all()
        raise
    with _READERS:
        inst.con, inst.users = con, 1
        _READERS.notify_all()
        try:
            return inst, con.cursor()
        except BaseException:
            _release(name, inst)
            raise


def _release(name: str, inst: "_Instance") -> None:
    """Called with ``_READERS`` held: one reader fewer; the last one closes the instance."""
    inst.users -= 1
    if inst.users <= 0:
        if _OPEN.get(name) is inst:
            del _OPEN[name]
        inst.con.close()
        _READERS.notify_all()


class Store:
    """The gatelens store at ``path`` (default ``$GATELENS_STORE`` or ``data/gatelens.duckdb``)."""

    def __init__(self, path: str | os.PathLike | None = None, busy_timeout: float = DEFAULT_BUSY_TIMEOUT):
        self.path = Path(path) if path is not None else default_store_path()
        self.busy_timeout = busy_timeout
        self._schema_checked = False
        self._reader_checked = False

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    @property
    def samples_dir(self) -> Path:
        """Raw-sample Parquet files: <store>.samples/<checkpoint_id>/v<version>.parquet."""
        return self.path.with_suffix(".samples").absolute()

    # -- connections ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A write connection inside one transaction: committed when the block ends, rolled back
        (nothing kept) if it raises or the process dies. The file is held only for the block."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _writing(self.path):
            con = connect(self.path, read_only=False, timeout=self.busy_timeout)
        try:
            self._ensure_schema(con)
            con.begin()
            try:
                yield con
            except BaseException:
                con.rollback()
                raise
            con.commit()
        finally:
            con.close()

    @contextlib.contextmanager
    def reader(self, timeout: float | None = None, settings: dict[str, str] | None = None,
               samples: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection that can read nothing outside the store and its samples, with
        its configuration locked (what ``gatelens sql`` runs queries on). ``settings`` (DuckDB
        name -> value, e.g. memory_limit) are applied before the lock, so no query can change them;
        a value DuckDB refuses raises ``duckdb.Error``. ``samples``: make the raw-sample view of
        this store's own files (a listing of its samples folder; skipped by queries that don't
        read it). Any number of threads may read at once: each gets its own cursor of the
        process's one sandboxed instance of the file (the readers' note above ``Store``)."""
        if not self.path.is_file():
            raise StoreError(f"{self.path}: no store here yet (a capture or a training run creates it; "
                             f"--store or $GATELENS_STORE point elsewhere)")
        settings = {str(k): str(v) for k, v in (settings or {}).items()}
        for name in settings:
            if not re.fullmatch(r"[a-z_]+", name):
                raise StoreError(f"not a DuckDB setting name: {name!r}")

        wait = self.busy_timeout if timeout is None else timeout

        def open_instance(left: float) -> duckdb.DuckDBPyConnection:
            con = connect(self.path, read_only=True, timeout=left, waited=wait,
                          config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
            try:
                for name, value in settings.items():
                    con.execute(f"SET {name} = {_sql_str(value)}")
                con.execute(f"SET allowed_directories = [{_sql_str(str(self.samples_dir) + os.sep)}]")
                con.execute("SET enable_external_access = false")
                con.execute("SET lock_configuration = true")
            except BaseException:
                con.close()
                raise
            return con

        key = (str(self.samples_dir), tuple(sorted(settings.items())))
        inst, con = _shared_reader(self.path, key, wait, open_instance)
        try:
            self._check_reader(con)
            view = self._sample_view_sql(temp=True) if samples else None
            if view:
                con.execute(view)
            yield con
        finally:
            con.close()
            with _READERS:
                _release(str(self.path.absolute()), inst)

    def query(self, sql: str, params: list | None = None) -> pl.DataFrame:
        """Run a (trusted) read-only query; for analyses and figures."""
        with self.reader(samples=SAMPLE_VIEW in sql) as con:
            return con.sql(sql, params=params or None).pl()

    def has_relation(self, name: str) -> bool:
        """Whether the store holds a table or view of that name (the sample view appears only once
        a sample was written)."""
        if name == SAMPLE_VIEW:  # the readers' own view exists exactly when sample files do
            return self.path.is_file() and bool(self.sample_files())
        df = self.query("SELECT count(*) AS n FROM (SELECT table_name AS name FROM duckdb_tables() UNION ALL "
                        "SELECT view_name FROM duckdb_views()) WHERE name = ?", [name])
        return bool(df["n"][0])

    # -- schema and migrations ------------------------------------------------------------------

    def migrate(self) -> list[str]:
        """Apply the migrations this store lacks (what any writer does on opening); returns their names."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _writing(self.path):
            con = connect(self.path, read_only=False, timeout=self.busy_timeout)
        try:
            return self._ensure_schema(con)
        finally:
            con.close()

    def storage_version(self) -> str | None:
        """The DuckDB storage format of the file (e.g. 'v1.5.0+'); None when there is no file."""
        if not self.path.is_file():
            return None
        con = connect(self.path, read_only=True, timeout=self.busy_timeout)
        try:
            return con.execute("SELECT tags['storage_version'] FROM duckdb_databases() "
                               "WHERE database_name = current_database()").fetchone()[0]
        finally:
            con.close()

    def convert_storage(self) -> bool:
        """Rewrite a store created in a newer storage format than ``STORAGE_VERSION`` (stores made
        before this setting existed) so that 1.5+ clients can open it. DuckDB cannot lower a file's
        format in place, so the tables are copied into a new file, which then replaces the old one;
        the old file is held for writing during the copy, so no write is lost. True if it ran."""
        if self.storage_version() in (None, f"{STORAGE_VERSION}+"):
            return False
        tmp = self.path.with_name(f".{self.path.name}.convert-{uuid.uuid4().hex[:8]}")
        deadline = time.monotonic() + self.busy_timeout
        con = duckdb.connect(":memory:", config=STORAGE_COMPATIBILITY)
        try:
            while True:
                try:
                    con.execute(f"ATTACH {_sql_str(str(self.path))} AS src")
                    break
                except duckdb.IOException as e:
                    if _lock_holder(e) is None or time.monotonic() > deadline:
                        raise StoreBusy(f"the store {self.path} is busy: {_lock_holder(e)} holds it; "
                                        f"waited {self.busy_timeout:g} s") from None
                    time.sleep(0.2)
            con.execute(f"ATTACH {_sql_str(str(tmp))} AS dst (STORAGE_VERSION {_sql_str(STORAGE_VERSION)})")
            con.execute("COPY FROM DATABASE src TO dst")
            con.execute("DETACH dst")
            os.replace(tmp, self.path)  # while src is still held: nobody writes in between
            con.execute("DETACH src")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            con.close()
        return True

    def pending_migrations(self) -> list[str]:
        """The migrations a writer would apply to this store (all of them for a new file)."""
        if not self.path.is_file():
            return schema.migration_names()
        con = connect(self.path, read_only=True, timeout=self.busy_timeout)
        try:
            return self._pending(con)[0]
        finally:
            con.close()

    def _pending(self, con) -> tuple[list[str], bool]:
        """(pending migration names, fresh): a file with no tables is fresh."""
        names = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        known = schema.migration_names()
        if not names:
            return known, True
        if schema.SCHEMA_MIGRATIONS.name in names:
            applied = [r[0] for r in con.execute("SELECT name FROM schema_migrations ORDER BY name").fetchall()]
        elif "store_meta" in names:
            version = con.execute("SELECT value FROM store_meta WHERE key = 'schema_version'").fetchone()
            if not version or version[0] != "1":
                raise StoreError(f"{self.path}: store schema version {version and version[0]!r} is not one this "
                                 f"gatelens knows")
            applied = known[:1]  # what schema version 1 is: the baseline
        else:
            raise StoreError(f"{self.path}: not a gatelens store (a DuckDB file without its tables); "
                             f"--store or $GATELENS_STORE point elsewhere")
        unknown = sorted(set(applied) - set(known))
        if unknown:
            raise StoreError(f"{self.path}: written by a newer gatelens (migrations {', '.join(unknown)} are "
                             f"unknown here); upgrade gatelens to use it")
        return [m for m in known if m not in applied], False

    def _ensure_schema(self, con: duckdb.DuckDBPyConnection) -> list[str]:
        """Bring the file up to the declared schema: a new file gets every table; an older one the
        migrations it lacks, each in its own transaction; then missing tables are created and every
        table is checked against its declaration. Checked once per Store object."""
        if self._schema_checked:
            return []
        pending, fresh = self._pending(con)
        declared = schema.tables()
        if fresh:
            con.begin()  # all tables or none
            for t in declared.values():
                con.execute(t.ddl())
            con.executemany("INSERT INTO schema_migrations VALUES (?, ?)", [[m, _now()] for m in pending])
            con.commit()
            applied = []
        else:
            applied = []
            if schema.SCHEMA_MIGRATIONS.name not in {r[0] for r in con.execute(
                    "SELECT table_name FROM duckdb_tables()").fetchall()}:
                con.begin()
                con.execute(schema.SCHEMA_MIGRATIONS.ddl())
                con.execute("INSERT INTO schema_migrations VALUES (?, ?)", [schema.migration_names()[0], _now()])
                con.commit()
            for m in schema.MIGRATIONS:
                if m.name not in pending or m.name == schema.migration_names()[0]:
                    continue
                con.begin()
                try:
                    m.apply(con)
                    con.execute("INSERT INTO schema_migrations VALUES (?, ?)", [m.name, _now()])
                    con.commit()
                except BaseException as e:
                    con.rollback()
                    raise StoreError(f"{self.path}: migration {m.name} failed, nothing of it was kept: "
                                     f"{type(e).__name__}: {e}") from e
                applied.append(m.name)
            con.begin()
            for t in declared.values():
                con.execute(t.ddl())  # tables declared since (a new table needs no migration)
            con.commit()
        _check_declared(self.path, con, declared)
        self._repair_samples(con)
        self._refresh_sample_view(con)
        self._schema_checked = True
        return applied

    def _check_reader(self, con) -> None:
        """A reader never changes the file: on a store that needs migrating it says so. Checked
        once per Store object (the writer's check covers it too)."""
        if self._schema_checked or self._reader_checked:
            return
        pending, fresh = self._pending(con)
        if not pending:
            self._reader_checked = True
        elif not fresh:
            raise StoreError(f"{self.path}: written by an older gatelens; it needs the migrations "
                             f"{', '.join(pending)}, which any writing command applies "
                             f"(`gatelens migrate --store {self.path}`)")

    def sample_files(self) -> list[Path]:
        """The published raw-sample files: <samples>/<checkpoint_id>/v<version>.parquet."""
        if not self.samples_dir.is_dir():
            return []
        return sorted(p for p in self.samples_dir.glob("*/v*.parquet") if p.parent.name != INCOMING)

    def _sample_view_sql(self, temp: bool) -> str | None:
        """The raw-sample view over this store's files, listed one by one (a glob would break on a
        store path holding '[' or '*', and would read whatever else matched)."""
        files = self.sample_files()
        if not files:
            return None
        listed = ", ".join(_sql_str(str(f)) for f in files)
        return (f"CREATE OR REPLACE {'TEMP ' if temp else ''}VIEW {SAMPLE_VIEW} AS "
                f"SELECT * FROM read_parquet([{listed}], union_by_name = true)")

    def _refresh_sample_view(self, con) -> None:
        """The stored view (what other DuckDB clients read) lists this store's sample files; gatelens's
        own readers make a temporary one at every open instead, so a store that was copied or moved
        reads its own samples even before a writer has opened it."""
        sql = self._sample_view_sql(temp=False)
        row = con.execute("SELECT sql FROM duckdb_views() WHERE view_name = ? AND NOT temporary",
                          [SAMPLE_VIEW]).fetchone()
        if sql is None:
            if row:
                con.execute(f"DROP VIEW {SAMPLE_VIEW}")
        elif not row or row[0].split(" AS ", 1)[-1] != sql.split(" AS ", 1)[-1]:
            con.execute(sql)

    def _repair_samples(self, con) -> None:
        """Finish what a writer killed between its commit and the sample's rename left: a sample
        whose capture the log calls finished (naming that file) is published; other leftovers older
        than an hour (no live writer holds them that long) are removed."""
        incoming = self.samples_dir / INCOMING
        for tmp in sorted(incoming.glob("*.parquet")) if incoming.is_dir() else []:
            cid, _, rest = tmp.name.partition(".v")
            version = rest.split(".", 1)[0]
            row = con.execute("SELECT 1 FROM analyses WHERE checkpoint_id = ? AND analysis = ? AND "
                              "analysis_version = TRY_CAST(? AS INTEGER) AND status = 'finished' AND "
                              "json_extract_string(params, '$.sample_file') = ?",
                              [cid, CAPTURE, version, tmp.name]).fetchone()
            if row:
                final = self.samples_dir / cid / f"v{version}.parquet"
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, final)
            elif time.time() - tmp.stat().st_mtime > 3600:
                tmp.unlink(missing_ok=True)

    # -- training: runs, checkpoints, epoch metrics ---------------------------------------------

    def ingest_run(self, run_row: dict, epochs: pl.DataFrame | None = None,
                   utterances: pl.DataFrame | None = None) -> None:
        """Insert or replace a run and (if given) all its epoch metrics and per-utterance errors, in
        one transaction.

        run_row: columns of ``runs`` (run_id required; dicts/lists in ``config`` become JSON).
        epochs: rows of ``epoch_metrics`` (run_id filled in when absent); replaces the run's rows.
        utterances: rows of ``utterance_errors`` of this run; replaces the run's rows.
        """
        run_id = _check_id(run_row.get("run_id"), "run_id")
        row = {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in run_row.items()}
        with self.transaction() as con:
            _upsert(con, "runs", pl.DataFrame([row], infer_schema_length=None))
            if epochs is not None:
                if "run_id" not in epochs.columns:
                    epochs = epochs.with_columns(pl.lit(run_id).alias("run_id"))
                if epochs.filter(pl.col("run_id") != run_id).height:
                    raise StoreError(f"{self.path}: epoch metrics of run {run_id} name other runs")
                con.execute("DELETE FROM epoch_metrics WHERE run_id = ?", [run_id])
                _insert(con, "epoch_metrics", _jsonify(epochs, "extra"))
            if utterances is not None:
                if utterances.filter(pl.col("run_id") != run_id).height:
                    raise StoreError(f"{self.path}: utterance errors of run {run_id} name other runs")
                con.execute("DELETE FROM utterance_errors WHERE run_id = ?", [run_id])
                _insert(con, "utterance_errors", utterances)

    def add_epoch_metrics(self, epochs: pl.DataFrame) -> None:
        """Insert or replace some (run_id, epoch, split) rows, e.g. after each epoch."""
        with self.transaction() as con:
            _upsert(con, "epoch_metrics", _jsonify(epochs, "extra"))

    def register_checkpoint(self, row: dict, replace: bool = True) -> None:
        """Insert (or replace) a checkpoint. row: columns of ``checkpoints``; ``extra`` may be a dict.
        replace=False keeps an existing row (a capture must not overwrite what training wrote)."""
        _check_id(row.get("checkpoint_id"), "checkpoint_id")
        with self.transaction() as con:
            self._register_checkpoint(con, row, replace)

    def _register_checkpoint(self, con, row: dict, replace: bool) -> None:
        row = {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in row.items()}
        row.setdefault("created_at", _now())
        _upsert(con, "checkpoints", pl.DataFrame([row], infer_schema_length=None), replace=replace)

    # -- analyses: the per-unit tables, traces, noise impact, and the log ------------------------

    def ingest(self, checkpoint_id: str, analysis: str, analysis_version: int,
               tables: dict[str, pl.DataFrame] | None = None, summary: pl.DataFrame | None = None,
               params: dict | None = None, figures: list[str] | None = None, sample: pa.Table | None = None,
               checkpoint: dict | None = None) -> dict[str, int]:
        """Replace what one analysis (or the capture) of a checkpoint wrote at a version, and log it
        finished, in one transaction: its tables' rows, its ``analysis_summary`` rows and its log
        entry land together or not at all. Returns the rows written per table.

        tables: {table: rows} for tables the analysis owns (``service.schema.owned_tables``); every
            row must carry this checkpoint_id and analysis_version, and keys must be unique. Owned
            tables not given lose their rows of this version (the analysis no longer produces them).
        summary: ``analysis_summary`` rows (registered analyses; their earlier rows are replaced).
        sample: raw per-frame values (``cluster.capture.sample_table``), written as Parquet and
            swapped in after the commit.
        checkpoint: a ``checkpoints`` row registered if the checkpoint is not there yet.
        """
        _check_id(checkpoint_id, "checkpoint_id")
        tables = tables or {}
        try:
            owned = [t.name for t in schema.owned_tables(analysis)]
        except KeyError:
            raise StoreError(f"unknown analysis {analysis!r} for ingest: neither the capture nor a registered "
                             f"analysis") from None
        extra = set(tables) - set(owned)
        if extra:
            raise StoreError(f"analysis {analysis} does not own the tables {sorted(extra)} (it owns {owned})")
        for table, df in tables.items():
            _check_rows(self.path, table, df, checkpoint_id, analysis_version)
        if summary is not None:
            _check_summary(self.path, summary, checkpoint_id, analysis, analysis_version)
        tmp = self._write_sample_tmp(sample, checkpoint_id, analysis_version) if sample is not None else None
        if tmp is not None:  # the log names the file: a crash before its rename is repaired on the next open
            params = {**(params or {}), "sample_file": tmp.name}
        written = {}
        try:
            with self.transaction() as con:
                if checkpoint is not None:
                    self._register_checkpoint(con, {"checkpoint_id": checkpoint_id, **checkpoint}, replace=False)
                for table in owned:
                    con.execute(f"DELETE FROM {table} WHERE checkpoint_id = ? AND analysis_version = ?",
                                [checkpoint_id, analysis_version])
                    if table in tables and tables[table].height:
                        _insert(con, table, tables[table])
                    written[table] = tables[table].height if table in tables else 0
                if summary is not None:
                    con.execute(f"DELETE FROM {SUMMARY.name} WHERE checkpoint_id = ? AND analysis = ? "
                                f"AND analysis_version = ?", [checkpoint_id, analysis, analysis_version])
                    if summary.height:
                        _insert(con, SUMMARY.name, summary)
                    written[SUMMARY.name] = summary.height
                self._log(con, checkpoint_id, analysis, analysis_version, "finished", params=params,
                          rows=sum(written.values()), figure_paths=figures, finish=True)
        except BaseException:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            raise
        if tmp is not None:
            self._publish_sample(tmp, checkpoint_id, analysis_version)
        elif analysis == CAPTURE:  # a capture without a sample replaces the earlier one's too
            self.drop_sample(checkpoint_id, analysis_version)
        return written

    def ingest_output(self, out) -> dict[str, int]:
        """An analysis's ``analyses.common.Output`` (handed back by its Ray task), in one transaction
        (``ingest``)."""
        return self.ingest(out.checkpoint_id, out.analysis, out.version, out.tables, out.summary, out.params,
                           [f.path for f in out.figures])

    def log_started(self, checkpoint_id: str, analysis: str, analysis_version: int, params: dict | None = None) -> None:
        """Mark an analysis running (started_at now; error and figures cleared)."""
        with self.transaction() as con:
            self._log(con, checkpoint_id, analysis, analysis_version, "running", params=params, start=True)

    def log_finished(self, checkpoint_id: str, analysis: str, analysis_version: int,
                     figure_paths: list[str] | None = None, rows: int | None = None) -> None:
        with self.transaction() as con:
            self._log(con, checkpoint_id, analysis, analysis_version, "finished",
                      figure_paths=figure_paths, rows=rows, finish=True)

    def log_failed(self, checkpoint_id: str, analysis: str, analysis_version: int, error: str | BaseException) -> None:
        with self.transaction() as con:
            self._log(con, checkpoint_id, analysis, analysis_version, "failed",
                      error=str(error) or type(error).__name__, finish=True)

    def _log(self, con, checkpoint_id, analysis, version, status, *, params=None, error=None, rows=None,
             figure_paths=None, start=False, finish=False) -> None:
        _check_id(checkpoint_id, "checkpoint_id")
        now = _now()
        old = con.execute("SELECT params, rows, started_at, figure_paths FROM analyses WHERE checkpoint_id = ? "
                          "AND analysis = ? AND analysis_version = ?", [checkpoint_id, analysis, version]).fetchone()
        o_params, o_rows, o_started, o_figs = old if old and not start else (None, None, None, None)
        con.execute("INSERT OR REPLACE INTO analyses (checkpoint_id, analysis, analysis_version, status, error, "
                    "params, rows, started_at, finished_at, figure_paths, owner) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [
            checkpoint_id, analysis, version, status, error,
            json.dumps(params) if params is not None else o_params,
            rows if rows is not None else o_rows,
            o_started or now, now if finish else None,
            list(figure_paths) if figure_paths is not None else o_figs, owner()])

    # -- orphans: running rows of a process that is gone --------------------------------------------

    def running(self) -> pl.DataFrame:
        """The log's running rows (checkpoint_id, analysis, analysis_version, owner, started_at) with
        ``alive``: whether their owner still runs (``owner_alive``; a row from before owners were
        recorded has none, and is taken as orphaned). On another host an owner counts as gone once
        its row has run for a day."""
        if not self.path.is_file() or not self.has_relation("analyses"):
            return pl.DataFrame(schema={"checkpoint_id": pl.String, "analysis": pl.String,
                                        "analysis_version": pl.Int32, "owner": pl.String,
                                        "started_at": pl.Datetime, "alive": pl.Boolean})
        df = self.query("SELECT checkpoint_id, analysis, analysis_version, owner, started_at FROM analyses "
                        "WHERE status = 'running' ORDER BY started_at, checkpoint_id, analysis")
        epoch = datetime(1970, 1, 1)
        alive = [owner_alive(r["owner"], stale_after=86400,
                             since=(r["started_at"] - epoch).total_seconds() if r["started_at"] else None)
                 for r in df.iter_rows(named=True)]
        return df.with_columns(pl.Series("alive", alive, dtype=pl.Boolean))

    def reap_orphans(self) -> pl.DataFrame:
        """Log ``failed`` every running row whose owner is gone (a pass killed mid-analysis), saying
        so, so that the next pass redoes it; returns those rows. A row a live process runs stays."""
        gone = self.running().filter(~pl.col("alive"))
        if gone.height:
            with self.transaction() as con:
                for r in gone.iter_rows(named=True):
                    still = con.execute("SELECT owner FROM analyses WHERE checkpoint_id = ? AND analysis = ? AND "
                                        "analysis_version = ? AND status = 'running'",
                                        [r["checkpoint_id"], r["analysis"], r["analysis_version"]]).fetchone()
                    if still is None or still[0] != r["owner"]:
                        continue  # finished or restarted meanwhile
                    self._log(con, r["checkpoint_id"], r["analysis"], r["analysis_version"], "failed",
                              error=f"orphaned: left running by {r['owner'] or 'a process of an older gatelens'}, "
                                    f"which is gone (killed mid-analysis); redone by the next pass",
                              finish=True)
        return gone

    # -- the watcher's failures -------------------------------------------------------------------

    def record_watch_failure(self, path: Path, size: int, mtime: float, checkpoint_id: str | None, error: str) -> None:
        with self.transaction() as con:
            con.execute("INSERT OR REPLACE INTO watch_failures VALUES (?, ?, ?, ?, ?, ?)",
                        [str(path), size, mtime, checkpoint_id, error, _now()])

    def clear_watch_failure(self, path: Path) -> None:
        with self.transaction() as con:
            con.execute("DELETE FROM watch_failures WHERE path = ?", [str(path)])

    def watch_failures(self) -> dict[str, tuple[int, float, str]]:
        """path -> (size, mtime, error) of the files the watcher failed on."""
        if not self.path.is_file() or not self.has_relation("watch_failures"):
            return {}
        df = self.query("SELECT path, size, mtime, error FROM watch_failures ORDER BY failed_at")
        return {r[0]: (r[1], r[2], r[3]) for r in df.iter_rows()}

    # -- raw sample -----------------------------------------------------------------------------

    def _write_sample_tmp(self, sample: pa.Table, checkpoint_id: str, version: int) -> Path:
        tmp_dir = self.samples_dir / INCOMING
        tmp_dir.mkdir(parents=True, exist_ok=True)
        tmp = tmp_dir / f"{checkpoint_id}.v{version}.{uuid.uuid4().hex}.parquet"
        pq.write_table(sample, tmp, compression="zstd")
        return tmp

    def _publish_sample(self, tmp: Path, checkpoint_id: str, version: int) -> None:
        final = self.samples_dir / checkpoint_id / f"v{version}.parquet"
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        # The view binds its columns when created, so it is created once a file exists.
        with self.transaction() as con:
            self._refresh_sample_view(con)

    def drop_sample(self, checkpoint_id: str, version: int) -> None:
        """Delete a checkpoint's raw sample (and the view, once no sample is left)."""
        path = self.samples_dir / checkpoint_id / f"v{version}.parquet"
        if not path.is_file():
            return
        path.unlink()
        with self.transaction() as con:
            self._refresh_sample_view(con)

    def sample_values(self, checkpoint_id: str, utt_id: str, layer: int, quantity: str = "c",
                      analysis_version: int | None = None):
        """[T, H] float32 values and [T] phone ids of one sampled utterance (for the trace analysis)."""
        if quantity not in QUANTITIES:
            raise StoreError(f"unknown quantity {quantity!r}")
        version_sql = "AND analysis_version = ?" if analysis_version is not None else ""
        params = [checkpoint_id, utt_id, layer] + ([analysis_version] if analysis_version is not None else [])
        df = self.query(f"SELECT frame, phone_id, {quantity} AS v FROM {SAMPLE_VIEW} WHERE checkpoint_id = ? "
                        f"AND utt_id = ? AND layer = ? {version_sql} ORDER BY frame", params)
        if df.height == 0:
            raise StoreError(f"{self.path}: no raw sample of utterance {utt_id} layer {layer} for checkpoint {checkpoint_id}")
        return np.asarray(df["v"].to_list(), dtype=np.float32), df["phone_id"].to_numpy()


# -- helpers ------------------------------------------------------------------------------------


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def check_id(value, what: str) -> str:
    """``value`` if it can name store rows and sample files, else a StoreError saying why."""
    return _check_id(value, what)


def _check_id(value, what: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise StoreError(f"{what} {value!r} must be 1-200 characters of letters, digits and ._:+=@- "
                         f"(it names files and SQL rows)")
    return value


def _jsonify(df: pl.DataFrame, col: str) -> pl.DataFrame:
    if col in df.columns and df.schema[col] != pl.String:
        return df.with_columns(pl.col(col).map_elements(json.dumps, return_dtype=pl.String))
    return df


def _table(name: str) -> Table:
    declared = schema.tables()
    if name not in declared:
        raise StoreError(f"no table {name!r} in the store's schema (it has {', '.join(declared)})")
    return declared[name]


def _columns(table: str) -> list[str]:
    return _table(table).column_names


def _check_declared(path: Path, con, declared: dict[str, Table]) -> None:
    """Every declared table exists with its declared columns: a changed declaration without its
    migration is caught on the first open, not by a failing insert later."""
    have: dict[str, dict[str, str]] = {}
    for table, column, dtype in con.execute(
            "SELECT table_name, column_name, data_type FROM duckdb_columns() WHERE schema_name = 'main'").fetchall():
        have.setdefault(table, {})[column] = dtype
    for t in declared.values():
        cols = have.get(t.name, {})
        missing = [c.name for c in t.columns if c.name not in cols]
        wrong = [f"{c.name} is {cols[c.name]}, declared {c.type}" for c in t.columns
                 if c.name in cols and cols[c.name] != c.type]
        if missing or wrong:
            raise StoreError(f"{path}: table {t.name} differs from its declaration (missing {missing}, {wrong}); "
                             f"a migration in service/schema.py is missing")


def _check_summary(path: Path, s: pl.DataFrame, checkpoint_id: str, analysis: str, version: int) -> None:
    bad = s.filter((pl.col("checkpoint_id") != checkpoint_id) | (pl.col("analysis") != analysis)
                   | (pl.col("analysis_version") != version))
    dup = s.select(SUMMARY.key).is_duplicated()
    if bad.height or dup.any():
        raise StoreError(f"{path}: {analysis} of checkpoint {checkpoint_id}: summary rows name another "
                         f"checkpoint/analysis or repeat a key "
                         f"(e.g. {s.filter(dup).row(0) if dup.any() else bad.row(0)})")


def _check_rows(path: Path, table: str, df: pl.DataFrame, checkpoint_id: str, version: int) -> None:
    """The rows of an analysis table: right columns, this checkpoint and version, unique keys."""
    cols = _columns(table)
    missing, unknown = set(cols) - set(df.columns), set(df.columns) - set(cols)
    if missing or unknown:
        raise StoreError(f"{path}: rows for {table} of checkpoint {checkpoint_id}: "
                         f"missing columns {sorted(missing)}, unknown columns {sorted(unknown)}")
    if df.height == 0:
        return
    other = df.filter((pl.col("checkpoint_id") != checkpoint_id) | (pl.col("analysis_version") != version))
    if other.height:
        raise StoreError(f"{path}: rows for {table} of checkpoint {checkpoint_id} version {version} include "
                         f"{other.height} rows of another checkpoint/version (e.g. {other.row(0)[:2]})")
    key = list(_table(table).key)
    dup = df.select(key).is_duplicated()
    if dup.any():
        raise StoreError(f"{path}: rows for {table} of checkpoint {checkpoint_id} repeat the key {key}: "
                         f"e.g. {df.filter(dup).select(key).row(0)}")


def _insert(con, table: str, df: pl.DataFrame) -> None:
    unknown = set(df.columns) - set(_columns(table))
    if unknown:
        raise StoreError(f"table {table} has no columns {sorted(unknown)} (it has {_columns(table)})")
    name = f"incoming_{uuid.uuid4().hex[:8]}"
    con.register(name, df.to_arrow())
    try:
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM {name}")
    finally:
        con.unregister(name)


def _upsert(con, table: str, df: pl.DataFrame, replace: bool = True) -> None:
    unknown = set(df.columns) - set(_columns(table))
    if unknown:
        raise StoreError(f"table {table} has no columns {sorted(unknown)} (it has {_columns(table)})")
    name = f"incoming_{uuid.uuid4().hex[:8]}"
    con.register(name, df.to_arrow())
    try:
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        con.execute(f"{verb} INTO {table} BY NAME SELECT * FROM {name}")
    finally:
        con.unregister(name)
