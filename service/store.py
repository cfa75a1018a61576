"""The store: one DuckDB file holding what gatelens learned about every run, checkpoint and unit.

One writer. Ray tasks never open the file: they return polars/Arrow frames, and the process that
launched them ingests a checkpoint's rows in one transaction, replacing the rows that checkpoint
had for the same analysis version (ingesting twice leaves the same rows; a killed ingest leaves
none: DuckDB rolls back a transaction that never committed). The writer holds the file only
while it writes, so queries (``gatelens sql``) get in between; both sides wait for the other with
a bounded retry and then raise ``StoreBusy``.

Tables (keys in brackets; the README has example queries):

  runs             [run_id]                      one training run: architecture, corpus, config
  checkpoints      [checkpoint_id]               a saved model of a run at an epoch
  epoch_metrics    [run_id, epoch, split]        frame CE / accuracy / PER after each epoch
  unit_stats       [checkpoint_id, analysis_version, layer, unit, quantity]
                   count, mean, variance, min, max of c, m, i, f, o, g (Sec. 3.1) per unit, and
                   for c the counts behind Fig. 3's range shares
  layer_stats      [checkpoint_id, analysis_version, layer, quantity]  unit_stats and histograms
                   pooled over a layer's units (Fig. 3 reads 36 rows per checkpoint, not 18k)
  unit_histograms  [..., layer, unit, quantity]  fixed-bin histogram per unit and quantity (Fig. 1-2)
  phone_responsibility [checkpoint_id, analysis_version, rule, layer, unit, phone_id]
                   frames of each phone and the unit's irregular frames on it (Sec. 4.2, Fig. 4-6)
  traces           [checkpoint_id, analysis_version, utt_id, layer, frame]  2-D embedding of the
                   cell vector per frame (Sec. 4.3, Fig. 7, 10)
  noise_impact     [checkpoint_id, analysis_version, utt_id, noise, snr_db, noise_start, layer, frame]
                   cell change caused by an inserted noise segment (Sec. 4.4, Fig. 8)
  analyses         [checkpoint_id, analysis, analysis_version]  log: status, error, times, figures
  raw_sample       (view) per-frame values of a few utterances, from Parquet files (float16)
                   next to the store: <store>.samples/<checkpoint_id>/v<version>.parquet

Keys of the small tables are PRIMARY KEYs. The per-unit tables document their key but carry no
index: an ART index on ~12M responsibility rows makes the file ~5x larger and a re-ingest ~8x
slower (measured), and the single writer guarantees the key (``_check_unique`` before inserting).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 1
DEFAULT_STORE = Path("data/gatelens.duckdb")
DEFAULT_BUSY_TIMEOUT = 30.0  # seconds a writer or reader waits for the other side

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+=@-]{0,199}$")

# Per table: (DDL columns, key columns). Comments say what a column means in the paper's terms.
TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "runs": ("""
        run_id        VARCHAR PRIMARY KEY,
        arch          VARCHAR,     -- lstm | gru | lstm_lazy | lstm_fused
        layers        INTEGER,     -- recurrent layers
        hidden        INTEGER,     -- units per layer
        residual      BOOLEAN,     -- shortcut connections (Sec. 5.2)
        corpus_name   VARCHAR,
        corpus_sha256 VARCHAR,     -- sha256 of the corpus manifest
        config        VARCHAR,     -- JSON: the whole training configuration
        status        VARCHAR,     -- running | finished | failed
        error         VARCHAR,
        started_at    TIMESTAMP,   -- UTC
        finished_at   TIMESTAMP,
        storage_path  VARCHAR      -- where Ray kept the run's results
    """, ("run_id",)),
    "checkpoints": ("""
        checkpoint_id VARCHAR PRIMARY KEY,
        run_id        VARCHAR,     -- runs.run_id (NULL for a checkpoint captured without its run)
        epoch         INTEGER,
        path          VARCHAR,     -- the checkpoint file
        arch          VARCHAR,
        layers        INTEGER,
        hidden        INTEGER,
        residual      BOOLEAN,
        corpus_name   VARCHAR,
        corpus_sha256 VARCHAR,
        created_at    TIMESTAMP,
        extra         VARCHAR      -- JSON: anything else the trainer wants to keep
    """, ("checkpoint_id",)),
    "epoch_metrics": ("""
        run_id        VARCHAR NOT NULL,
        epoch         INTEGER NOT NULL,
        split         VARCHAR NOT NULL,  -- train | dev | test
        frame_ce      DOUBLE,      -- mean cross-entropy per frame (nats)
        frame_acc     DOUBLE,      -- frame accuracy on the targets (tied states)
        phone_acc     DOUBLE,      -- frame accuracy after mapping targets to phones
        per           DOUBLE,      -- phone error rate
        frames        BIGINT,
        seconds       DOUBLE,      -- wall time of the epoch (train) or the evaluation
        lr            DOUBLE,
        extra         VARCHAR,     -- JSON
        PRIMARY KEY (run_id, epoch, split)
    """, ("run_id", "epoch", "split")),
    "unit_stats": ("""
        checkpoint_id    VARCHAR NOT NULL,
        analysis_version INTEGER NOT NULL,
        layer            INTEGER NOT NULL,  -- 1 = lowest recurrent layer
        unit             INTEGER NOT NULL,  -- 0 .. hidden-1
        quantity         VARCHAR NOT NULL,  -- c m i f o g (cell, output, input/forget/output gate, candidate)
        count            BIGINT,   -- frames (non-NaN values) summarised
        n_nan            BIGINT,
        mean             DOUBLE,
        variance         DOUBLE,   -- population variance (ddof 0)
        min              DOUBLE,
        max              DOUBLE,
        n_inside_2       BIGINT,   -- c only: values in (-2, 2)        (Fig. 3, LSTM share)
        n_outside_0_7    BIGINT,   -- c only: values outside (-0.7, 0.7) (Fig. 3, GRU share)
        share_inside_2   DOUBLE,   -- n_inside_2 / count
        share_outside_0_7 DOUBLE   -- n_outside_0_7 / count
    """, ("checkpoint_id", "analysis_version", "layer", "unit", "quantity")),
    "layer_stats": ("""
        checkpoint_id    VARCHAR NOT NULL,
        analysis_version INTEGER NOT NULL,
        layer            INTEGER NOT NULL,
        quantity         VARCHAR NOT NULL,
        units            INTEGER,  -- units pooled
        count            BIGINT,   -- values (units x frames)
        n_nan            BIGINT,
        mean             DOUBLE,
        variance         DOUBLE,
        min              DOUBLE,
        max              DOUBLE,
        n_inside_2       BIGINT,   -- c only: Fig. 3's LSTM share = n_inside_2 / count
        n_outside_0_7    BIGINT,   -- c only: Fig. 3's GRU share = n_outside_0_7 / count
        share_inside_2   DOUBLE,   -- Fig. 3, LSTM: share of the layer's c values in (-2, 2)
        share_outside_0_7 DOUBLE,  -- Fig. 3, GRU: share outside (-0.7, 0.7)
        lo               DOUBLE,
        hi               DOUBLE,
        bins             INTEGER,
        underflow        BIGINT,
        overflow         BIGINT,
        counts           BIGINT[]  -- the layer's pooled histogram
    """, ("checkpoint_id", "analysis_version", "layer", "quantity")),
    "unit_histograms": ("""
        checkpoint_id    VARCHAR NOT NULL,
        analysis_version INTEGER NOT NULL,
        layer            INTEGER NOT NULL,
        unit             INTEGER NOT NULL,
        quantity         VARCHAR NOT NULL,
        lo               DOUBLE,   -- histogram range [lo, hi], bins of width (hi - lo) / bins
        hi               DOUBLE,
        bins             INTEGER,
        underflow        BIGINT,   -- values < lo
        overflow         BIGINT,   -- values > hi
        counts           BIGINT[]  -- counts[k] (1-based in SQL): lo + (k-1) w <= x < lo + k w; last bin closed
    """, ("checkpoint_id", "analysis_version", "layer", "unit", "quantity")),
    "phone_responsibility": ("""
        checkpoint_id    VARCHAR NOT NULL,
        analysis_version INTEGER NOT NULL,
        rule             VARCHAR NOT NULL,  -- irregularity rule: abs>10 (LSTM), abs<0.5 (GRU), pct>99 ...
        quantity         VARCHAR NOT NULL,  -- the value the rule reads (c)
        threshold        DOUBLE,            -- |value| threshold applied (a pct rule's layer percentile)
        layer            INTEGER NOT NULL,
        unit             INTEGER NOT NULL,
        phone_id         INTEGER NOT NULL,  -- id in the corpus phones.txt
        phone            VARCHAR,
        frames           BIGINT,   -- frames of this phone in the capture
        irregular        BIGINT,   -- of those, frames on which the unit was irregular
        responsibility   DOUBLE    -- irregular / frames (Sec. 4.2)
    """, ("checkpoint_id", "analysis_version", "rule", "layer", "unit", "phone_id")),
    "traces": ("""
        checkpoint_id    VARCHAR NOT NULL,
        analysis_version INTEGER NOT NULL,
        utt_id           VARCHAR NOT NULL,
        layer            INTEGER NOT NULL,
        frame            INTEGER NOT NULL,
        phone_id         INTEGER,
        phone            VARCHAR,
        x                DOUBLE,   -- 2-D embedding (t-SNE, Fig. 7) of the layer's cell vector
        y                DOUBLE,
        step             DOUBLE    -- |c_t - c_{t-1}| (L2, original space): how far memory moved
    """, ("checkpoint_id", "analysis_version", "utt_id", "layer", "frame")),
    "noise_impact": ("""
        checkpoint_id    VARCHAR NOT NULL,
        analysis_version INTEGER NOT NULL,
        utt_id           VARCHAR NOT NULL,
        noise            VARCHAR NOT NULL,  -- white | pink | brown | babble
        snr_db           DOUBLE NOT NULL,
        noise_start      INTEGER NOT NULL,  -- first frame of the inserted segment
        noise_frames     INTEGER,
        layer            INTEGER NOT NULL,
        frame            INTEGER NOT NULL,  -- frame of the noisy utterance
        mean_abs_diff    DOUBLE,   -- mean over units of |c_noisy - c_clean| (Fig. 8)
        max_abs_diff     DOUBLE,
        rms_diff         DOUBLE
    """, ("checkpoint_id", "analysis_version", "utt_id", "noise", "snr_db", "noise_start", "layer", "frame")),
    # the analyses' own numbers (smoothness, impact duration, responsible-unit counts...): one long table
    "analysis_summary": ("""
        checkpoint_id    VARCHAR NOT NULL,  -- a checkpoint, or 'study:<name>' for rows of a whole study
        analysis         VARCHAR NOT NULL,  -- the analysis module's NAME
        analysis_version INTEGER NOT NULL,
        label            VARCHAR NOT NULL,  -- utterance, noise condition, rule or run the row is about ('' if none)
        layer            INTEGER NOT NULL,  -- 1 = lowest recurrent layer, 0 = the whole model
        unit             INTEGER NOT NULL,  -- -1 = all units
        phone_id         INTEGER NOT NULL,  -- -1 = all phones
        metric           VARCHAR NOT NULL,
        value            DOUBLE
    """, ("checkpoint_id", "analysis", "analysis_version", "label", "layer", "unit", "phone_id", "metric")),
    "analyses": ("""
        checkpoint_id    VARCHAR NOT NULL,
        analysis         VARCHAR NOT NULL,  -- capture | trace | noise | a figure's name ...
        analysis_version INTEGER NOT NULL,
        status           VARCHAR,   -- running | finished | failed
        error            VARCHAR,
        params           VARCHAR,   -- JSON: split, utterances, rules, ...
        rows             BIGINT,    -- rows the analysis wrote
        started_at       TIMESTAMP,
        finished_at      TIMESTAMP,
        figure_paths     VARCHAR[],
        PRIMARY KEY (checkpoint_id, analysis, analysis_version)
    """, ("checkpoint_id", "analysis", "analysis_version")),
}

# The tables an analysis owns: ingesting it replaces the checkpoint's rows of that version in all.
ANALYSIS_TABLES = {
    "capture": ("unit_stats", "layer_stats", "unit_histograms", "phone_responsibility"),
    "trace": ("traces",),
    "noise": ("noise_impact",),
}
SAMPLE_VIEW = "raw_sample"


class StoreError(RuntimeError):
    """A store that cannot be used as asked; the message names the file (and checkpoint)."""


class StoreBusy(StoreError):
    """Another process held the store for longer than the wait allowed."""


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


def connect(path: Path, read_only: bool, timeout: float, config: dict | None = None) -> duckdb.DuckDBPyConnection:
    """Open the DuckDB file, retrying while another process holds its lock (DuckDB allows one
    writing process, or any number of reading ones). Raises StoreBusy after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only, config=config or {})
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
        delay = min(delay * 2, 0.5)


