"""Smoke runs of the claims experiments (bench/claims/): every code path in seconds, and the
committed results are what the scripts print and write."""

import importlib
import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT

EXPERIMENTS = {
    "autoencoders": ["brics", "vq", "kl"],
    "regularisation": ["relaxed", "kl", "none"],
    "ablations": ["tiled 2^12 (base)", "no noise", "Ckey 2", "Hd 8", "hash 2^10"],
}
SECTIONS = {"autoencoders": "models", "regularisation": "regularisations", "ablations": "variants"}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_experiment_smoke_run_writes_what_it_prints(name, tmp_path):
    script = ROOT / "bench" / "claims" / f"{name}.py"
    command = [sys.executable, str(script), "--smoke", "--threads", "1", "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads((tmp_path / f"{name}.json").read_text())
    for entry in EXPERIMENTS[name]:
        assert entry in payload[SECTIONS[name]]
    table = (tmp_path / f"{name}.md").read_text().split("\n\n", 2)[2].strip()
    assert table in result.stdout  # the Markdown file holds the printed table
    assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    assert payload["environment"]["threads"] == 1 and payload["runtime_s"] > 0


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_committed_results_are_complete(name):
    results = ROOT / "bench" / "results" / "claims"
    payload = json.loads((results / f"{name}.json").read_text())
    assert "--smoke" not in payload["command"]
    for entry in EXPERIMENTS[name]:
        assert entry in payload[SECTIONS[name]]
    assert payload["runtime_s"] < 3600
    assert (results / f"{name}.png").is_file()
    # The committed table is the one the script prints for the committed JSON.
    sys.path.insert(0, str(ROOT / "bench" / "claims"))
    module = importlib.import_module(name)
    table = (results / f"{name}.md").read_text().split("\n\n", 2)[2].strip()
    assert table == module.table(payload[SECTIONS[name]])


def test_bad_options_are_named(tmp_path):
    script = ROOT / "bench" / "claims" / "ablations.py"
    result = subprocess.run(
        [sys.executable, str(script), "--steps", "0", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode != 0 and "--steps must be positive, got 0" in result.stderr
    replot = subprocess.run(
        [sys.executable, str(script), "--plot-only", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert replot.returncode != 0 and "ablations.json does not exist" in replot.stderr
