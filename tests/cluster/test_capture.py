"""Capture as Ray tasks: the merged summaries equal a brute-force pass over the same frames, the
store receives them idempotently, and bad input names the file at fault."""

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from cluster.capture import CaptureConfig, capture, choose_utterances, make_batches, plan_shards, sample_table
from cluster.data.kaldi import read_corpus
from cluster.models import model_file
from cluster.summaries import QUANTITIES, default_histogram_specs
from service.cli import main as gatelens
from service.store import Store


def make_checkpoint(corpus_dir: Path, out: Path, cell: str = "lstm", layers: int = 2, hidden: int = 8,
                    seed: int = 0) -> Path:
    from cluster.models import ModelConfig, build_model, save_checkpoint

    corpus = read_corpus(corpus_dir)
    torch.manual_seed(seed)
    model = build_model(ModelConfig(cell=cell, layers=layers, hidden=hidden, num_targets=corpus.num_targets),
                        corpus.cmvn_mean, corpus.cmvn_std)
    # Larger input weights than the default init, so that |c| crosses small thresholds often.
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf.startswith("W_") and leaf.endswith("x"):  # W_ix, W_fx, W_cx, W_ox
                p.mul_(4)
    return save_checkpoint(out, model, corpus.identity, extra={"stamps": {"config": {"corpus": str(corpus_dir)}}})


def brute_force(checkpoint: Path, corpus_dir: Path, config: CaptureConfig, shards: int):
    """Every valid frame's values, computed in this process on the same batches as the tasks."""
    from cluster.batching import pad_batch
    from cluster.models import load_checkpoint

    torch.set_num_threads(1)
    model, _ = load_checkpoint(checkpoint)
    model.eval()
    split = read_corpus(corpus_dir).split(config.split)
    values, phones = {}, []
    for shard in plan_shards(split, choose_utterances(split, config.utterances, config.seed), shards):
        for batch in make_batches(split, shard, config.batch_size, config.max_frames):
            utts = [split.load(u) for u in batch]
            x, lengths = pad_batch([u.feats.copy() for u in utts])
            with torch.inference_mode():
                out = model.capture(x, lengths, dtype=torch.float32)
            for name, v in out.items():
                values.setdefault(name, []).extend(v[i, :n].numpy() for i, n in enumerate(lengths.tolist()))
            phones.extend(u.phones for u in utts)
    return {k: np.concatenate(v) for k, v in values.items()}, np.concatenate(phones)


@pytest.mark.slow
def test_sharded_capture_equals_brute_force(ray_cluster, small_corpus, tmp_path):
    ckpt = make_checkpoint(small_corpus, tmp_path / "model.pt")
    config = CaptureConfig(checkpoint=str(ckpt), split="test", utterances=10, shards=3, batch_size=3,
                           max_frames=700, rules=("abs>0.5", "abs<0.1", "pct>90"), sample=2)
    result = capture(config)
    values, phones = brute_force(ckpt, small_corpus, config, shards=3)
    s = result.summary
    assert s.frames == len(phones) and s.utterances == 10
    specs = default_histogram_specs("lstm")
    for name, x in values.items():
        layer, q = int(name[1]), name[3]
        hist = s.histogram(layer, q)
        for u in range(x.shape[1]):
            np.testing.assert_array_equal(hist[u, 1:-1], np.histogram(x[:, u], bins=specs[q].edges())[0])
        st = s.state[(layer, q)]
        np.testing.assert_array_equal(st.vmin, x.min(0))
        np.testing.assert_allclose(st.mean, x.astype(np.float64).mean(0), rtol=1e-5, atol=1e-7)
    resp = result.frames["phone_responsibility"]
    assert set(result.params["thresholds"]) == {"pct>90@L1", "pct>90@L2"}
    assert set(resp["rule"]) == {"abs>0.5", "abs<0.1", "pct>90"}
    for r in resp.iter_rows(named=True):  # brute-force count of every (rule, layer, unit, phone)
        c = np.abs(values[f"L{r['layer']}.c"][:, r["unit"]]).astype(np.float64)
        sel = phones == r["phone_id"]
        op = np.greater if ">" in r["rule"] else np.less
        assert r["frames"] == sel.sum()
        assert r["irregular"] == op(c[sel], r["threshold"]).sum(), r
    for layer in (1, 2):  # the percentile rule marks ~10% of the layer's values (one bin of slack)
        pct = resp.filter((pl.col("rule") == "pct>90") & (pl.col("layer") == layer))
        assert 0.05 < pct["irregular"].sum() / pct["frames"].sum() < 0.15
    # the raw sample holds the first two chosen utterances, all frames, float16
    sample = result.sample.to_pydict()
    assert sorted(set(sample["utt_id"])) == sorted(result.params["sample"])
    assert len(sample["c"][0]) == 8


