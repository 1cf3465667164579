"""bench/train_step.py: what one stage-1 step of train/ae.py dispatches (counts, not times)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "bench" / "train_step.py"
# aten ops of one tiny-32 step (batch 2, GAN and LPIPS on, as a GPU runs it: the grid's
# Triton kernels, the FIR passes in their CUDA form), views included. On 2026-12-01 the code
# before the training-form layers dispatched 3,636 and 2,665 (16 grouped convolutions); on
# 2026-12-02, before the foreach scales and few-op blocks 2,105 and 1,662, then 1,691 and
# 1,302; this code (2026-12-04) 1,829 and 1,424: D's one pass over the reconstruction
# serving both updates saves a D pass but runs D's backward over two graphs (real and
# fake apart), so it dispatches more, smaller ops for fewer FLOPs.
BUDGET = {"regularised": 1900, "unregularised": 1500}


def bench(tmp_path, *args):
    out = tmp_path / "train_step"
    command = [sys.executable, str(SCRIPT), "--device", "cpu", "--out", str(out), *args]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.with_suffix(".json").read_text())["rows"], done


def test_one_step_has_no_grouped_convolution_no_host_sync_and_keeps_the_op_budget(tmp_path):
    rows, _ = bench(tmp_path, "--preset", "tiny-32", "--batch-size", "2", "--count-only", "--no-vq")
    kinds = {row["kind"]: row for row in rows}
    assert set(kinds) == set(BUDGET)
    for kind, row in kinds.items():
        assert row["grouped_convolutions"] == 0, (kind, row["convolution_ops"])
        assert row["host_syncs"] == {}, (kind, row["host_syncs"])
        assert row["aten_ops"] <= BUDGET[kind], (kind, row["aten_ops"], row["top_ops"])
        assert 0 < row["kernel_ops"] < row["aten_ops"]
        assert 0 < row["filter_tflop"] < 0.05 * row["tflop"]  # the FIR passes: a small part
    # The penalty (lazy R1) costs a D pass, its backward and double backward, every 16 steps
    regularised, plain = kinds["regularised"], kinds["unregularised"]
    assert regularised["reg_interval"] == 16
    assert (
        regularised["tflop"] > plain["tflop"]
        and regularised["convolutions"] > plain["convolutions"]
    )


def test_timing_against_vq_f4_and_a_baseline_checkout_runs_end_to_end(tmp_path):
    args = ["--preset", "tiny-32", "--batch-size", "2", "--rounds", "1", "--warmup", "0"]
    rows, done = bench(tmp_path, *args, "--baseline", str(ROOT), "--baseline-gan", "wgan-gp")
    kinds = {(row["provider"], row["kind"]): row for row in rows}
    lazy = {"regularised", "unregularised", "average"}
    assert kinds.keys() == {
        *((p, k) for p in ("brics", "vq-f4") for k in lazy),
        ("brics-baseline", "regularised"),  # WGAN-GP penalises every step
        ("brics-baseline", "average"),
    }, kinds.keys()
    assert all(row["ms_median"] > 0 and row["images_per_s"] > 0 for row in rows)
    # The average over the penalty's interval: 15 plain steps and one with the penalty
    ms = lambda provider, kind: kinds[provider, kind]["ms_median"]
    expected = (15 * ms("brics", "unregularised") + ms("brics", "regularised")) / 16
    assert ms("brics", "average") == pytest.approx(expected)
    assert ms("brics-baseline", "average") == ms("brics-baseline", "regularised")
    assert kinds["brics-baseline", "average"]["gan"] == "wgan-gp"
    table = (tmp_path / "train_step.md").read_text()
    assert "vs VQ-f4" in table and "average (k = 16)" in table and "brics-baseline" in done.stdout


def test_bad_options_are_named():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--baseline", "/nonexistent"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "--baseline /nonexistent: no train/ae.py there" in done.stderr
