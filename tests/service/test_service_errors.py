"""Bad corpus input through the service path: a clear error naming the file, and nothing written."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from service.cli import main as cli

pytestmark = pytest.mark.slow


@pytest.fixture()
def broken_corpus(small_corpus, tmp_path):
    bad = tmp_path / "broken"
    shutil.copytree(small_corpus, bad)
    ark = sorted((bad / "train" / "data").glob("feats.*.ark"))[-1]
    ark.write_bytes(ark.read_bytes()[:-500])  # truncated: the last utterance of the shard is cut
    return bad, ark


def test_train_on_a_truncated_corpus_fails_before_writing_anything(broken_corpus, tmp_path, capsys):
    bad, ark = broken_corpus
    storage = tmp_path / "runs"
    rc = cli(["train", "--corpus", str(bad), "--hidden", "8", "--epochs", "1", "--storage", str(storage)])
    err = capsys.readouterr().err
    assert rc == 2 and "train/feats.scp" in err and "utterance" in err and "truncated or corrupt" in err
    assert "Traceback" not in err
    assert not storage.exists()


def test_grid_on_a_missing_corpus_fails_before_writing_anything(tmp_path, capsys):
    storage = tmp_path / "runs"
    rc = cli(["grid", "--study", "table1", "--profile", "tiny", "--corpus", str(tmp_path / "nowhere"),
              "--storage", str(storage)])
    err = capsys.readouterr().err
    assert rc == 2 and "nowhere: corpus manifest not found" in err
    assert not storage.exists()


def test_watcher_records_a_checkpoint_whose_corpus_is_broken_and_writes_no_rows(ray_cluster, broken_corpus,
                                                                              tmp_path):
    from service.scheduler import WatchConfig, run_pass
    from service.store import Store
    from tests_helpers import make_checkpoint

    bad, _ = broken_corpus
    test_ark = sorted((bad / "test" / "data").glob("feats.*.ark"))[0]
    test_ark.write_bytes(b"")  # the split the watcher captures on is empty now
    ck = make_checkpoint(bad, tmp_path / "runs" / "s" / "runs" / "r" / "checkpoint_000000" / "model.pt", "gru", 0)
    old = time.time() - 60
    os.utime(ck, (old, old))
    config = WatchConfig(storage=str(tmp_path / "runs"), store=str(tmp_path / "store.duckdb"),
                         figures=str(tmp_path / "figs"), utterances=4, settle=5).resolved()
    report = run_pass(config, progress=print)
    assert list(report.failed) == [str(ck)] and str(test_ark) in report.failed[str(ck)]
    store = Store(config.store)
    log = store.query("SELECT status, error FROM analyses")
    assert log["status"].to_list() == ["failed"] and str(test_ark) in log["error"][0]
    assert store.query("SELECT count(*) AS n FROM unit_stats")["n"][0] == 0
