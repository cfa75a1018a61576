"""Training on a real local Ray cluster: a tiny grid end to end, and a worker killed mid-run."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import polars as pl
import torch
import pytest

from cluster.errors import InputError
from cluster.grid import PROFILES, run_study, stack_name, stacks, trial_configs
from cluster.train import EPOCHS_FILE, RUN_FILE, UTTERANCES_FILE, TrainConfig, make_trainer
from cluster.models import load_checkpoint
from cluster.runs import RunDir, collect_results as collect, final_checkpoint_ids, iter_runs, studies_results
from service.results import format_table

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_grid(small_corpus, tmp_path_factory):
    """One ``gatelens grid`` of the tiny profile for this module's two grid tests (one start of Ray
    Tune instead of two): lstm and gru at one layer, three stacked seeds each, on whole utterances
    (two trials, six runs). Returns its storage, store, exit status, console, and the ResultGrid its
    ``run_study`` returned (seen by a wrapper that calls the real one)."""
    import service.cli.runs as runs_cli
    from service.cli import main as gatelens

    root = tmp_path_factory.mktemp("tiny_grid")
    returned = []

    def run_study_seen(*args, **kwargs):
        returned.append(run_study(*args, **kwargs))
        return returned[-1]

    common = ["--storage", root / "runs", "--store", root / "s.duckdb"]
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err):
        mp.setattr(runs_cli, "run_study", run_study_seen)
        status = gatelens([str(a) for a in ["grid", "--study", "mini", "--profile", "tiny", "--cells", "lstm,gru",
                                            "--layers", "1", "--seeds", "0,1,2", "--corpus", small_corpus, *common]])
    assert len(returned) == 1
    return {"storage": root / "runs", "store": root / "s.duckdb", "common": common, "status": status,
            "err": err.getvalue(), "grid": returned[0][1]}


def test_tiny_grid_end_to_end_and_results_equal_what_trials_reported(tiny_grid, small_corpus):
    storage, grid = tiny_grid["storage"], tiny_grid["grid"]
    assert tiny_grid["status"] == 0, tiny_grid["err"][-3000:]
    assert grid is not None and not grid.errors, grid.errors
    reported = {name: m for r in grid for name, m in r.metrics["results"].items()}  # each seed's, by run name
    assert len(grid.get_dataframe()) == 2  # the ResultGrid view users read has both trials
    assert len(reported) == 6
    table = collect(storage, "mini")
    assert table.height == 6 and set(table["cell"]) == {"lstm", "gru"}
    for row in table.iter_rows(named=True):
        m = reported[row["run"]]
        assert m["final"]
        assert row["test_per"] == pytest.approx(m["test_per"])
        assert row["test_frame_acc"] == pytest.approx(m["test_frame_acc"])
        assert row["best_epoch"] == m["best_epoch"]
        assert 0.0 <= row["test_frame_acc"] <= 1.0 and row["test_per"] >= 0.0
    run = storage / "mini" / "runs" / table["run"][0]
    stamp = (run / RUN_FILE).read_text()
    for key in ('"seed"', '"manifest_sha256"', '"torch"', '"git_revision"', '"config"'):
        assert key in stamp
    text = format_table(table, "mini")
    assert "LSTM" in text and "GRU" in text
    # into a fresh store, twice: one row per run and per epoch and split, equal to what the trials wrote
    from service.results import ingest_study
    from service.store import Store

    store = Store(storage.parent / "again.duckdb")
    assert ingest_study(store, storage, "mini") == 6 and ingest_study(store, storage, "mini") == 6
    stored = store.query("SELECT run_id, split, epoch, per, frame_acc FROM epoch_metrics ORDER BY ALL")
    assert stored.height == 12  # 1 dev epoch + the test row, per run
    for row in table.iter_rows(named=True):
        test_row = stored.filter((pl.col("run_id") == f"mini:{row['run']}") & (pl.col("split") == "test"))
        assert test_row["per"][0] == pytest.approx(row["test_per"])
    # every scored test utterance's errors are in the store, and they sum to the run's PER
    per_utt = store.query("SELECT run_id, count(*) AS n, sum(sub + ins + del) / sum(ref_len) AS per, "
                          "any_value(checkpoint_id) AS ck FROM utterance_errors WHERE split = 'test' GROUP BY run_id")
    assert per_utt.height == 6
    for row in table.iter_rows(named=True):
        r = per_utt.filter(pl.col("run_id") == f"mini:{row['run']}").row(0, named=True)
        assert r["n"] == 12 and r["per"] == pytest.approx(row["test_per"])
        assert r["ck"].startswith(f"{row['cell']}-1x16-")
    # a second call finds every run finished and trains nothing
    _, again = run_study("mini", "tiny", storage, corpus=str(small_corpus), seeds=(0, 1, 2),
                         custom=[{"cell": "lstm", "layers": 1}, {"cell": "gru", "layers": 1}])
    assert again is None


def test_study_grids_mirror_the_paper():
    t1 = trial_configs("table1", PROFILES["paper"])
    assert {(c.cell, c.layers) for c in t1} == {(c, n) for c in ("lstm", "gru") for n in (1, 2, 4, 6)}
    assert all(c.hidden == 512 for c in t1)
    t2 = trial_configs("table2", PROFILES["study"])
    assert {(c.cell, c.layers) for c in t2} == {(c, n) for c in ("lstm", "lstm_lazy") for n in (1, 2, 4)}
    t3 = trial_configs("table3", PROFILES["paper"])
    assert len({(c.cell, c.layers, c.residual) for c in t3}) == 8 and {c.residual for c in t3} == {False, True}
    assert len(t3) == 8 * 3 and {c.seed for c in t3} == {0, 1, 2}  # the paper profile's seeds
    assert {c.seed for c in trial_configs("table1", PROFILES["demo"], seeds=(3, 4))} == {3, 4}
    assert {c.seed for c in trial_configs("table1", PROFILES["demo"], overrides={"seed": 7})} == {7}
    with pytest.raises(InputError, match="distinct"):
        trial_configs("table1", PROFILES["demo"], seeds=(1, 1))
    demo = trial_configs("table1", PROFILES["demo"])  # make demo: 3 seeds of every point, so claims have intervals
    assert {(c.cell, c.layers, c.seed) for c in demo} == {(c, n, s) for c in ("lstm", "gru") for n in (1, 2)
                                                          for s in (0, 1, 2)}
    study = trial_configs("table1", PROFILES["study"])
    assert {(c.cell, c.layers) for c in study} == {(c, n) for c in ("lstm", "gru") for n in (1, 2, 4)}
    assert {c.seed for c in study} == {0, 1, 2, 3, 4}
    # stopped by newbob on slot-weighted streams, not by the cap
    assert all(c.schedule == "newbob" and c.newbob_keep == 3 and c.stream_loss == "slots" and c.epochs == 12
               and c.max_train_utterances is None for c in study)
    # one trial per grid point, its seeds stacked; the longest first (most layers, lstm before gru)
    trials = stacks(study, Path("/runs"))
    assert [(t.cell, t.layers) for t in trials] == [("lstm", 4), ("gru", 4), ("lstm", 2), ("gru", 2), ("lstm", 1),
                                                   ("gru", 1)]
    assert all(t.stack_seeds == (0, 1, 2, 3, 4) and t.runs_dir == "/runs" for t in trials)
    assert stack_name(trials[0]) == "lstm_L4_H128_cw40_s0-1-2-3-4"
    with pytest.raises(InputError, match="unknown training option"):
        TrainConfig.from_dict({"layrs": 3})


def test_killed_worker_resumes_every_seed_from_its_last_checkpoint(small_corpus, tmp_path):
    """A trial of three stacked seeds on carried-state streams (the tiny grid above trains whole
    utterances), its worker killed after a checkpoint: every seed resumes from it (its epoch starts
    its streams from zero state), and each ends as an ordinary run."""
    runs_dir = tmp_path / "study" / "runs"
    config = TrainConfig(corpus=str(small_corpus), cell="gru", layers=1, hidden=16, epochs=4, batch_size=8,
                         chunk_width=20, max_train_utterances=48, max_eval_utterances=12, patience=10,
                         pid_dir=str(tmp_path / "pids"), stack_seeds=(0, 1, 2), runs_dir=str(runs_dir))
    trainer = make_trainer(config, "killed", str(tmp_path / "study" / "stacks"))
    stack = tmp_path / "study" / "stacks" / "killed"
    killed = {}

    def kill_after_first_checkpoint():
        deadline = time.time() + 300
        while time.time() < deadline:
            if list(stack.glob("checkpoint_*/train_state.pt")) and (tmp_path / "pids" / "rank0.pid").exists():
                time.sleep(1.0)  # Ray has registered it
                pid = int((tmp_path / "pids" / "rank0.pid").read_text())
                os.kill(pid, signal.SIGKILL)
                killed["pid"] = pid
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    result = trainer.fit()
    killer.join(timeout=1)
    assert killed, "the worker was never killed"
    assert int((tmp_path / "pids" / "rank0.pid").read_text()) != killed["pid"]  # a new worker took over
    assert result.error is None and result.metrics["final"]
    names = ["gru_L1_H16_cw20_s0", "gru_L1_H16_cw20_s1", "gru_L1_H16_cw20_s2"]
    assert sorted(result.metrics["results"]) == names
    finals = []
    for name in names:
        run = runs_dir / name
        epochs = pl.read_parquet(run / EPOCHS_FILE)
        assert epochs.filter(pl.col("split") == "dev")["epoch"].to_list() == [1, 2, 3, 4]
        stamp = json.loads((run / RUN_FILE).read_text())
        assert stamp["config"]["chunk_width"] == 20 and stamp["seed"] == int(name[-1])
        assert "stack_seeds" not in stamp["config"] and stamp["config"]["run_dir"] == str(run)
        assert pl.read_parquet(run / UTTERANCES_FILE).height == 12  # test scored on whole utterances, as ever
        assert (epochs["train_frame_ce"].drop_nulls() > 0).all()
        rd = RunDir("study", name, run)
        assert rd.finished and rd.final_checkpoint.meta.is_final and len(rd.checkpoint_files()) == 5
        assert rd.final_checkpoint.meta.metrics["test_per"] == pytest.approx(result.metrics["results"][name]["test_per"])
        resumed = [load_checkpoint(f)[1].metrics.get("resumed_from_epoch") for f in rd.checkpoint_files()[:-1]]
        assert resumed[0] == 0 and resumed[-1] >= 1, resumed  # the last epochs ran in the new worker
        finals.append(rd.final_checkpoint.checkpoint_id)
    assert len(set(finals)) == 3  # three runs, three checkpoint ids


def test_a_planted_pickle_in_the_training_state_is_refused_and_never_runs(tmp_path):
    """train_state.pt loads as plain data only: a pickle that would create a file is refused."""
    import os
    import pickle

    from cluster.models import CheckpointError
    from cluster.train import load_train_state

    marker = tmp_path / "ran"

    class Planted:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "train_state.pt"
    torch.save({"epoch": 1, "payload": Planted()}, bad, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="train_state.pt: not a plain-data training state"):
        load_train_state(bad)
    assert not marker.exists()
    good = tmp_path / "good.pt"
    torch.save({"optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}, "epoch": 2, "history": [{"a": 1.0}],
                "best_state": {"w": torch.ones(2)}, "scheduler": None, "best_acc": 0.5, "stale": 0}, good)
    assert load_train_state(good)["epoch"] == 2


def test_a_tiny_grid_of_three_stacked_seeds_writes_three_ordinary_runs(tiny_grid, capsys):
    """One trial trains the three seeds of a grid point side by side; results, the store and the
    claims' readers see three ordinary runs per point."""
    from service.cli import main as gatelens

    storage, common = tiny_grid["storage"], tiny_grid["common"]
    assert tiny_grid["status"] == 0, tiny_grid["err"][-3000:]
    names = [f"{c}_L1_H16_s{s}" for c in ("gru", "lstm") for s in (0, 1, 2)]
    table = collect(storage, "mini")
    assert sorted(table["run"]) == names and sorted(table["seed"]) == [0, 0, 1, 1, 2, 2]
    for cell in ("gru", "lstm"):
        seeds = table.filter(pl.col("cell") == cell)
        assert seeds["test_per"].n_unique() > 1 or seeds["test_frame_acc"].n_unique() > 1
    # the console: the log file named first, a line per seed and epoch and per finished seed, no Tune tables
    err = tiny_grid["err"]
    log = Path(re.search(r"Ray's messages: (\S+)", err).group(1))
    assert log.parent == storage / "mini" / "logs" and log.is_file()
    for run in names:
        assert re.search(rf"\] {run} +epoch 1/1  dev accuracy [\d.]+ %", err), err
        assert re.search(rf"\] {run} +done \([1-6]/6\): test PER [\d.]+ %", err), err
    assert sorted(int(n) for n in re.findall(r" done \((\d)/6\)", err)) == [1, 2, 3, 4, 5, 6]  # counted over the grid
    assert "Trial status" not in err and "Configuration for experiment" not in err
    assert "trained 6 runs in" in err and "(2 trials)" in err
    assert "starting 2 trials (3 seeds each), " in err
    for cell in ("gru", "lstm"):
        assert re.search(rf"\] {cell}_L1_H16_s0-1-2 +starting: Ray Train starts its workers", err)
    capsys.readouterr()
    assert gatelens([str(a) for a in ["results", "--study", "mini", *common]]) == 0
    out = capsys.readouterr().out
    assert "Seeds" in out and "[" in out and "mean over seeds" in out
    for label in ("GRU", "LSTM"):
        line = next(l for l in out.splitlines() if l.startswith(label))
        assert line.split()[3] == "3"
    assert gatelens([str(a) for a in ["results", "--study", "mini", "--per-seed", "--format", "csv", *common]]) == 0
    assert pl.read_csv(io.StringIO(capsys.readouterr().out)).height == 6
    from service.store import Store

    store = Store(tiny_grid["store"])  # what the grid command itself ingested
    assert store.query("SELECT seed FROM runs ORDER BY seed")["seed"].to_list() == [0, 0, 1, 1, 2, 2]
    assert store.query("SELECT count(*) AS n FROM utterance_errors")["n"][0] == 6 * 12
    # what the claims read of a study's runs: one final checkpoint each, the seeds' results
    ids = final_checkpoint_ids(storage, ["mini"])
    assert len(ids) == 6 and sorted(i.split("-")[0] for i in ids) == ["gru"] * 3 + ["lstm"] * 3
    assert all(i.startswith(("gru-1x16-", "lstm-1x16-")) for i in ids)
    assert sorted(studies_results(storage, ["mini"])["seed"]) == [0, 0, 1, 1, 2, 2]
    # each seed's first checkpoint says where its trial's start-up went (what bench/study.py prints)
    for run in iter_runs(storage, "mini"):
        m = load_checkpoint(run.checkpoint_files()[0])[1].metrics
        assert m["startup_process_started"] <= m["startup_loop_entered"] <= m["startup_model_ready"], m
    # the trials' own storage is not a run
    for cell in ("gru", "lstm"):
        assert (storage / "mini" / "stacks" / f"{cell}_L1_H16_s0-1-2").is_dir()
    assert not list((storage / "mini" / "stacks").rglob("model.pt"))


def test_train_prints_one_line_per_epoch_and_keeps_rays_messages_in_its_log(small_corpus, tmp_path, capsys):
    from service.cli import main as gatelens

    assert gatelens([str(a) for a in ["train", "--corpus", small_corpus, "--cell", "gru", "--layers", "1",
                                      "--hidden", "8", "--epochs", "2", "--set", "max_train_utterances=16",
                                      "--set", "max_eval_utterances=6", "--storage", tmp_path / "runs",
                                      "--store", tmp_path / "s.duckdb"]]) == 0
    captured = capsys.readouterr()
    err, out = captured.err, captured.out
    log = Path(re.search(r"Ray's messages: (\S+)", err).group(1))
    assert log.parent == tmp_path / "runs" / "train" / "logs" and log.is_file()
    for epoch in (1, 2):
        assert len(re.findall(rf"\] gru_L1_H8_s0 +epoch {epoch}/2  dev accuracy [\d.]+ %", err)) == 1, err
    assert re.search(r"\] gru_L1_H8_s0 +done: test PER [\d.]+ %", err), err
    assert "run gru_L1_H8_s0: test PER" in out
    assert "TrainingReport(" not in err + out and "PlacementGroupCleaner" not in err + out
