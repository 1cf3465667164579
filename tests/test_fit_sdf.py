"""examples/fit_sdf.py converges: a signed distance function fitted with an eikonal loss
(second-order gradients through the grid) on the CPU backend and the reference."""

import os
import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT

# --smoke (60 steps of 1024 points) measured on the 2-core VM, 2026-12-01, torch 2.14.1:
# |f - sdf| 0.0072 and ||df/dx| - 1| 0.163 for both backends, from 0.35 and 1.0 at the
# start (f constant, df/dx = 0). The bounds leave about 2x margin.
MAX_SDF_ERROR = 0.015
MAX_EIKONAL_ERROR = 0.3


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_fit_sdf_smoke_converges(backend):
    command = [
        sys.executable,
        str(ROOT / "examples" / "fit_sdf.py"),
        "--smoke",
        "--backend",
        backend,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("TRITON_INTERPRET", None)
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    final = re.search(r"final: sdf_error=([\d.]+) eikonal_error=([\d.]+)", result.stdout)
    assert final, result.stdout[-2000:]
    sdf_error, eikonal_error = map(float, final.groups())
    assert sdf_error < MAX_SDF_ERROR and eikonal_error < MAX_EIKONAL_ERROR, result.stdout


def test_fit_sdf_help_names_every_flag():
    command = [sys.executable, str(ROOT / "examples" / "fit_sdf.py"), "--help"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout
    for flag in ("--shape", "--steps", "--batch", "--lr", "--eikonal-weight", "--smoke"):
        assert flag in out
