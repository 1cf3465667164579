"""bench/gpu_suite.sh, the one GPU command, end to end in its CPU smoke mode."""

import subprocess

from tests.helpers import ROOT

FILES = {
    "equivalence.txt",
    "grid.json",
    "grid.md",
    "peers.json",
    "peers.md",
    "train_step.json",
    "train_step.md",
    "train_run.txt",
}


def test_smoke_mode_runs_every_part_and_writes_eight_files(tmp_path):
    out = tmp_path / "gpu"
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_suite.sh"), "--smoke", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == FILES  # the device returns at most 8 files
    for part in ("equivalence", "grid", "peers", "train_step", "train_run", "train_resume"):
        assert f"{part}: exit 0" in done.stdout, done.stdout[-3000:]
    run = (out / "train_run.txt").read_text()
    assert "resumed from" in run and "step 6:" in run, run
    assert "passed" in (out / "equivalence.txt").read_text()
