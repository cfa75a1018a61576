"""The store's schema as data: every table, declared where its rows are made, collected here, and
the named, ordered migrations that bring an older store up to it.

- the store's own tables (runs, checkpoints, epoch metrics, the analyses log) are declared below;
- the capture's per-unit tables in ``cluster/tables.py``;
- ``analysis_summary`` there too, and each analysis's own tables in its module (found through
  ``analyses/registry.py``).

A new store gets every declared table and records every migration as applied. An existing store
gets the migrations it lacks, in order, each in one transaction with its ``schema_migrations`` row,
applied by the writer when it opens the file; then any declared table it still lacks is created (a
new table needs no migration, a changed one does), and every table is checked against its
declaration. A reader never changes the file: on a store with pending migrations it says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from cluster.tables import ANALYSIS_SUMMARY, CAPTURE, CAPTURE_TABLES, C, Table, keyed

RUNS = Table("runs", "one training run: architecture, corpus, config", (
    C("run_id", "VARCHAR", "<study>:<run name>", key=True),
    C("arch", "VARCHAR", "lstm | gru | lstm_lazy | lstm_fused"),
    C("layers", "INTEGER", "recurrent layers"), C("hidden", "INTEGER", "units per layer"),
    C("residual", "BOOLEAN", "shortcut connections (Sec. 5.2)"),
    C("seed", "INTEGER", "the training seed"),
    C("corpus_name", "VARCHAR"), C("corpus_sha256", "VARCHAR", "sha256 of the corpus manifest"),
    C("config", "VARCHAR", "JSON: the run's stamps (config, seed, corpus, packages, git revision)"),
    C("status", "VARCHAR", "running | finished | failed"), C("error", "VARCHAR"),
    C("started_at", "TIMESTAMP", "UTC"), C("finished_at", "TIMESTAMP"),
    C("storage_path", "VARCHAR", "where Ray kept the run's results")),
    ("run_id",), primary_key=True)
CHECKPOINTS = Table("checkpoints", "a saved model of a run at an epoch", (
    C("checkpoint_id", "VARCHAR", "<arch>-<layers>x<hidden>[-res]-<sha256 prefix of the file>", key=True),
    C("run_id", "VARCHAR", "runs.run_id (NULL for a checkpoint captured without its run)"),
    C("epoch", "INTEGER"), C("path", "VARCHAR", "the checkpoint file"),
    C("arch", "VARCHAR"), C("layers", "INTEGER"), C("hidden", "INTEGER"), C("residual", "BOOLEAN"),
    C("seed", "INTEGER", "the training seed (from the file's stamps)"),
    C("corpus_name", "VARCHAR"), C("corpus_sha256", "VARCHAR"), C("created_at", "TIMESTAMP"),
    C("extra", "VARCHAR", "JSON: anything else the trainer wants to keep")),
    ("checkpoint_id",), primary_key=True)
EPOCH_METRICS = keyed(
    "epoch_metrics", "frame CE / accuracy / PER after each epoch",
    C("run_id", "VARCHAR", key=True), C("epoch", "INTEGER", key=True),
    C("split", "VARCHAR", "train | dev | test", key=True),
    C("frame_ce", "DOUBLE", "mean cross-entropy per frame (nats)"),
    C("frame_acc", "DOUBLE", "frame accuracy on the targets (tied states)"),
    C("phone_acc", "DOUBLE", "frame accuracy after mapping targets to phones"),
    C("per", "DOUBLE", "phone error rate"), C("frames", "BIGINT"),
    C("seconds", "DOUBLE", "wall time of the epoch (train) or the evaluation"), C("lr", "DOUBLE"),
    C("extra", "VARCHAR", "JSON"), primary_key=True)
UTTERANCE_ERRORS = keyed(
    "utterance_errors", "per scored utterance: the phone errors behind a run's PER (recompute any comparison in SQL)",
    C("run_id", "VARCHAR", key=True), C("split", "VARCHAR", "the split scored (test: best-on-dev weights)", key=True),
    C("utt_id", "VARCHAR", key=True), C("checkpoint_id", "VARCHAR", "the checkpoint scored (the run's final one)"),
    C("ref_len", "BIGINT", "reference phones (SIL removed)"), C("sub", "BIGINT", "substitutions"),
    C("ins", "BIGINT", "insertions"), C("del", "BIGINT", "deletions"), primary_key=True)
ANALYSES_LOG = keyed(
    "analyses", "log: every capture and analysis of every checkpoint, its status, error, times, figures",
    C("checkpoint_id", "VARCHAR", key=True),
    C("analysis", "VARCHAR", "capture, or an analysis's name", key=True),
    C("analysis_version", "INTEGER", key=True),
    C("status", "VARCHAR", "running | finished | failed"), C("error", "VARCHAR"),
    C("params", "VARCHAR", "JSON: split, utterances, rules, ..."), C("rows", "BIGINT", "rows the analysis wrote"),
    C("started_at", "TIMESTAMP"), C("finished_at", "TIMESTAMP"), C("figure_paths", "VARCHAR[]"),
    C("owner", "VARCHAR", "host:pid.start of the process that wrote the row (start: when it started, so "
                          "a reused pid is not taken for it; a running row whose owner is gone is "
                          "orphaned: a killed pass; the next pass redoes it)"),
    primary_key=True)
WATCH_FAILURES = keyed(
    "watch_failures", "checkpoint files the watcher failed on: not tried again until the file changes",
    C("path", "VARCHAR", "the checkpoint file", key=True), C("size", "BIGINT", "bytes, when it failed"),
    C("mtime", "DOUBLE", "modification time (s), when it failed"), C("checkpoint_id", "VARCHAR"),
    C("error", "VARCHAR"), C("failed_at", "TIMESTAMP"), primary_key=True)
SCHEMA_MIGRATIONS = keyed("schema_migrations", "the migrations applied to this store, in order",
                          C("name", "VARCHAR", key=True), C("applied_at", "TIMESTAMP"), primary_key=True)
SAMPLE_VIEW = "raw_sample"  # a view over Parquet files beside the store, made when the first sample lands

CORE = (RUNS, CHECKPOINTS, EPOCH_METRICS, UTTERANCE_ERRORS, ANALYSES_LOG, WATCH_FAILURES)


def _registry():
    # deferred: the analyses import torch and scikit-learn (~3 s); `gatelens sql` reads the store
    # without them, and only a writer needs the analyses' tables
    from analyses.registry import all_analyses

    return all_analyses()


def tables() -> dict[str, Table]:
    """Every table of the store, by name."""
    out = {t.name: t for t in (*CORE, *CAPTURE_TABLES, ANALYSIS_SUMMARY)}
    for a in _registry().values():
        for t in a.tables:
            if t.name in out:
                raise RuntimeError(f"analysis {a.name} declares table {t.name}, which is declared already")
            out[t.name] = t
    out[SCHEMA_MIGRATIONS.name] = SCHEMA_MIGRATIONS
    return out


def owned_tables(analysis: str) -> tuple[Table, ...]:
    """The tables whose rows of a checkpoint and version an analysis (or the capture) replaces."""
    if analysis == CAPTURE:
        return CAPTURE_TABLES
    reg = _registry()
    if analysis not in reg:
        raise KeyError(analysis)
    return reg[analysis].tables


# ---------------------------------------------------------------------------------------------
# Migrations


@dataclass(frozen=True)
class Migration:
    name: str
    doc: str
    apply: Callable  # (connection) -> None, inside the migration's transaction


def _baseline(con) -> None:
    """Nothing to do: a store of schema version 1 (gatelens 0.1.0) is this migration's result."""


