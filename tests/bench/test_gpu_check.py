"""bench/gpu_check.py in its CPU smoke mode: the check a GPU session will run, run here on every machine.

The script cannot be tried on a GPU in this suite, so what is tested is that the same code runs
end to end on CPU, that its JSON covers every case it promises, that the CPU agrees with float64
within the stated tolerances, that a wrong weight is caught and named, and that it imports
nothing the GPU machine lacks.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.py"
CELLS, LAYERS, PRECISIONS = ("lstm", "gru", "lstm_lazy"), (1, 3), ("fp32", "bf16")
CASES = {f"{c}-L{n}-{'res' if r else 'plain'}-{p}" for c, n, r, p in
         itertools.product(CELLS, LAYERS, (False, True), PRECISIONS)}


def run(tmp_path, *args):
    """The script as a GPU session would start it, from another folder, with this interpreter."""
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--smoke", "--out", str(out), *args],
                          capture_output=True, text=True, cwd=tmp_path, timeout=180)
    return proc, (json.loads(out.read_text()) if out.exists() else None)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    return run(tmp_path_factory.mktemp("gpu_check"))


def test_smoke_passes_and_says_so_last(smoke):
    proc, report = smoke
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("gpu_check: PASS") and "lstm fp32" in last and "gru bf16" in last
    assert report["ok"] and report["summary"] == last


def test_every_case_is_checked_within_tolerance(smoke):
    from cluster.models import ModelConfig, build_model

    _, report = smoke
    tol = report["tolerance"]
    assert tol["fp32"]["forward"] <= 1e-4 and tol["fp32"]["grad"] <= 1e-4       # not loosened into meaning nothing
    assert tol["bf16"]["forward"] <= 0.1 and tol["bf16"]["grad"] <= 0.1
    rows = {r["case"]: r for r in report["checks"]}
    assert set(rows) == CASES
    for case, r in rows.items():
        assert r["ok"], r
        assert r["forward_error"] <= tol[r["precision"]]["forward"] and r["grad_error"] <= tol[r["precision"]]["grad"]
        assert r["capture_gap"] == 0.0, case
        cfg = ModelConfig(cell=r["cell"], layers=r["layers"], hidden=16, residual=r["residual"], lazy_layers="all")
        model = build_model(cfg, torch.zeros(40), torch.ones(40))
        assert set(r["forward_errors"]) == {"logits", *model.value_names()}, case
        assert set(r["grad_errors"]) == {n for n, _ in model.named_parameters()}, case


def test_speed_rows_for_every_cell_and_nn_lstm(smoke):
    _, report = smoke
    rows = {(r["cell"], r["precision"]): r for r in report["speed"]}
    assert set(rows) == {(c, p) for c in ("lstm_fused", *CELLS) for p in PRECISIONS}
    for (cell, prec), r in rows.items():
        assert (r["H"], r["L"], r["B"], r["T"]) == (16, 2, 3, 12)
        assert r["train_fps"] > 0 and r["fwd_fps"] > 0
        assert (r["capture_fps"] is None) == (cell == "lstm_fused")
        assert r["step_mib"] is None                                               # CPU: no allocator peak
    assert rows["lstm_fused", "bf16"]["x_nn_lstm"] == 1.0
    assert report["meta"]["peak_rss_mib"] > 0


def test_imports_nothing_the_gpu_machine_lacks(smoke):
    _, report = smoke
    assert report["meta"]["heavy_modules"] == []


def test_a_planted_wrong_weight_fails_and_is_named(tmp_path):
    proc, report = run(tmp_path, "--no-speed", "--plant-error", "gru-L3-res-bf16")
    assert proc.returncode == 1
    assert "gru-L3-res-bf16 FAILED" in proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("gpu_check: FAIL (1 case(s): gru-L3-res-bf16)")
    assert [r["case"] for r in report["checks"] if not r["ok"]] == ["gru-L3-res-bf16"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="there is a GPU here")
def test_without_a_gpu_the_default_is_refused_pointing_at_cpu(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "--device cpu" in proc.stderr