class Store:
    """The gatelens store at ``path`` (default ``$GATELENS_STORE`` or ``data/gatelens.duckdb``)."""

    def __init__(self, path: str | os.PathLike | None = None, busy_timeout: float = DEFAULT_BUSY_TIMEOUT):
        self.path = Path(path) if path is not None else default_store_path()
        self.busy_timeout = busy_timeout

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
    def reader(self, timeout: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection that can read nothing outside the store and its samples, with
        its configuration locked (what ``gatelens sql`` runs queries on)."""
        if not self.path.is_file():
            raise StoreError(f"{self.path}: no store here yet (a capture or a training run creates it; "
                             f"--store or $GATELENS_STORE point elsewhere)")
        con = connect(self.path, read_only=True, timeout=self.busy_timeout if timeout is None else timeout,
                      config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
        try:
            con.execute(f"SET allowed_directories = [{_sql_str(str(self.samples_dir) + os.sep)}]")
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
            yield con
        finally:
            con.close()

    def query(self, sql: str, params: list | None = None) -> pl.DataFrame:
        """Run a (trusted) read-only query; for analyses and figures."""
        with self.reader() as con:
            return con.sql(sql, params=params or None).pl()

    def _ensure_schema(self, con: duckdb.DuckDBPyConnection) -> None:
        """Create the tables on first use. Within a schema version tables may be added (created
        here when missing); a changed column means a new version, and an old file is refused."""
        exists = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'store_meta'").fetchone()[0]
        row = exists and con.execute("SELECT value FROM store_meta WHERE key = 'schema_version'").fetchone()
        if row and int(row[0]) != SCHEMA_VERSION:
            raise StoreError(f"{self.path}: store schema version {row[0]}, this gatelens writes "
                             f"version {SCHEMA_VERSION}; use a new --store path")
        missing = [t for t in TABLES if not con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [t]).fetchone()[0]]
        if row and not missing:
            return
        con.begin()  # all tables or none
        con.execute("CREATE TABLE IF NOT EXISTS store_meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
        for name in missing:
            con.execute(f"CREATE TABLE IF NOT EXISTS {name} ({TABLES[name][0]})")
        con.execute("INSERT OR REPLACE INTO store_meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
        con.commit()

    # -- training: runs, checkpoints, epoch metrics ---------------------------------------------

    def ingest_run(self, run_row: dict, epochs: pl.DataFrame | None = None) -> None:
        """Insert or replace a run and (if given) all its epoch metrics, in one transaction.

        run_row: columns of ``runs`` (run_id required; dicts/lists in ``config`` become JSON).
        epochs: rows of ``epoch_metrics`` (run_id filled in when absent); replaces the run's rows.
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

    def ingest_analysis(self, checkpoint_id: str, analysis: str, analysis_version: int,
                        frames: dict[str, pl.DataFrame], params: dict | None = None,
                        sample: pa.Table | None = None, checkpoint: dict | None = None) -> dict[str, int]:
        """Replace a checkpoint's rows of one analysis version, and log the analysis finished, in
        one transaction. Returns the rows written per table.

        frames: {table: rows} for tables the analysis owns (``ANALYSIS_TABLES``); every row must
            carry this checkpoint_id and analysis_version, and keys must be unique. Owned tables
            not given lose their rows of this version (the analysis no longer produces them).
        sample: raw per-frame values (``cluster.capture.sample_table``), written as Parquet and
            swapped in after the commit.
        checkpoint: a ``checkpoints`` row registered if the checkpoint is not there yet.
        """
        _check_id(checkpoint_id, "checkpoint_id")
        if analysis not in ANALYSIS_TABLES:
            raise StoreError(f"unknown analysis {analysis!r} for ingest (known: {', '.join(ANALYSIS_TABLES)}); "
                             f"analyses that only draw figures use log_started/log_finished")
        owned = ANALYSIS_TABLES[analysis]
        extra = set(frames) - set(owned)
        if extra:
            raise StoreError(f"analysis {analysis} does not own the tables {sorted(extra)} (it owns {owned})")
        for table, df in frames.items():
            _check_rows(self.path, table, df, checkpoint_id, analysis_version)
        tmp = self._write_sample_tmp(sample, checkpoint_id, analysis_version) if sample is not None else None
        written = {}
        try:
            with self.transaction() as con:
                if checkpoint is not None:
                    self._register_checkpoint(con, {"checkpoint_id": checkpoint_id, **checkpoint}, replace=False)
                for table in owned:
                    con.execute(f"DELETE FROM {table} WHERE checkpoint_id = ? AND analysis_version = ?",
                                [checkpoint_id, analysis_version])
                    if table in frames and frames[table].height:
                        _insert(con, table, frames[table])
                    written[table] = frames[table].height if table in frames else 0
                self._log(con, checkpoint_id, analysis, analysis_version, "finished", params=params,
                          rows=sum(written.values()), finish=True)
        except BaseException:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            raise
        if tmp is not None:
            self._publish_sample(tmp, checkpoint_id, analysis_version)
        elif analysis == "capture":  # a capture without a sample replaces the earlier one's too
            self.drop_sample(checkpoint_id, analysis_version)
        return written

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
        con.execute("INSERT OR REPLACE INTO analyses VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [
            checkpoint_id, analysis, version, status, error,
            json.dumps(params) if params is not None else o_params,
            rows if rows is not None else o_rows,
            o_started or now, now if finish else None,
            list(figure_paths) if figure_paths is not None else o_figs])

    # -- raw sample -----------------------------------------------------------------------------

    def _write_sample_tmp(self, sample: pa.Table, checkpoint_id: str, version: int) -> Path:
        tmp_dir = self.samples_dir / ".incoming"  # outside the view's glob
        tmp_dir.mkdir(parents=True, exist_ok=True)
        tmp = tmp_dir / f"{checkpoint_id}.v{version}.{uuid.uuid4().hex}.parquet"
        pq.write_table(sample, tmp, compression="zstd")
        return tmp

    def _publish_sample(self, tmp: Path, checkpoint_id: str, version: int) -> None:
        final = self.samples_dir / checkpoint_id / f"v{version}.parquet"
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        # The view binds its columns when created, so it is created once a file exists; it reads
        # every sample file by glob (absolute path, so the file also works from another cwd).
        glob = str(self.samples_dir / "*" / "v*.parquet")
        with self.transaction() as con:
            con.execute(f"CREATE OR REPLACE VIEW {SAMPLE_VIEW} AS "
                        f"SELECT * FROM read_parquet({_sql_str(glob)}, union_by_name = true)")

    def drop_sample(self, checkpoint_id: str, version: int) -> None:
        """Delete a checkpoint's raw sample (and the view, once no sample is left)."""
        path = self.samples_dir / checkpoint_id / f"v{version}.parquet"
        if not path.is_file():
            return
        path.unlink()
        if not any(self.samples_dir.glob("*/v*.parquet")):
            with self.transaction() as con:
                con.execute(f"DROP VIEW IF EXISTS {SAMPLE_VIEW}")

    def sample_values(self, checkpoint_id: str, utt_id: str, layer: int, quantity: str = "c",
                      analysis_version: int | None = None):
        """[T, H] float32 values and [T] phone ids of one sampled utterance (for the trace analysis)."""
        import numpy as np

        if quantity not in ("c", "m", "i", "f", "o", "g"):
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


def _check_id(value, what: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise StoreError(f"{what} {value!r} must be 1-200 characters of letters, digits and ._:+=@- "
                         f"(it names files and SQL rows)")
    return value


def _jsonify(df: pl.DataFrame, col: str) -> pl.DataFrame:
    if col in df.columns and df.schema[col] != pl.String:
        return df.with_columns(pl.col(col).map_elements(json.dumps, return_dtype=pl.String))
    return df


def _columns(table: str) -> list[str]:
    cols = []
    for line in TABLES[table][0].splitlines():
        line = line.split("--")[0].strip()
        if line and not line.upper().startswith("PRIMARY KEY"):
            cols.append(line.split()[0])
    return cols


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
    key = list(TABLES[table][1])
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