def _drop_store_meta(con) -> None:
    con.execute("DROP TABLE IF EXISTS store_meta")


def _seed_columns(con) -> None:
    con.execute("ALTER TABLE runs ADD COLUMN IF NOT EXISTS seed INTEGER")
    con.execute("UPDATE runs SET seed = TRY_CAST(json_extract_string(config, '$.seed') AS INTEGER) WHERE seed IS NULL")
    con.execute("ALTER TABLE checkpoints ADD COLUMN IF NOT EXISTS seed INTEGER")
    # A captured checkpoint names its run by name only (v1 wrote run_id = run name); match on that.
    con.execute("UPDATE checkpoints SET seed = (SELECT any_value(r.seed) FROM runs r "
                "WHERE r.run_id = checkpoints.run_id OR split_part(r.run_id, ':', 2) = checkpoints.run_id) "
                "WHERE seed IS NULL")


def _fold_store_logs(con) -> None:
    # v1 logged a figure's tables under a second name ('trace' for temporal_trace's traces, 'noise'
    # for memory_robustness's noise_impact); one ingest now logs both under the analysis's name.
    con.execute("DELETE FROM analyses WHERE analysis IN ('trace', 'noise')")


def _checkpoint_run_ids(con) -> None:
    # v1 keyed a captured checkpoint's run by its name alone; runs are keyed <study>:<run>.
    con.execute("UPDATE checkpoints SET run_id = json_extract_string(extra, '$.study') || ':' || run_id "
                "WHERE run_id IS NOT NULL AND run_id NOT LIKE '%:%' "
                "AND json_extract_string(extra, '$.study') IS NOT NULL")


def _analysis_owner(con) -> None:
    # Rows from before owners were recorded have none; a running one among them is orphaned
    # (``Store.orphaned``).
    con.execute("ALTER TABLE analyses ADD COLUMN IF NOT EXISTS owner VARCHAR")


MIGRATIONS: tuple[Migration, ...] = (
    Migration("0001_baseline_v1", "the tables of store schema version 1 (gatelens 0.1.0)", _baseline),
    Migration("0002_drop_store_meta", "schema_migrations replaces store_meta's schema_version", _drop_store_meta),
    Migration("0003_seed_columns", "runs.seed and checkpoints.seed: the training seed as a column "
                                   "(it was only inside runs.config)", _seed_columns),
    Migration("0004_fold_store_logs", "drop the analyses-log rows 'trace' and 'noise': each analysis now logs "
                                      "its own tables under its own name", _fold_store_logs),
    Migration("0005_checkpoint_run_ids", "checkpoints.run_id as runs.run_id (<study>:<run>); v1 wrote the run "
                                         "name alone", _checkpoint_run_ids),
    Migration("0006_analysis_owner", "analyses.owner: which process runs an analysis, so that a killed "
                                     "pass's running rows can be told from a live one's", _analysis_owner),
)


def migration_names() -> list[str]:
    return [m.name for m in MIGRATIONS]
