"""The CPU benchmarks: bench/cpu_step.py's smoke run writes both backends' step times and
names bad options; it and bench/bench_grid.py --device cpu run without triton installed."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

SCRIPT = ROOT / "bench" / "cpu_step.py"


def run_without_triton(command: list[str], tmp_path, hide_triton: bool):
    """``command`` in a subprocess; with ``hide_triton``, ``import triton`` fails in it (a
    package of that name that raises ImportError comes first on the path)."""
    env = dict(os.environ)
    if hide_triton:
        fake = tmp_path / "no_triton" / "triton"
        fake.mkdir(parents=True)
        (fake / "__init__.py").write_text("raise ImportError('triton is not installed')\n")
        env["PYTHONPATH"] = os.pathsep.join([str(fake.parent), env.get("PYTHONPATH", "")])
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)


@pytest.mark.parametrize("hide_triton", [False, True], ids=["triton", "no-triton"])
def test_smoke_run_writes_both_backends(tmp_path, hide_triton):
    out = tmp_path / "step"
    command = [sys.executable, str(SCRIPT), "--batch-size", "2", "--rounds", "1", "--steps", "1"]
    command += ["--threads", "1", "--out", str(out)]
    result = run_without_triton(command, tmp_path, hide_triton)
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(out.with_suffix(".json").read_text())
    assert set(payload["rows"]) == {"cpu", "torch"}
    assert all(row["median_s"] > 0 for row in payload["rows"].values())
    assert payload["speedup"] > 0 and payload["environment"]["threads"] == 1
    assert out.with_suffix(".md").read_text().strip() in result.stdout
    assert (payload["environment"]["triton"] is None) == hide_triton


def test_grid_benchmark_on_the_cpu_runs_without_triton(tmp_path):
    out = tmp_path / "grid"
    command = [sys.executable, str(ROOT / "bench" / "bench_grid.py"), "--device", "cpu"]
    command += ["--shapes", "small64", "--modes", "forward", "--max-points", "256"]
    command += ["--out", str(out)]
    result = run_without_triton(command, tmp_path, hide_triton=True)
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(out.with_suffix(".json").read_text())
    assert payload["environment"]["triton"] is None
    assert {row["provider"] for row in payload["rows"]} == {"cpu", "torch"}


def test_bad_options_are_named():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--rounds", "0"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 2 and "--rounds must be >= 1, got 0" in result.stderr