@pytest.mark.slow
def test_capture_cli_ingests_idempotently(ray_cluster, small_corpus, tmp_path, capsys):
    ckpt = make_checkpoint(small_corpus, tmp_path / "ck" / "model.pt", cell="gru")
    store = tmp_path / "store.duckdb"
    argv = ["capture", str(ckpt.parent), "--store", str(store), "--utterances", "6", "--sample", "1", "--shards", "2"]
    counts = []
    for _ in range(2):
        assert gatelens(argv) == 0
        out = capsys.readouterr().out
        assert "checkpoint gru-2x8-" in out and "outside (-0.7, 0.7)" in out and "abs<0.5" in out
        counts.append(Store(store).query(
            "SELECT (SELECT count(*) FROM unit_stats) AS s, (SELECT count(*) FROM unit_histograms) AS h, "
            "(SELECT count(*) FROM phone_responsibility) AS r, (SELECT count(*) FROM raw_sample) AS x, "
            "(SELECT count(*) FROM analyses) AS a, (SELECT count(*) FROM checkpoints) AS c").row(0))
    assert counts[0] == counts[1]
    s, h, r, x, a, c = counts[0]
    assert (s, h, a, c) == (2 * 8 * 6, 2 * 8 * 6, 1, 1) and r > 0 and x > 0
    log = Store(store).query("SELECT status, params FROM analyses").row(0, named=True)
    assert log["status"] == "finished" and json.loads(log["params"])["utterances"] == 6
    ck = Store(store).query("SELECT arch, layers, hidden, path FROM checkpoints").row(0)
    assert ck == ("gru", 2, 8, str(model_file(ckpt.parent).resolve()))


def test_bad_input_names_the_file(tmp_path, capsys):
    assert gatelens(["capture", str(tmp_path / "missing.pt"), "--store", str(tmp_path / "s.duckdb")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert gatelens(["capture", str(bad), "--store", str(tmp_path / "s.duckdb")]) == 2
    assert "bad.pt" in capsys.readouterr().err
    assert gatelens(["capture", str(bad), "--rule", "abs=3", "--store", str(tmp_path / "s.duckdb")]) == 2
    assert "abs=3" in capsys.readouterr().err
    assert not (tmp_path / "s.duckdb").exists()  # nothing was written for bad input


@pytest.mark.slow
def test_a_corpus_with_another_phone_table_is_refused(small_corpus, tmp_path):
    import shutil

    from cluster.data.kaldi import CorpusError

    ckpt = make_checkpoint(small_corpus, tmp_path / "model.pt")
    other = tmp_path / "other"
    shutil.copytree(small_corpus, other)
    phones = (other / "phones.txt").read_text().replace("AA ", "AX ")
    (other / "phones.txt").write_text(phones)
    with pytest.raises(CorpusError, match=rf"{other}.*phone table differs from the one {ckpt}"):
        capture(CaptureConfig(checkpoint=str(ckpt), corpus=str(other), utterances=2))


def test_sample_table_layout():
    rng = np.random.default_rng(0)
    values = {f"L{l}.{q}": rng.standard_normal((3, 4)).astype(np.float32) for l in (1, 2) for q in QUANTITIES}
    t = sample_table("ck", 1, [("u1", values, np.array([1, 2, 2]))], ["<eps>", "SIL", "AA"])
    assert t.num_rows == 6 and t.column("phone").to_pylist() == ["SIL", "AA", "AA"] * 2
    assert str(t.schema.field("g").type) == "list<item: halffloat>"
    np.testing.assert_array_equal(np.array(t.column("c")[4].as_py(), np.float16), values["L2.c"][1].astype(np.float16))
    fused = sample_table("ck", 1, [("u1", {"L1.m": values["L1.m"]}, np.array([1, 2, 2]))], ["<eps>", "SIL", "AA"])
    assert fused.column("c").null_count == 3 and fused.column("m").null_count == 0


class _Split:
    def __init__(self, lengths):
        from types import SimpleNamespace

        self.alignments = {u: SimpleNamespace(phones=np.zeros(n)) for u, n in lengths.items()}


def test_batches_bound_utterances_and_padded_frames():
    split = _Split({"a": 500, "b": 400, "c": 300, "d": 290, "e": 100, "f": 90, "g": 80})
    ids = ["a", "b", "c", "d", "e", "f", "g"]
    assert make_batches(split, ids, batch_size=3, max_frames=900) == [["a"], ["b", "c"], ["d", "e", "f"], ["g"]]
    assert make_batches(split, ids, batch_size=16, max_frames=10 ** 6) == [ids]
    assert make_batches(split, ids, batch_size=1, max_frames=10 ** 6) == [[u] for u in ids]
