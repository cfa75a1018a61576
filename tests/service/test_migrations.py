"""Stores survive upgrades: a store written by gatelens 0.1.0 (``tests/fixtures/store_v1``) is
refused by readers until migrated, then migrates in named steps, answers the README's example
queries, and opens in a DuckDB 1.x client; a failing migration keeps nothing of itself."""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from cluster.errors import EXIT_INPUT
from service import schema
from service.cli import main as gatelens
from service.sql import run_query
from service.store import STORAGE_VERSION, Store, StoreError

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "store_v1"


@pytest.fixture
def old_store(tmp_path) -> Store:
    path = tmp_path / "gatelens.duckdb"
    with gzip.open(FIXTURE / "gatelens.duckdb.gz") as src, open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    shutil.copytree(FIXTURE / "gatelens.samples", tmp_path / "gatelens.samples")
    return Store(path)


def readme_queries() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sql\n(.*?)```", text, flags=re.S)
    assert blocks, "the README has no ```sql block of example queries"
    chunks = [q.strip() for b in blocks for q in b.split(";")]
    return [q for q in chunks if any(line.strip() and not line.strip().startswith("--") for line in q.splitlines())]


def test_a_reader_on_an_old_store_says_how_to_migrate_and_changes_nothing(old_store, capsys):
    before = old_store.path.read_bytes()
    assert gatelens(["sql", "--store", str(old_store.path), "SELECT count(*) FROM runs"]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert "older gatelens" in err and "0002_drop_store_meta" in err and "gatelens migrate" in err
    assert len(err.strip().splitlines()) == 1
    assert old_store.path.read_bytes() == before


def test_the_old_store_migrates_and_answers_the_readme_queries(old_store, capsys):
    assert old_store.pending_migrations() == schema.migration_names()[1:]
    assert old_store.storage_version() == "v2.0.0+"
    assert gatelens(["migrate", "--store", str(old_store.path)]) == 0
    out = capsys.readouterr().out
    assert "applied 0002_drop_store_meta, 0003_seed_columns" in out and STORAGE_VERSION in out
    store = Store(old_store.path)
    assert store.pending_migrations() == [] and store.storage_version() == f"{STORAGE_VERSION}+"
    applied = store.query("SELECT name FROM schema_migrations ORDER BY name")["name"].to_list()
    assert applied == schema.migration_names()

    # the data came along, and the migrations did their work
    assert store.query("SELECT count(*) AS n FROM phone_responsibility")["n"][0] == 1248
    runs = store.query("SELECT run_id, seed FROM runs ORDER BY run_id")
    assert runs["run_id"].to_list() == ["fixture:gru_L1_H16_s0", "fixture:lstm_L1_H16_s0"] and runs["seed"].to_list() == [0, 0]
    cks = store.query("SELECT c.run_id, c.seed FROM checkpoints c JOIN runs r USING (run_id)")
    assert cks.height == 2 and cks["seed"].to_list() == [0, 0]
    assert not store.has_relation("store_meta")
    assert store.query("SELECT count(*) AS n FROM analyses WHERE analysis IN ('trace', 'noise')")["n"][0] == 0
    # the raw-sample view now reads this store's samples, wherever the file was written
    assert store.query("SELECT count(DISTINCT (checkpoint_id, utt_id)) AS n FROM raw_sample")["n"][0] == 4

    queries = readme_queries()
    assert len(queries) >= 6
    for q in queries:
        run_query(q, store)  # each one runs (the README's ids may name no stored checkpoint)
    assert run_query(queries[0], store).num_rows == 2  # Fig. 3: one row per (arch, layer)

    # a second migrate has nothing to do
    assert gatelens(["migrate", "--store", str(store.path)]) == 0
    assert "schema up to date" in capsys.readouterr().out


def test_a_migrated_store_opens_in_a_duckdb_1x_client(old_store):
    duckdb_cli = shutil.which("duckdb", path=str(Path(sys.executable).parent))
    if duckdb_cli is None:
        pytest.fail("the duckdb CLI (the test extra's duckdb-cli) is not installed in this environment")
    old_store.migrate()
    refused = subprocess.run([duckdb_cli, "-init", "/dev/null", "-readonly", str(old_store.path), "-c", "SELECT 1"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "version number" in refused.stderr  # the 2.0 format, before converting
    assert old_store.convert_storage()
    out = subprocess.run([duckdb_cli, "-init", "/dev/null", "-readonly", "-csv", str(old_store.path), "-c",
                          "SELECT arch, layer, counts[1] >= 0 AS ok FROM layer_stats JOIN checkpoints "
                          "USING (checkpoint_id) WHERE quantity = 'c' ORDER BY ALL"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["arch,layer,ok", "gru,1,true", "lstm,1,true"]


def test_a_new_store_records_every_migration_and_is_written_in_the_1_5_format(tmp_path):
    store = Store(tmp_path / "new.duckdb")
    store.log_started("ck", "capture", 1)
    assert store.pending_migrations() == [] and store.storage_version() == f"{STORAGE_VERSION}+"


def test_a_failing_migration_keeps_nothing_of_itself(old_store, monkeypatch):
    def breaks(con):
        con.execute("ALTER TABLE runs ADD COLUMN doomed INTEGER")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS + (schema.Migration("9000_breaks", "fails", breaks),))
    with pytest.raises(StoreError, match="migration 9000_breaks failed, nothing of it was kept: RuntimeError: disk on fire"):
        old_store.migrate()
    con = duckdb.connect(str(old_store.path), read_only=True)
    try:
        cols = [r[0] for r in con.execute("SELECT column_name FROM duckdb_columns() WHERE table_name = 'runs'").fetchall()]
        applied = [r[0] for r in con.execute("SELECT name FROM schema_migrations").fetchall()]
    finally:
        con.close()
    assert "doomed" not in cols and "9000_breaks" not in applied
    assert "0005_checkpoint_run_ids" in applied  # the ones before it stay applied


def test_a_declaration_changed_without_its_migration_is_caught(tmp_path, monkeypatch):
    Store(tmp_path / "s.duckdb").log_started("ck", "capture", 1)
    changed = schema.Table(schema.RUNS.name, schema.RUNS.doc, schema.RUNS.columns + (schema.C("new_col", "DOUBLE"),),
                           schema.RUNS.key, primary_key=True)
    monkeypatch.setattr(schema, "CORE", (changed, *schema.CORE[1:]))
    with pytest.raises(StoreError, match=r"table runs differs from its declaration \(missing \['new_col'\]"):
        Store(tmp_path / "s.duckdb").log_started("ck", "capture", 1)
