"""Training on a real local Ray cluster: a tiny grid end to end, and a worker killed mid-run."""

from __future__ import annotations

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
from cluster.runs import RunDir, collect_results as collect, final_checkpoint_ids, studies_results
from service.results import format_table

pytestmark = pytest.mark.slow


def test_tiny_grid_end_to_end_and_results_equal_what_trials_reported(small_corpus, tmp_path):
    custom = [{"cell": "lstm", "layers": 1}, {"cell": "gru", "layers": 1}]
    configs, grid = run_study("mini", "tiny", tmp_path, corpus=str(small_corpus), custom=custom)
    assert grid is not None and not grid.errors, grid.errors
    reported = {name: m for r in grid for name, m in r.metrics["results"].items()}  # each seed's, by run name
    assert len(grid.get_dataframe()) == 2  # the ResultGrid view users read has both trials
    table = collect(tmp_path, "mini")
    assert table.height == 2 and set(table["cell"]) == {"lstm", "gru"}
    for row in table.iter_rows(named=True):
        m = reported[row["run"]]
        assert m["final"]
        assert row["test_per"] == pytest.approx(m["test_per"])
        assert row["test_frame_acc"] == pytest.approx(m["test_frame_acc"])
        assert row["best_epoch"] == m["best_epoch"]
        assert 0.0 <= row["test_frame_acc"] <= 1.0 and row["test_per"] >= 0.0
    run = tmp_path / "mini" / "runs" / table["run"][0]
    stamp = (run / RUN_FILE).read_text()
    for key in ('"seed"', '"manifest_sha256"', '"torch"', '"git_revision"', '"config"'):
        assert key in stamp
    text = format_table(table, "mini")
    assert "LSTM" in text and "GRU" in text
    # into the store, twice: one row per run and per epoch and split, equal to what the trials wrote
    from service.results import ingest_study
    from service.store import Store

    store = Store(tmp_path / "store.duckdb")
    assert ingest_study(store, tmp_path, "mini") == 2 and ingest_study(store, tmp_path, "mini") == 2
    stored = store.query("SELECT run_id, split, epoch, per, frame_acc FROM epoch_metrics ORDER BY ALL")
    assert stored.height == 4  # 1 dev epoch + the test row, per run
    for row in table.iter_rows(named=True):
        test_row = stored.filter((pl.col("run_id") == f"mini:{row['run']}") & (pl.col("split") == "test"))
        assert test_row["per"][0] == pytest.approx(row["test_per"])
    # every scored test utterance's errors are in the store, and they sum to the run's PER
    per_utt = store.query("SELECT run_id, count(*) AS n, sum(sub + ins + del) / sum(ref_len) AS per, "
                          "any_value(checkpoint_id) AS ck FROM utterance_errors WHERE split = 'test' GROUP BY run_id")
    assert per_utt.height == 2
    for row in table.iter_rows(named=True):
        r = per_utt.filter(pl.col("run_id") == f"mini:{row['run']}").row(0, named=True)
        assert r["n"] == 12 and r["per"] == pytest.approx(row["test_per"])
        assert r["ck"].startswith(f"{row['cell']}-1x16-")
    # a second call finds both runs finished and trains nothing
    _, again = run_study("mini", "tiny", tmp_path, corpus=str(small_corpus), custom=custom)
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
    assert all(c.patience == 2 and c.max_train_utterances is None for c in study)
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


def test_a_tiny_grid_of_three_stacked_seeds_writes_three_ordinary_runs(small_corpus, tmp_path, capsys):
    """One trial trains the three seeds of the grid point side by side; results, the store and the
    claims' readers see three ordinary runs."""
    from service.cli import main as gatelens

    common = ["--storage", tmp_path / "runs", "--store", tmp_path / "s.duckdb"]
    assert gatelens([str(a) for a in ["grid", "--study", "seeded", "--profile", "tiny", "--cells", "gru", "--layers",
                                      "1", "--seeds", "0,1,2", "--corpus", small_corpus, *common]]) == 0
    names = ["gru_L1_H16_s0", "gru_L1_H16_s1", "gru_L1_H16_s2"]
    table = collect(tmp_path / "runs", "seeded")
    assert sorted(table["run"]) == names and sorted(table["seed"]) == [0, 1, 2]
    assert table["test_per"].n_unique() > 1 or table["test_frame_acc"].n_unique() > 1
    # the console: the log file named first, a line per seed and epoch and per finished seed, no Tune tables
    err = capsys.readouterr().err
    log = Path(re.search(r"Ray's messages: (\S+)", err).group(1))
    assert log.parent == tmp_path / "runs" / "seeded" / "logs" and log.is_file()
    for run in names:
        assert re.search(rf"\] {run} +epoch 1/1  dev accuracy [\d.]+ %", err), err
        assert re.search(rf"\] {run} +done \([123]/3\): test PER [\d.]+ %", err), err
    assert "Trial status" not in err and "Configuration for experiment" not in err
    assert "trained 3 runs in" in err and "(1 trial)" in err
    assert "starting 1 trial (3 seeds each), " in err
    assert re.search(r"\] gru_L1_H16_s0-1-2 +starting: Ray Train starts its workers", err)
    assert gatelens([str(a) for a in ["results", "--study", "seeded", *common]]) == 0
    out = capsys.readouterr().out
    assert "Seeds" in out and "[" in out and "mean over seeds" in out
    line = next(l for l in out.splitlines() if l.startswith("GRU"))
    assert line.split()[3] == "3"
    assert gatelens([str(a) for a in ["results", "--study", "seeded", "--per-seed", "--format", "csv", *common]]) == 0
    assert pl.read_csv(__import__("io").StringIO(capsys.readouterr().out)).height == 3
    from service.store import Store

    store = Store(tmp_path / "s.duckdb")
    assert store.query("SELECT seed FROM runs ORDER BY seed")["seed"].to_list() == [0, 1, 2]
    assert store.query("SELECT count(*) AS n FROM utterance_errors")["n"][0] == 3 * 12
    # what the claims read of a study's runs: one final checkpoint each, the seeds' results
    ids = final_checkpoint_ids(tmp_path / "runs", ["seeded"])
    assert len(ids) == 3 and all(i.startswith("gru-1x16-") for i in ids)
    assert sorted(studies_results(tmp_path / "runs", ["seeded"])["seed"]) == [0, 1, 2]
    # the trial's own storage is not a run
    assert (tmp_path / "runs" / "seeded" / "stacks" / "gru_L1_H16_s0-1-2").is_dir()
    assert not list((tmp_path / "runs" / "seeded" / "stacks").rglob("model.pt"))


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
