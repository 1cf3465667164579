"""Shared test utilities: devices, tolerance-checked comparison that says where and by how much."""

from __future__ import annotations

import os
from pathlib import Path

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Backends that run on DEVICE's tensors ("cpu" is for CPU tensors only).
BACKENDS = ["torch", "triton"] + (["cpu"] if DEVICE == "cpu" else [])
# The property tests' example budgets are sized for CI's 2 CPU cores running the kernels in
# Triton's interpreter; raise this to test more drawn cases (e.g. on a GPU machine).
EXAMPLES_SCALE = int(os.environ.get("GRIDCODES_EXAMPLES_SCALE", "1"))


def examples(n: int) -> int:
    """Hypothesis max_examples for a test whose CI budget is n."""
    return n * EXAMPLES_SCALE


def assert_close_verbose(actual: torch.Tensor, expected: torch.Tensor, atol, name: str) -> None:
    """|actual - expected| <= atol elementwise (atol: float or tensor), NaN never allowed.

    On failure, reports how many elements fail, the worst one (index, both values,
    error, tolerance) and the first few others.
    """
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    tol = torch.as_tensor(atol, dtype=torch.float64).cpu().expand_as(a)
    err = (a - e).abs()
    bad = ~(err <= tol)  # NaN errors count as failures
    if not bad.any():
        return
    excess = torch.where(bad, torch.nan_to_num(err - tol, nan=float("inf")), -1.0)
    worst = int(excess.argmax())
    where = lambda flat: tuple(int(v) for v in torch.unravel_index(torch.tensor(flat), a.shape))
    lines = [
        f"{name}: {int(bad.sum())} of {a.numel()} elements differ beyond tolerance",
        f"  worst at {where(worst)}: actual={a.flatten()[worst]:.9g} "
        f"expected={e.flatten()[worst]:.9g} |err|={err.flatten()[worst]:.3g} "
        f"tol={tol.flatten()[worst]:.3g}",
    ]
    for flat in bad.flatten().nonzero().flatten()[:5].tolist():
        lines.append(
            f"  at {where(flat)}: actual={a.flatten()[flat]:.9g} expected={e.flatten()[flat]:.9g}"
        )
    raise AssertionError("\n".join(lines))


ROOT = Path(__file__).parents[1]


def run_script(script: str, *args, env: dict | None = None, check: bool = True, launcher=None):
    """Run ``train/<script>`` in a subprocess (one torch thread unless ``env`` says otherwise);
    with ``check``, a non-zero exit fails the test showing the end of its output."""
    import subprocess
    import sys

    command = [*(launcher or [sys.executable]), str(ROOT / "train" / script), *args]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=ROOT)
    if check and result.returncode != 0:
        raise AssertionError(
            f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def compiled_report(script: str) -> dict:
    """The JSON of ``bench/<script> --json -``, which compiles kernels for NVIDIA targets: run
    without TRITON_INTERPRET (it needs real ``triton.jit`` kernels; no GPU)."""
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    command = [sys.executable, str(ROOT / "bench" / script), "--json", "-"]
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(result.stdout)
