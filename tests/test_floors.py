"""The declared dependency floors hold: what is refused below them, and how launches compile.

CI also compiles every recorded launch with the floor Triton itself (``.ci/run``,
``bench/compile_check.py``); docs/grids.md §8 keeps the measured version table.
"""

import os
import re
import subprocess
import sys

import pytest
import torch

from gridcodes import FusedMLP, MultiResGrid, ops
from tests.helpers import ROOT


def declared_floor(name: str) -> tuple[int, int]:
    text = (ROOT / "pyproject.toml").read_text()
    major, minor = re.search(rf'"{name}>=(\d+)\.(\d+)', text).groups()
    return int(major), int(minor)


def test_pyproject_floors_are_the_ones_the_code_checks():
    assert declared_floor("triton") == ops.TRITON_FLOOR == (3, 3)
    assert declared_floor("torch") == (2, 7)  # torch 2.7 is the release that pins triton 3.3


@pytest.mark.skipif(not ops.TRITON_AVAILABLE, reason="triton is not installed")
def test_an_older_triton_is_refused_in_one_line_naming_the_version_needed(monkeypatch):
    monkeypatch.setattr(ops.triton, "__version__", "3.2.0")
    with pytest.raises(ValueError, match=r"triton 3\.2\.0 is installed .* need triton>=3\.3"):
        MultiResGrid(2, n_levels=2, backend="triton")
    with pytest.raises(ValueError, match=r"need triton>=3\.3 \(torch>=2\.7\)"):
        FusedMLP(16, 4, width=16, backend="triton")
    # 'auto' does not fail: the CPU backend (or, on CUDA, the reference with a warning) runs.
    grid = MultiResGrid(2, n_levels=2, backend="auto")
    assert grid(torch.rand(5, 1, 2)).shape == (5, 1, 2 * grid.config.n_features)


PACK_PROBE = """
import sys
sys.path.insert(0, "bench")
from compile_check import launches
from gridcodes.compiled import _bind, _pack
n = 0
for launch in launches():
    _, backend, (bound, specialization, options) = _bind(launch, 90)
    ours = _pack(launch.kernel, backend, launch.kwargs, bound, specialization)
    theirs = launch.kernel._pack_args(backend, launch.kwargs, bound, specialization, options)
    # Newer Tritons also list the constexprs' attributes (all empty): compare the non-empty.
    ours, theirs = [(*p[:3], {k: v for k, v in p[3].items() if v}) for p in (ours, theirs)]
    assert repr(ours) == repr(theirs), (launch.name, ours, theirs)
    n += 1
print(n)
"""


@pytest.mark.skipif(
    not hasattr(getattr(getattr(ops, "triton", None), "runtime", None), "jit")
    or not hasattr(ops.triton.runtime.jit.JITFunction, "_pack_args"),
    reason="Triton < 3.5 has no JITFunction._pack_args to compare with",
)
def test_compile_launch_packs_arguments_as_triton_does():
    """On Triton 3.3/3.4 compile_launch packs a launch itself (``_pack``); on a Triton that
    has ``_pack_args`` both must agree, for every recorded launch (no compile needed)."""
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    command = [sys.executable, "-c", PACK_PROBE]
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.split()[-1]) > 50  # grid and MLP launches, each specialization
