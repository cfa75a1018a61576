"""The training storage read in one place: what a finished run is, its stamp, its final checkpoint."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch

from cluster.errors import InputError
from cluster.models import ModelConfig, build_model, checkpoint_id, load_checkpoint, save_checkpoint
from cluster.runs import EPOCHS_FILE, RUN_FILE, RunDir, collect_results, iter_runs, studies_results
from cluster.settings import parse_assignment, typed_value
from cluster.train import TrainConfig

IDENTITY = {"name": "toy", "manifest_sha256": "f" * 64, "num_targets": 6, "phones": ["SIL", "AA"]}


def write_run(storage, study, name, *, stamp=True, epochs=True, final=True, test_per=0.3, seed=0):
    run = storage / study / "runs" / name
    run.mkdir(parents=True)
    cfg = {"corpus": "/c", "cell": "gru", "layers": 1, "hidden": 4, "residual": False, "lazy_layers": "last",
           "precision": "fp32", "seed": seed}
    if stamp:
        (run / RUN_FILE).write_text(json.dumps({"config": cfg, "seed": seed, "corpus": IDENTITY, "packages": {},
                                                "git_revision": "abc"}))
    if epochs:
        pl.DataFrame([{"epoch": 1, "split": "dev", "frame_ce": 1.0, "frame_acc": 0.5, "per": 0.4, "frames": 10},
                      {"epoch": 1, "split": "test", "frame_ce": 1.1, "frame_acc": 0.45, "per": test_per,
                       "frames": 10}]).write_parquet(run / EPOCHS_FILE)
    torch.manual_seed(seed)
    model = build_model(ModelConfig(cell="gru", layers=1, hidden=4, num_targets=6), torch.zeros(40), torch.ones(40))
    for k, is_final in enumerate([False, final]):
        save_checkpoint(run / f"checkpoint_00000{k}" / "model.pt", model, IDENTITY,
                        extra={"stamps": {"config": cfg, "seed": seed}, "metrics": {"final": is_final, "epoch": k}})
    return RunDir(study, name, run)


def test_a_run_is_finished_when_both_its_stamp_and_its_epochs_exist(tmp_path):
    write_run(tmp_path, "s", "a")
    write_run(tmp_path, "s", "b_started", epochs=False)  # training, or killed: run.json only
    write_run(tmp_path, "s", "c_no_stamp", stamp=False)
    assert [r.name for r in iter_runs(tmp_path, "s")] == ["a"]
    assert [r.name for r in iter_runs(tmp_path, "s", finished=False)] == ["a", "b_started", "c_no_stamp"]
    assert list(iter_runs(tmp_path, "no-such-study")) == []


def test_stamp_results_and_final_checkpoint(tmp_path):
    run = write_run(tmp_path, "s", "gru_L1", seed=3, test_per=0.25)
    assert run.run_id == "s:gru_L1" and run.stamp.seed == 3 and run.stamp.corpus["name"] == "toy"
    final = run.final_checkpoint
    assert final.path.parent.name == "checkpoint_000001" and final.meta.is_final
    assert final.checkpoint_id == checkpoint_id(final.path, final.meta.facts) and final.checkpoint_id.startswith("gru-1x4-")
    assert run.final_checkpoint_id() == final.checkpoint_id  # from the stamp and digest, no model loaded
    assert final.meta.trained_corpus == "/c" and final.meta.stamps["seed"] == 3
    row = collect_results(tmp_path, "s").row(0, named=True)
    assert (row["run"], row["cell"], row["seed"], row["test_per"], row["best_epoch"]) == ("gru_L1", "gru", 3, 0.25, 1)
    assert studies_results(tmp_path, ["s", "none"])["study"].to_list() == ["s"]
    assert studies_results(tmp_path, ["none"]).is_empty()
    assert RunDir.of_checkpoint(final.path) == RunDir("s", "gru_L1", run.path.resolve())


def test_a_run_whose_last_checkpoint_is_not_final_is_refused(tmp_path):
    run = write_run(tmp_path, "s", "r", final=False)
    with pytest.raises(InputError, match="checkpoint_000001/model.pt: the run's last checkpoint is not its final"):
        run.final_checkpoint


def test_an_unreadable_stamp_names_the_file(tmp_path):
    run = write_run(tmp_path, "s", "r")
    (run.path / RUN_FILE).write_text("{not json")
    with pytest.raises(InputError, match=r"run.json: not a readable run stamp"):
        run.stamp


def test_checkpoint_meta_is_typed(tmp_path):
    run = write_run(tmp_path, "s", "r")
    _, meta = load_checkpoint(run.path / "checkpoint_000001")  # a directory holding model.pt works too
    assert meta.config.cell == "gru" and meta.facts == {"arch": "gru", "layers": 1, "hidden": 4, "residual": False}
    assert meta.metrics == {"final": True, "epoch": 1} and meta.decode_graph is None


def test_set_values_are_typed_by_the_field_annotation():
    assert parse_assignment(TrainConfig, "lr=0.5") == ("lr", 0.5)
    assert parse_assignment(TrainConfig, "epochs=7") == ("epochs", 7)
    assert parse_assignment(TrainConfig, "residual=off") == ("residual", False)
    assert parse_assignment(TrainConfig, "max_train_utterances=none") == ("max_train_utterances", None)
    assert parse_assignment(TrainConfig, "max_train_utterances=12") == ("max_train_utterances", 12)
    assert parse_assignment(TrainConfig, "cell=gru") == ("cell", "gru")
    assert typed_value(float | None, "3", "x") == 3.0
    for bad, why in (("epochs=many", "'many' is not a int"), ("residual=maybe", "not a bool"),
                     ("nope=1", "KEY one of"), ("lr", "KEY one of")):
        with pytest.raises(InputError, match=why):
            parse_assignment(TrainConfig, bad)
