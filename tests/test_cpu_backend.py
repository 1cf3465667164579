"""The CPU backend against the PyTorch reference: the Triton kernels' property tests and
tolerances (``tests/test_kernels.py``), run on ``backend="cpu"``.

Both sides compute ``x * (r - 1)`` and ``floor`` in the same dtype, so they read the same
cells and differ only by the order of floating-point operations, which the same per-element
bounds cover.
"""

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import example, given, note, settings
from hypothesis import strategies as st

from gridcodes import MultiResGrid, cpu, cpu_runtime, usage
from tests.helpers import DEVICE, examples
from tests.test_kernels import (
    BRICS_DEFAULT,
    NGP_LIKE,
    check_pair,
    grid_cases,
    make_points,
    run_pair,
)

pytestmark = pytest.mark.skipif(DEVICE != "cpu", reason="the CPU backend runs on CPU tensors")


@settings(max_examples=examples(60))
@given(case=grid_cases())
@example(case={"config": BRICS_DEFAULT, "n_points": 129, "special_fraction": 0.05, "seed": 0})
@example(case={"config": NGP_LIKE, "n_points": 341, "special_fraction": 0.3, "seed": 1})
def test_cpu_matches_reference_float32(case):
    note(repr(case))
    check_pair(case, backend="cpu")


@settings(max_examples=examples(20))
@given(case=grid_cases())
def test_cpu_matches_reference_float64(case):
    note(repr(case))
    check_pair(case, dtype=torch.float64, backend="cpu")


@settings(max_examples=examples(15))
@given(case=grid_cases(), dtype=st.sampled_from([torch.float16, torch.bfloat16]))
def test_cpu_half_precision_table(case, dtype):
    note(repr(case))
    check_pair(case, dtype=dtype, x_dtype=torch.float32, backend="cpu")


@settings(max_examples=examples(15))
@given(case=grid_cases(), x_dtype=st.sampled_from([torch.float16, torch.bfloat16]))
def test_cpu_half_precision_coordinates(case, x_dtype):
    note(repr(case))
    check_pair(case, dtype=torch.float32, x_dtype=x_dtype, backend="cpu")


@settings(max_examples=2)
@given(in_dim=st.sampled_from([5, 7]))
def test_cpu_matches_reference_beyond_the_triton_dimensions(in_dim):
    """in_dim 5..7 and n_features outside {1, 2, 4, 8}: the reference's whole domain."""
    config = dict(
        in_dim=in_dim,
        n_groups=2,
        n_levels=3,
        n_features=3,
        log2_table_size=9,
        base_resolution=2,
        max_resolution=5,
        grid_type="hash",
        interpolation="smoothstep",
    )
    check_pair(
        {"config": config, "n_points": 50, "special_fraction": 0.05, "seed": 4}, backend="cpu"
    )


@settings(max_examples=examples(30))
@given(case=grid_cases(), chunk=st.sampled_from([1, 2**10, cpu.CHUNK_CONTRIBUTIONS]))
def test_hit_counts_match_the_reference(case, chunk):
    """Usage statistics read the lookup's own rows: the same corners as the reference's
    ``usage.hit_counts``, special values and one chunk per point included; counts add up."""
    note(repr(case))
    grid = MultiResGrid(**case["config"], backend="cpu")
    x = make_points(grid, case["n_points"], case["special_fraction"], case["seed"]).float()
    expected = usage.hit_counts(x, grid.config)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cpu, "CHUNK_CONTRIBUTIONS", chunk)
        counts = grid.hit_counts(x)
        assert torch.equal(counts, expected)
        assert torch.equal(grid.hit_counts(x, counts), 2 * expected)


@settings(max_examples=2)
@given(chunk=st.sampled_from([1, 2**10]))
def test_many_chunks_match_the_reference(chunk):
    """Points are processed in chunks of CHUNK_CONTRIBUTIONS (at least one point each); the
    table gradient accumulates over chunks."""
    case = {"config": BRICS_DEFAULT, "n_points": 77, "special_fraction": 0.05, "seed": 2}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cpu, "CHUNK_CONTRIBUTIONS", chunk)
        check_pair(case, backend="cpu")


