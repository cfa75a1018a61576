"""Session fixtures of the importer tests: the embedded test split as source material, each source
written once (``import_sources`` writes them), and each imported once, on first use."""

from __future__ import annotations

from pathlib import Path

import pytest

from import_sources import Utt, embedded_utterances, import_cli, write_ctm, write_lhotse, write_textgrids, write_timit


@pytest.fixture(scope="session")
def embedded_utts(small_corpus) -> list[Utt]:
    out = embedded_utterances(small_corpus, ["test"])
    loose = sum(len(u.loose) for u in out)
    assert loose < 0.05 * sum(len(u.targets) for u in out), f"{loose} frames compared by phone only"
    return out


@pytest.fixture(scope="session")
def sources(embedded_utts, tmp_path_factory):
    """Each source written once per session: kind -> (source path, extra CLI arguments, id map)."""
    root = tmp_path_factory.mktemp("sources")
    timit, ids = write_timit(embedded_utts, root / "timit")
    return {
        "lhotse": (write_lhotse(embedded_utts, root / "lhotse"), [], {}),
        "textgrid": (write_textgrids(embedded_utts, root / "mfa"), [], {}),
        "timit": (timit, [], ids),
        "ctm": (write_ctm(embedded_utts, root / "kaldi" / "data"), ["--data", root / "kaldi" / "data"], {}),
    }


@pytest.fixture(scope="session")
def imported(sources, ray_cluster, tmp_path_factory):
    """kind -> the corpus ``gatelens corpus import`` wrote from it (each imported once, on first use)."""
    root = tmp_path_factory.mktemp("imported")
    done: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in done:
            src, extra, _ = sources[kind]
            assert import_cli(["--from", kind, src, "--out", root / kind, "--keep-wavs", "all", *extra]) == 0
            done[kind] = root / kind
        return done[kind]

    return get




HIDDEN = {"lhotse": 8, "textgrid": 10, "timit": 12, "ctm": 14}  # one H per source, so that run names differ


@pytest.fixture(scope="session")
def trained(imported, tmp_path_factory):
    """kind -> the run directory of a tiny model trained on that imported corpus: one Tune study of four
    trials (one epoch each, the ``tiny`` profile), so that the four share one start of Ray Tune."""
    from cluster.grid import run_study
    from cluster.train import run_name

    storage = tmp_path_factory.mktemp("runs")
    custom = [{"cell": "gru", "layers": 1, "hidden": HIDDEN[k], "corpus": str(imported(k))} for k in HIDDEN]
    configs, grid = run_study("imported", "tiny", storage, custom=custom)
    assert grid is not None and not grid.errors, grid.errors
    by_corpus = {c.corpus: c for c in configs}
    return {k: storage / "imported" / "runs" / run_name(by_corpus[str(imported(k))]) for k in HIDDEN}
