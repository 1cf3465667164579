"""bench/cpu_step.py: a smoke run writes both backends' step times, bad options are named."""

import json
import subprocess
import sys

from tests.helpers import ROOT

SCRIPT = ROOT / "bench" / "cpu_step.py"


def test_smoke_run_writes_both_backends(tmp_path):
    out = tmp_path / "step"
    command = [sys.executable, str(SCRIPT), "--batch-size", "2", "--rounds", "1", "--steps", "1"]
    command += ["--threads", "1", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(out.with_suffix(".json").read_text())
    assert set(payload["rows"]) == {"cpu", "torch"}
    assert all(row["median_s"] > 0 for row in payload["rows"].values())
    assert payload["speedup"] > 0 and payload["environment"]["threads"] == 1
    assert out.with_suffix(".md").read_text().strip() in result.stdout


def test_bad_options_are_named():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--rounds", "0"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 2 and "--rounds must be >= 1, got 0" in result.stderr