@pytest.mark.parametrize("grid_type", ["tiled", "dense", "hash"])
def test_difference_tables_hold_each_corner_pair_of_every_axis(grid_type):
    """dL/dx on dense and tiled levels reads ``params[c + e_k] - params[c]`` from a table
    made per axis: at the row of every corner with b_k = 0 it holds exactly the difference
    to the row of its neighbour with b_k = 1, wrapped levels included (r**k >= T, and
    r**k a multiple of T: a shift of 0)."""
    config = dict(
        in_dim=3,
        n_groups=2,
        n_levels=6,
        n_features=2,
        log2_table_size=6,
        base_resolution=2,
        max_resolution=40 if grid_type != "dense" else 9,
        grid_type=grid_type,
    )
    grid = MultiResGrid(**config, backend="cpu")
    with torch.no_grad():
        grid.params.normal_()
    geo = grid._geometry(torch.device("cpu"))
    table = grid.params.detach().reshape(-1, 2)
    diffs = cpu._differences(table, geo)
    rows, _, _ = cpu._corners(torch.rand(200, 2, 3), torch.float32, geo)
    checked = 0
    for kind, a, b in geo.runs:
        if kind == cpu.HASHED:
            continue
        for k in range(3):
            for c in range(8):
                if c >> k & 1:
                    continue
                near, far = rows[a:b, ..., c], rows[a:b, ..., c | 1 << k]
                assert torch.equal(diffs[k][near], table[far] - table[near])
                checked += near.numel()
    assert checked > 0  # every grid here has dense or tiled levels


def test_gradients_are_bitwise_reproducible():
    """The table gradient is a serial sum per feature, so two runs agree bit for bit."""
    case = {"config": NGP_LIKE, "n_points": 341, "special_fraction": 0.0, "seed": 5}
    first, second = (run_pair(case, backend="cpu")[4] for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@settings(max_examples=2)
@given(seed=st.integers(0, 2**31 - 1))
def test_threaded_backward_matches_the_reference_and_repeats_exactly(seed):
    """With several torch threads the backward's scatters run on worker threads (CI runs one
    torch thread per test worker, so this path is forced here): the same values, and bit for
    bit the same on a second run."""
    case = {"config": BRICS_DEFAULT, "n_points": 341, "special_fraction": 0.05, "seed": seed}
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cpu, "CHUNK_CONTRIBUTIONS", 2**12)  # many chunks
        torch.set_num_threads(2)
        try:
            check_pair(case, backend="cpu")
            first, second = (run_pair(case, backend="cpu")[4] for _ in range(2))
        finally:
            torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_gradcheck_float64():
    grid = MultiResGrid(
        3,
        n_groups=2,
        n_levels=3,
        n_features=2,
        log2_table_size=6,
        base_resolution=2,
        max_resolution=9,
        grid_type="hash",
        interpolation="smoothstep",
        backend="cpu",
    ).double()
    with torch.no_grad():
        grid.params.normal_()
    x = torch.rand(9, 2, 3, dtype=torch.float64) * 0.9 + 0.05
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, _: grid(x), (x, grid.params))


def test_cuda_tensors_are_refused_with_a_clear_message():
    grid = MultiResGrid(2, n_levels=2, max_resolution=8, backend="cpu")
    x = torch.rand(4, 1, 2, device="meta")
    grid.to("meta")
    with pytest.raises(ValueError, match="backend='cpu' got tensors on meta"):
        grid(x)


def _lookup_grads(grid, x, dy):
    x = x.clone().requires_grad_(True)
    grid.params.grad = None
    grid(x).backward(dy)
    return x.grad, grid.params.grad


@pytest.mark.parametrize(
    "n_features, dtype",
    [(4, torch.float32), (2, torch.float32), (2, torch.float64), (3, torch.float32)],
)
def test_results_do_not_depend_on_the_memory_layout_of_dy(n_features, dtype):
    """Feature rows move as one 8- or 16-byte element where the layout allows (F = 4 or 2
    in float32, 2 in float64), value by value otherwise; a group-major dy, as a model that
    transposes the output for per-group layers passes back, gives the same bits."""
    config = {**BRICS_DEFAULT, "n_features": n_features}
    grid = MultiResGrid(**config, backend="cpu").to(dtype)
    with torch.no_grad():
        grid.params.normal_()
    x = torch.rand(300, 4, 3, dtype=dtype)
    dy = torch.randn(300, 4, 16 * n_features, dtype=dtype)
    group_major = dy.transpose(0, 1).contiguous().transpose(0, 1)
    expected = _lookup_grads(grid, x, dy)
    for got, want in zip(_lookup_grads(grid, x, group_major), expected):
        assert torch.equal(got, want)
    ref = MultiResGrid(**config, backend="torch").to(dtype)
    with torch.no_grad():
        ref.params.copy_(grid.params)
    assert torch.allclose(grid(x), ref(x), rtol=1e-5, atol=1e-6)


