"""The watcher under faults, with real processes: real Ray, real DuckDB, real checkpoints."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analyses.registry import checkpoint_analyses
from cluster.errors import InputError
from service.cli.watch import parse_every
from service.scheduler import ACTOR_NAME, NAMESPACE, WatchConfig, deploy, discover, run_pass
from service.store import Store
from tests_helpers import make_checkpoint

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TABLES = ("checkpoints", "unit_stats", "unit_histograms", "phone_responsibility", "analyses")


def counts(store: Store) -> dict[str, int]:
    return {t: int(store.query(f"SELECT count(*) AS n FROM {t}")["n"][0]) for t in TABLES}


@pytest.fixture(scope="module")
def watched(small_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("watch")
    storage = root / "runs"
    good = [make_checkpoint(small_corpus, storage / "s" / "runs" / f"{cell}_run" / "checkpoint_000000" / "model.pt",
                            cell, k) for k, cell in enumerate(("lstm", "gru"))]
    bad = storage / "s" / "runs" / "broken_run" / "checkpoint_000000" / "model.pt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(good[0].read_bytes()[:3000])  # truncated
    old = time.time() - 120
    for p in (*good, bad):
        os.utime(p, (old, old))
    config = WatchConfig(storage=str(storage), store=str(root / "store.duckdb"), figures=str(root / "figures"),
                         utterances=6, sample=1, settle=5.0).resolved()
    return config, good, bad


@pytest.fixture(scope="module")
def first_pass(ray_cluster, watched):
    lines: list[str] = []
    report = run_pass(watched[0], progress=lambda line: (print(line), lines.append(line)))
    report.lines = lines  # what the pass printed, in order
    return report


def test_a_pass_prints_a_line_per_capture_analysis_and_checkpoint(first_pass):
    """Each good checkpoint: its capture, then each analysis as it finishes, then one line when its
    last is written; the two memory analyses (one shared task) each get their own line."""
    names = list(checkpoint_analyses())
    for cid in first_pass.done:
        mine = [line for line in first_pass.lines if cid in line]
        assert sum(f"{cid} capture: finished" in line for line in mine) == 1
        for name in names:
            assert sum(line.startswith(f"  {cid} {name}: finished (") for line in mine) == 1, name
        last = [i for i, line in enumerate(first_pass.lines) if line.startswith(f"{cid}: ")]
        assert len(last) == 1 and f"{len(names)} of {len(names)} analyses finished" in first_pass.lines[last[0]]
        assert all(i < last[0] for i, line in enumerate(first_pass.lines) if line.startswith(f"  {cid} "))


def test_a_truncated_checkpoint_is_recorded_failed_and_the_good_ones_analysed(first_pass, watched):
    config, good, bad = watched
    report = first_pass
    assert report.error is None
    assert len(report.done) == 2 and list(report.failed) == [str(bad)]
    store = Store(config.store)
    failed = store.query("SELECT checkpoint_id, error FROM analyses WHERE status = 'failed'")
    assert failed.height == 1 and str(bad) in failed["error"][0]
    for cid in report.done:
        assert store.query("SELECT count(*) AS n FROM unit_stats WHERE checkpoint_id = ?", [cid])["n"][0] > 0
        figs = store.query("SELECT analysis, figure_paths FROM analyses WHERE checkpoint_id = ? "
                           "AND status = 'finished' AND figure_paths IS NOT NULL", [cid])
        assert set(figs["analysis"]) == set(checkpoint_analyses())
        assert all(Path(p).is_file() for paths in figs["figure_paths"] for p in paths)


def test_a_second_pass_changes_nothing(first_pass, watched):
    config, good, bad = watched
    store = Store(config.store)
    before = counts(store)
    report = run_pass(config, progress=print)
    assert report.up_to_date == 2 and not report.done
    assert counts(store) == before


def test_a_failing_file_is_not_reloaded_until_it_changes(watched, tmp_path, monkeypatch):
    import service.scheduler as scheduler

    _, good, _ = watched
    bad = tmp_path / "runs" / "s" / "runs" / "broken" / "checkpoint_000000" / "model.pt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(good[0].read_bytes()[:3000])
    os.utime(bad, (time.time() - 120, time.time() - 120))
    config = WatchConfig(storage=str(tmp_path / "runs"), store=str(tmp_path / "s.duckdb"),
                         figures=str(tmp_path / "f"), settle=5.0).resolved()
    loads = []
    real = scheduler.load_checkpoint
    monkeypatch.setattr(scheduler, "load_checkpoint", lambda p: (loads.append(p), real(p))[1])
    assert "truncated" in run_pass(config, progress=print).failed[str(bad)] and len(loads) == 1
    report = run_pass(config, progress=print)
    assert len(loads) == 1 and "failed earlier, file unchanged" in report.failed[str(bad)]
    pending, failed = scheduler.pending_and_failed(config)
    assert any(str(bad.resolve()) in k and "not retried" in k for k in failed)
    # the file changes (still broken): tried once more, then left alone again
    bad.write_bytes(good[0].read_bytes()[:2000])
    os.utime(bad, (time.time() - 120, time.time() - 120))
    run_pass(config, progress=print)
    run_pass(config, progress=print)
    assert len(loads) == 2


def test_the_watcher_loop_lets_ctrl_c_through(monkeypatch):
    import service.scheduler as scheduler

    def interrupted(config, progress=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(scheduler, "run_pass", interrupted)
    with pytest.raises(KeyboardInterrupt):
        scheduler.Watcher({"every": 0.01}).loop()


def test_a_checkpoint_still_being_written_is_not_read(first_pass, watched, tmp_path):
    config, good, _ = watched
    fresh = Path(config.storage) / "s" / "runs" / "fresh_run" / "checkpoint_000000" / "model.pt"
    fresh.parent.mkdir(parents=True)
    fresh.write_bytes(good[1].read_bytes()[:5000])  # half-copied, and just modified
    try:
        before = counts(Store(config.store))
        report = run_pass(config, progress=print)
        assert report.settling == 1 and str(fresh) not in report.failed
        assert counts(Store(config.store)) == before
    finally:
        shutil.rmtree(fresh.parent.parent)


def test_killed_scheduler_leaves_a_consistent_store_and_the_next_pass_finishes(ray_cluster, first_pass, watched,
                                                                               tmp_path, capsys):
    """SIGKILL a `gatelens watch --once` while it captures, analyses and ingests (SQL queries
    arriving all the while are answered or told the store is busy); then the store opens and reads
    back whole, holds no rows of unfinished work beyond what committed, and one more pass completes
    it with exactly the rows of an undisturbed run."""
    from service.cli import main as cli
    from cluster.errors import EXIT_BUSY

    config, good, _ = watched
    store_path, figures = tmp_path / "store.duckdb", tmp_path / "figures"
    cmd = [sys.executable, "-m", "service.cli", "watch", "--once", "--storage", config.storage,
           "--store", str(store_path), "--figures", str(figures), "--utterances", "6", "--settle", "5"]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, answered, busy = time.time() + 240, 0, 0
    while time.time() < deadline and p.poll() is None:
        if figures.is_dir() and any(figures.rglob("*.png")):
            break  # capture ingested, analyses under way: their ingests are next
        if store_path.exists():
            rc = cli(["sql", "--store", str(store_path), "--format", "csv", "--wait", "0.05",
                      "SELECT count(*) AS n FROM analyses"])
            out, err = capsys.readouterr()
            assert rc in (0, EXIT_BUSY), err
            assert "IO Error" not in err and "Traceback" not in err
            answered, busy = answered + (rc == 0), busy + (rc == EXIT_BUSY)
        time.sleep(0.05)
    assert p.poll() is None, "the pass ended before it could be killed:\n" + p.stdout.read()
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    store = Store(store_path)
    with store.reader() as con:
        # DuckDB checksums every block it reads: scanning every table whole is its integrity check
        for (table,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall():
            con.execute(f"SELECT * FROM {table}").fetchall()
        # every finished analysis has its rows: a killed transaction left nothing half-written
        fin = con.sql("SELECT checkpoint_id FROM analyses WHERE analysis = 'capture' AND status = 'finished'").pl()
        for cid in fin["checkpoint_id"]:
            assert con.execute("SELECT count(*) FROM unit_stats WHERE checkpoint_id = ?", [cid]).fetchone()[0] > 0
    # the killed pass's analyses are left running; their owner is gone, and --status says so
    left = store.running()
    assert left.height >= 1 and not left["alive"].any(), left
    assert all(o.startswith(f"{socket.gethostname()}:{p.pid}.") for o in left["owner"]), left  # host:pid.start
    capsys.readouterr()
    assert cli(["watch", "--status", "--storage", config.storage, "--store", str(store_path)]) == 0
    status = capsys.readouterr().out
    assert f"running: {left.height}" in status and status.count("the next pass redoes it") == left.height, status
    again = WatchConfig(**{**config.__dict__, "store": str(store_path), "figures": str(figures)})
    report = run_pass(again, progress=print)
    assert report.error is None and len(report.failed) == 1  # only the truncated file
    printed = capsys.readouterr().out
    for r in left.iter_rows(named=True):  # each orphan said, redone and finished
        assert f"redoing {r['analysis']} of {r['checkpoint_id']}: left running by {r['owner']}" in printed
        assert f"  {r['checkpoint_id']} {r['analysis']}: finished" in printed
    assert store.running().height == 0
    assert store.query("SELECT count(*) AS n FROM analyses WHERE status <> 'finished' AND checkpoint_id IN "
                       "(SELECT checkpoint_id FROM checkpoints)")["n"][0] == 0
    reference = counts(Store(config.store))
    assert counts(store) == reference
    check = subprocess.run([sys.executable, "-c", f"import duckdb; c = duckdb.connect({str(store_path)!r}, "
                            "read_only=True); print(c.execute('SELECT count(*) FROM unit_stats').fetchone()[0])"],
                           capture_output=True, text=True)
    assert check.returncode == 0 and int(check.stdout) == reference["unit_stats"]


def test_every_parses_intervals():
    assert parse_every("10m") == 600 and parse_every("90s") == 90 and parse_every("1h") == 3600
    assert parse_every("5") == 5
    with pytest.raises(InputError, match="expected e.g."):
        parse_every("soon")


def test_watcher_actor_analyses_new_checkpoints_of_a_training_run(ray_cluster, small_corpus, tmp_path):
    """End to end: the watcher runs as a detached actor; a tiny training run writes checkpoints;
    they appear in the store with rows and figures without any further command."""
    from cluster.train import TrainConfig, make_trainer

    storage = tmp_path / "runs"
    config = WatchConfig(storage=str(storage), store=str(tmp_path / "store.duckdb"), figures=str(tmp_path / "figs"),
                         every=2.0, settle=1.0, utterances=4, sample=1,
                         analyses=["cell_distributions", "range_shares"]).resolved()
    actor = deploy(config)
    try:
        again = deploy(config)  # redeploying replaces the running watcher
        assert again._actor_id != actor._actor_id
        actor = again
        train = TrainConfig(corpus=str(small_corpus), cell="gru", layers=1, hidden=8, epochs=2, batch_size=8,
                            max_train_utterances=24, max_eval_utterances=6)
        make_trainer(train, "watched", str(storage / "e2e" / "runs")).fit()
        expected = len(discover(storage))
        assert expected == 3  # two epochs and the final (test) report
        store = Store(config.store)
        deadline, done = time.time() + 300, 0
        while time.time() < deadline:
            time.sleep(2)
            if not Path(config.store).is_file():
                continue
            try:
                # both analyses: the pass runs them as parallel tasks, so either may finish last
                df = store.query("SELECT count(DISTINCT (checkpoint_id, analysis)) // 2 AS n FROM analyses "
                                 "WHERE analysis IN ('range_shares', 'cell_distributions') AND status = 'finished'")
            except Exception:  # busy: the watcher is writing
                continue
            done = int(df["n"][0])
            if done == expected:
                break
        assert done == expected
        rows = store.query("SELECT a.checkpoint_id, a.figure_paths, count(s.unit) AS units FROM analyses a "
                           "JOIN unit_stats s USING (checkpoint_id) WHERE a.analysis = 'cell_distributions' "
                           "GROUP BY ALL")
        assert rows.height == expected and all(r["units"] > 0 for r in rows.iter_rows(named=True))
        assert all(Path(p).is_file() for paths in rows["figure_paths"] for p in paths)
        import ray

        status = ray.get(actor.status.remote())
        assert status["passes"] >= 1 and status["last"]["error"] is None
    finally:
        import ray

        ray.kill(ray.get_actor(ACTOR_NAME, namespace=NAMESPACE), no_restart=True)
