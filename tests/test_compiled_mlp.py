"""What the GPU will run for the fused MLP, checked without one (bench/mlp_kernel_report.py):
every launch of a forward + backward compiled for sm_80 and sm_90 uses tensor cores, never
spills, and scatters weight gradients with relaxed reductions; and a forward + backward is
a fixed, small number of launches whatever the depth."""

from unittest import mock

import pytest
import torch

from gridcodes import ops
from gridcodes.mlp_ops import MLPSpec, backward, forward
from gridcodes.mlp_reference import MLPLayout
from tests.helpers import compiled_report


@pytest.fixture(scope="module")
def report() -> dict:
    pytest.importorskip("triton.backends.nvidia")
    return compiled_report("mlp_kernel_report.py")


def where(r) -> str:
    return f"{r['kernel']} ({r['variant']}, sm_{r['capability']})"


def test_every_width_dtype_and_target_compiles(report):
    seen = {(r["width"], r["dtype"], r["capability"], r["kernel"]) for r in report["rows"]}
    for width in (16, 32, 64, 128):
        for dtype in ("float16", "bfloat16") if width >= 64 else ("float16",):
            for capability in (80, 90):
                for kernel in ("mlp_forward_kernel", "mlp_backward_kernel"):
                    assert (width, dtype, capability, kernel) in seen


def test_every_layer_runs_on_tensor_cores(report):
    for r in report["rows"]:
        instruction = "HMMA" if r["capability"] == 80 else "HGMMA"  # Hopper: warpgroup MMA
        assert r[instruction] > 0, f"{where(r)}: no {instruction}"


def test_no_spills(report):
    for r in report["rows"]:
        assert r["stack_bytes"] == 0 and r["local_bytes"] == 0, f"{where(r)}: spills"
        assert not r["local"], f"{where(r)}: local memory {r['local']}"


def test_weight_gradients_are_relaxed_reductions_without_fences(report):
    """No returning atomics, no GPU-wide fences. (Hopper's warpgroup MMA reads operands from
    shared memory behind a CTA barrier and an async-proxy fence: those stay.)"""
    for r in report["rows"]:
        wide = {op: n for op, n in r["fences"].items() if "CTA" not in op and "ASYNC" not in op}
        assert not wide and not r["atomics"], f"{where(r)}: {wide} {r['atomics']}"
        if r["kernel"] == "mlp_backward_kernel":
            deterministic = "deterministic" in r["variant"]
            assert bool(r["reductions"]) != deterministic, f"{where(r)}: {r['reductions']}"


@pytest.mark.parametrize("n_hidden", [1, 2, 8])
def test_forward_and_backward_take_a_fixed_small_number_of_launches(n_hidden):
    """Triton launches (recorded) plus every aten op that would launch a kernel (views and
    allocations launch none): 2 kernels and one zeroed gradient buffer, at any depth."""
    from torch.utils._python_dispatch import TorchDispatchMode

    spec = MLPSpec(MLPLayout(32, 3, 64, n_hidden))
    launches, aten = [], []

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            aten.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    x = torch.empty(4096, 32, dtype=torch.float16)
    params = torch.empty(spec.layout.n_params)
    record = lambda kernel, grid, args, kwargs: launches.append(kernel.fn.__name__)
    with mock.patch.object(ops, "_run", record), Count():
        y, hidden = forward(x, params, spec, save=True)
        backward(torch.empty_like(y), x, params, hidden, spec, need_dx=True)
    free = {"empty", "empty_like", "new_empty", "empty_strided", "view", "t", "slice"}
    kernels = [op for op in aten if op not in free]
    assert launches == ["mlp_forward_kernel", "mlp_backward_kernel"]
    assert kernels == ["zeros"] or kernels == ["zero_"] or kernels == ["new_zeros"], aten
    assert len(launches) + len(kernels) <= 6