def test_retained_graph_runs_its_backward_again_after_other_calls():
    """The forward's kept buffers return to the pool only when its graph is freed: a graph
    kept with retain_graph survives other calls that recycle buffers in between."""
    grid = MultiResGrid(**BRICS_DEFAULT, backend="cpu")
    with torch.no_grad():
        grid.params.normal_()
    x = torch.rand(300, 4, 3, requires_grad=True)
    y = grid(x)
    dy = torch.randn_like(y)
    y.backward(dy, retain_graph=True)
    first = (x.grad.clone(), grid.params.grad.clone())
    for _ in range(2):  # other lookups take (and scribble on) whatever the pool holds
        _lookup_grads(grid, torch.rand(300, 4, 3), torch.randn_like(y))
    x.grad, grid.params.grad = None, None
    y.backward(dy)
    assert torch.equal(x.grad, first[0]) and torch.equal(grid.params.grad, first[1])


def test_a_pending_graph_keeps_its_buffers_while_others_are_recycled():
    grid = MultiResGrid(**NGP_LIKE, backend="cpu")
    with torch.no_grad():
        grid.params.normal_()
    x1, x2 = torch.rand(2, 200, 1, 3)
    dy = torch.randn(200, 1, 8)
    expected = [g.clone() for g in _lookup_grads(grid, x1, dy)]
    x1.requires_grad_(True)
    y1 = grid(x1)
    for _ in range(2):  # freed graphs: their buffers go to the pool and out again
        _lookup_grads(grid, x2, dy)
    grid.params.grad = None
    y1.backward(dy)
    assert torch.equal(x1.grad, expected[0]) and torch.equal(grid.params.grad, expected[1])


def test_buffers_are_recycled_within_the_limit():
    grid = MultiResGrid(**BRICS_DEFAULT, backend="cpu")
    x, dy = torch.rand(64, 4, 3), torch.randn(64, 4, 64)
    cpu_runtime.BUFFERS.clear()
    _lookup_grads(grid, x, dy)
    held = cpu_runtime.BUFFERS.held
    assert 0 < held <= cpu_runtime.BUFFER_LIMIT
    _lookup_grads(grid, x, dy)  # the same sizes again: taken from the pool, then returned
    assert cpu_runtime.BUFFERS.held == held
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cpu_runtime, "BUFFER_LIMIT", 0)
        cpu_runtime.BUFFERS.clear()
        _lookup_grads(grid, x, dy)
        assert cpu_runtime.BUFFERS.held == 0


def test_the_buffer_pool_drops_its_oldest_buffers_when_full():
    pool = cpu_runtime._Buffers()
    old = [pool.empty(256, dtype=torch.float32) for _ in range(3)]  # 1 KiB each
    new = pool.empty(512, dtype=torch.float32)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cpu_runtime, "BUFFER_LIMIT", 3 * 1024)
        pool.give(old)
        assert pool.held == 3 * 1024
        pool.give([new])  # 2 KiB more: the two oldest go
        assert pool.held == 3 * 1024
        assert pool.empty(512, dtype=torch.float32).data_ptr() == new.data_ptr()
        assert pool.empty(256, dtype=torch.float32).data_ptr() == old[2].data_ptr()
        assert pool.held == 0
        pool.give([torch.empty(1024)])  # larger than the limit: not kept
        assert pool.held == 0


THREADS_PROBE = """
import os, torch
from gridcodes import MultiResGrid
torch.set_num_threads(2)
torch.randn(2**22).exp_()  # the main thread's OpenMP team
before = len(os.listdir("/proc/self/task"))
grid = MultiResGrid(3, n_groups=4, n_levels=16, log2_table_size=14, backend="cpu")
x = torch.rand(4096, 4, 3, requires_grad=True)
grid(x).square().sum().backward()
print(len(os.listdir("/proc/self/task")) - before)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_worker_threads_open_no_openmp_teams():
    """The backward adds its two worker threads and no OpenMP team of theirs: a team per
    worker would make libgomp stop spinning between parallel regions for the whole
    process (cpu_runtime.in_background)."""
    out = subprocess.run(
        [sys.executable, "-c", THREADS_PROBE], capture_output=True, text=True, check=True
    )
    assert int(out.stdout) == 2
