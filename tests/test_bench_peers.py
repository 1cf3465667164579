"""bench/peers/bench_peers.py runs end to end on the CPU in its smoke mode: gridcodes timed
in every mode (double backward included), the CUDA peers skipped with their reason, results
written; its equivalence check passes for a peer that is gridcodes itself and fails for a
peer whose table differs."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from tests.helpers import ROOT

SCRIPT = ROOT / "bench" / "peers" / "bench_peers.py"


def _module():
    spec = importlib.util.spec_from_file_location("bench_peers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_peers"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_smoke_runs_end_to_end_on_the_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("TRITON_INTERPRET", None)
    command = [sys.executable, str(SCRIPT), "--smoke", "--device", "cpu", "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads((tmp_path / "peers.json").read_text())
    modes = {(r["shape"], r["dtype"], r["mode"]) for r in data["rows"] if r["peer"] == "gridcodes"}
    assert len(modes) == 2 * 2 * 4  # 2 shapes x fp32/fp16 x forward/backward/full/double
    assert all(r["ms"] > 0 for r in data["rows"])
    for peer in ("torch-ngp", "tcnn", "triton-helpers"):
        assert "needs CUDA" in data["skipped"][peer]
    assert "nerfstudio" in data["skipped"] or any(r["peer"] == "nerfstudio" for r in data["rows"])
    assert "Double backward" in (tmp_path / "peers.md").read_text()


@pytest.mark.parametrize("convention", ["torch-ngp", "tcnn"])
def test_equivalence_check_accepts_equal_and_rejects_different_tables(monkeypatch, convention):
    bench = _module()
    shape = bench.SMOKE_SHAPES[0]
    same = lambda shape, dtype, device, peers, **_: bench.build_gridcodes(
        shape, dtype, device, peers, convention
    )
    monkeypatch.setattr(bench, "build_tcnn", same)
    monkeypatch.setitem(bench.PEERS, "torch-ngp", same)
    checks = {c["peer"]: c for c in bench.equivalence(shape, "cpu", None, False)}
    peer = convention
    assert checks[peer]["ok"], checks[peer]
    # The other convention's layout gives other features for the same flat table.
    other = "tcnn" if peer == "torch-ngp" else "torch-ngp"
    assert not checks[other]["ok"]
    assert torch.tensor(checks[peer]["max_error_per_level"]).max() < 1e-5
