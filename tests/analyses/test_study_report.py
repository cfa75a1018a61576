"""A study end to end through the command line: captures and analyses as Ray tasks, the store
written by the driver alone, claims, and the HTML report opened in headless Chromium."""

import json
import re
import shutil
import subprocess

import pytest

from service.cli import main
from service.store import Store

from analysis_helpers import make_study

SETS = ["--set", "temporal_trace.tsne_iter=250", "--set", "memory_robustness.noise_s=0.2"]


def gatelens(*argv):
    return main([str(a) for a in argv])


def open_in_chromium(page) -> str:
    """The page's DOM after it loaded in headless Chromium (Debian's ``chromium``)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed: `make test` installs it (apt-get install chromium)")
    out = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                          "--dump-dom", page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.mark.slow
def test_study_claims_and_report(ray_cluster, small_corpus, tmp_path, capsys):
    runs = [{"cell": "lstm", "layers": 2, "per": 0.30, "acc": 0.40},
            {"cell": "gru", "layers": 2, "per": 0.28, "acc": 0.42, "seed": 1}]
    make_study(tmp_path / "runs", "mini", small_corpus, runs)
    common = ["--study", "mini", "--storage", tmp_path / "runs", "--store", tmp_path / "store.duckdb",
              "--out", tmp_path / "report", "--sample", 2, *SETS]

    assert gatelens("analyse", *common) == 0
    out = capsys.readouterr().out
    assert "2 runs, 16 analyses: 16 finished, 0 skipped, 0 failed" in out
    store = Store(tmp_path / "store.duckdb")
    log = store.query("SELECT analysis, count(*) AS n, min(status) AS s FROM analyses GROUP BY ALL ORDER BY ALL")
    assert dict(zip(log["analysis"], log["n"])) == {
        "capture": 2, "cell_distributions": 2, "comparisons": 1, "matching": 1, "memory_robustness": 2, "unit_memory": 2, "unit_ablation": 2,
        "range_shares": 2, "responsibility": 2, "temporal_trace": 2}
    assert set(log["s"]) == {"finished"}
    assert store.query("SELECT count(DISTINCT checkpoint_id) AS n FROM analysis_summary")["n"][0] == 3

    # up to date: nothing runs again; the report draws what is stored
    assert gatelens("report", *common) == 0
    out = capsys.readouterr().out
    page = tmp_path / "report" / "index.html"
    assert f"report: {page.resolve()}" in out
    html = page.read_text()
    assert "Table 1" in html and "Run stamps" in html and "abc123" in html
    for fig in ("Figs. 1-2", "Fig. 3", "Figs. 4-5", "Fig. 6", "Figs. 7, 10", "Fig. 8", "Memory per unit", "Ablation", "Matching"):
        assert f">{fig}:" in html
    assert "https://" not in html.replace("http://www.w3.org", "")  # nothing fetched from a server

    dom = open_in_chromium(page)
    body = re.search(r"<body[^>]*>", dom).group(0)
    loaded = int(re.search(r'data-figures-loaded="(\d+)"', body).group(1))
    total = int(re.search(r'data-figures-total="(\d+)"', body).group(1))
    assert loaded == total == 8 * 2 + 2 + 1  # the figures of two checkpoints, the study's two, the claims' forest plot
    assert dom.count('data-loaded="1"') == total and 'data-loaded="0"' not in dom

    assert gatelens("claims", *common, "--format", "json") == 0
    claims = {c["key"]: c for c in json.loads(capsys.readouterr().out)}
    assert len(claims) == 13 and claims["gru_bounded"]["verdict"] == "holds"
    # one seed of each: measured, with no interval over seeds
    for key in ("gru_smoother_higher", "lstm_smoother_than_gru", "gru_memory_shorter"):
        assert claims[key]["verdict"] == "undecided" and claims[key]["n_seeds"] == 1, claims[key]
        assert claims[key]["effect"] is not None and "needs at least 3" in claims[key]["note"]
    assert claims["lazy_lowers_error"]["verdict"] == "not measured"
    for c in claims.values():  # what `gatelens claims --format json` carries for every claim
        assert {"p_value", "p_holm", "margin", "paper_quote", "ours", "sensitivity", "kind"} <= set(c)
        assert (c["paper_quote"] is None) != (c["ours"] is None)
    assert claims["gru_bounded"]["kind"] == "sanity check" and set(claims["lstm_near_zero"]["sensitivity"]) == {
        "(-1, 1)", "(-3, 3)"}
    assert "Sanity checks" in html and 'data-kind="sanity check"' in html
    assert 'data-claim="gru_bounded" data-verdict="holds"' in html


@pytest.mark.slow
def test_failures_name_the_checkpoint_and_file(ray_cluster, small_corpus, tmp_path, capsys):
    make_study(tmp_path / "runs", "mini", small_corpus, [{"cell": "gru", "layers": 1, "per": 0.3, "acc": 0.4}])
    common = ["--study", "mini", "--storage", tmp_path / "runs", "--store", tmp_path / "store.duckdb",
              "--out", tmp_path / "out", "--sample", 0]
    assert gatelens("analyse", *common, "--analyses", "memory_robustness",
                    "--set", "memory_robustness.utt_id=no-such-utterance") == 1
    err = capsys.readouterr().err
    cid = Store(tmp_path / "store.duckdb").query("SELECT checkpoint_id FROM checkpoints")["checkpoint_id"][0]
    assert f"memory_robustness of {cid}" in err and "no-such-utterance" in err
    row = Store(tmp_path / "store.duckdb").query(
        "SELECT status, error FROM analyses WHERE analysis = 'memory_robustness'").row(0)
    assert row[0] == "failed" and cid in row[1]

    bad = next((tmp_path / "runs").rglob("model.pt"))
    bad.write_bytes(b"truncated")
    assert gatelens("analyse", *common) == 2
    assert str(bad) in capsys.readouterr().err
