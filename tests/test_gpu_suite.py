"""bench/gpu_suite.sh, the one GPU command, end to end in its CPU smoke mode."""

import subprocess
import tarfile

from tests.helpers import ROOT

FILES = {"runs.txt", "grid.md", "peers.md", "mlp.md", "train_step.md", "json.tar"}
JSON = {"grid.json", "peers.json", "mlp.json", "train_step.json"}


def test_smoke_mode_runs_every_part_and_writes_six_files(tmp_path):
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
    with tarfile.open(out / "json.tar") as tar:
        assert set(tar.getnames()) == JSON
    parts = ("equivalence", "grid", "peers", "mlp", "train_step", "train_run", "train_resume")
    for part in parts:
        assert f"{part}: exit 0" in done.stdout, done.stdout[-3000:]
    run = (out / "runs.txt").read_text()
    assert "resumed from" in run and "step 6:" in run, run
    assert "passed" in run
    assert "| mlp | train | gridcodes |" in (out / "mlp.md").read_text()
