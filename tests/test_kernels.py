"""Triton kernels against the PyTorch reference: output, dL/dparams and dL/dx.

On a machine without CUDA the kernels run in Triton's interpreter (conftest.py); on
CUDA they are compiled. Both sides use the same cell for every point (they compute
``x * (r - 1)`` and ``floor`` in the same dtype), so they differ only by the order of
floating-point operations. The tolerances below are forward error bounds of that
reordering, ``k * u * (sum of |terms|)`` with unit roundoff ``u`` and ``k`` the number of
roundings on each side, computed per element (see ``tolerances``).
"""

import math

import pytest
import torch
from hypothesis import example, given, note, settings
from hypothesis import strategies as st

from gridcodes import MultiResGrid, ops
from gridcodes.ops import BLOCK
from tests.helpers import DEVICE, assert_close_verbose, examples

SPECIALS = [0.0, 1.0, -0.0, math.nan, math.inf, -math.inf, -0.25, 1.25, 1e30, -1e30]
# Largest resolution per in_dim so that dense grids stay small on a CPU.
MAX_DENSE_RESOLUTION = {1: 64, 2: 48, 3: 16, 4: 8}


@st.composite
def grid_cases(draw, sizes=(0, 1, 2, 63, BLOCK - 1, BLOCK, BLOCK + 1, 341), min_log2_table=2):
    in_dim = draw(st.integers(1, 4))
    grid_type = draw(st.sampled_from(["hash", "tiled", "dense"]))
    top = MAX_DENSE_RESOLUTION[in_dim] if grid_type == "dense" else 300
    base = draw(st.integers(2, min(8, top)))
    n_levels = draw(st.integers(1, 16))
    config = dict(
        in_dim=in_dim,
        n_groups=draw(st.integers(1, 5)),
        n_levels=n_levels,
        n_features=draw(st.sampled_from([1, 2, 4, 8])),
        log2_table_size=draw(st.integers(min_log2_table, 12)),
        base_resolution=base,
        grid_type=grid_type,
        interpolation=draw(st.sampled_from(["linear", "smoothstep"])),
    )
    # One case in four follows tiny-cuda-nn's convention (docs/tcnn.md): resolutions grow by
    # per_level_scale from base (r_l ~ base * scale**l), bounded like the others.
    if draw(st.integers(0, 3)) == 0:
        growth = (top / base) ** (1 / max(n_levels - 1, 1))
        scale = draw(st.floats(1.0, max(1.0, min(2.0, growth * 0.95))))
        config.update(convention="tcnn", per_level_scale=scale)
    else:
        config["max_resolution"] = draw(st.integers(base, top))
    return {
        "config": config,
        # empty, single, odd, and one off each side of the block size
        "n_points": draw(st.sampled_from(sizes)),
        "special_fraction": draw(st.sampled_from([0.0, 0.05, 0.3])),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


def make_points(grid: MultiResGrid, n_points: int, special_fraction: float, seed: int):
    """Uniform points in [-0.1, 1.1], some moved onto vertices / cell faces, some special values."""
    c = grid.config
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n_points, c.n_groups, c.in_dim, generator=gen, dtype=torch.float64) * 1.2 - 0.1
    # A quarter of the coordinates on a vertex of a random level: points on vertices, edges
    # and faces of the cells (x * scale + shift lands on or next to an integer).
    level = torch.randint(0, c.n_levels, x.shape, generator=gen)
    r = torch.tensor(c.resolutions)[level]
    scale = torch.tensor([lv.scale for lv in c.levels], dtype=torch.float64)[level]
    shift = torch.tensor([lv.shift for lv in c.levels], dtype=torch.float64)[level]
    k = torch.floor(torch.rand(x.shape, generator=gen, dtype=torch.float64) * r)
    vertex = ((k - shift) / scale).clamp(0, 1)
    x = torch.where(torch.rand(x.shape, generator=gen) < 0.25, vertex, x)
    special = torch.tensor(SPECIALS, dtype=torch.float64)
    pick = special[torch.randint(0, len(SPECIALS), x.shape, generator=gen)]
    x = torch.where(torch.rand(x.shape, generator=gen) < special_fraction, pick, x)
    return x


def tolerances(grid_ref, x, dy, unit_roundoff):
    """Per-element bounds |triton - reference| for y, dL/dparams and dL/dx.

    - y = sum_c w_c P_c, w_c >= 0, a product of d factors: each side rounds at most
      2**d + d + 1 times, so |err| <= 2 (2**d + d + 2) u sum_c w_c |P_c|; the sum is the
      reference lookup of |P|.
    - dL/dP_e = sum over its m_e contributions of w dy: |err| <= 2 (m_e + d + 3) u
      sum w |dy|, that sum being the reference's table gradient for upstream |dy|; m_e is
      bounded by the entry's hit count.
    - dL/dx_k = sum_l a_l ds/df sum_c (±prod_{m != k} factors) <P_c, dy_l>: F, 2**d
      and L terms summed plus ~2d products, with sum_c |dw/ds_k| <= 2 and |ds/df| <= 1.5,
      so |err| <= 2 (F + 2**d + L + 2d + 6) u * 3 F max|P| sum_l a_l max|dy_l|, with a_l the
      level's position scale (r_l - 1 in the gridcodes convention, tcnn's scale_l otherwise).
    """
    c = grid_ref.config
    table = grid_ref.params.detach()
    abs_grid = MultiResGrid(**c.to_dict(), backend="torch").to(table.device, table.dtype)
    with torch.no_grad():
        abs_grid.params.copy_(table.abs())
    y_abs = abs_grid(x.detach()).detach()
    abs_grid.params.requires_grad_(True)
    (abs_grid(x.detach()) * dy.abs()).sum().backward()
    hits = grid_ref.hit_counts(x.detach())[..., None]
    d, n_corners, n_features = c.in_dim, 2**c.in_dim, c.n_features
    tol_y = 2 * (n_corners + d + 2) * unit_roundoff * y_abs
    tol_params = 2 * (hits + d + 3) * unit_roundoff * abs_grid.params.grad
    dy_levels = dy.abs().reshape(*dy.shape[:-1], c.n_levels, n_features).amax(-1)
    scale = torch.tensor([lv.scale for lv in c.levels], dtype=dy.dtype, device=dy.device)
    magnitude = 3 * n_features * table.abs().max() * (dy_levels * scale).sum(-1, keepdim=True)
    tol_x = 2 * (n_features + n_corners + c.n_levels + 2 * d + 6) * unit_roundoff * magnitude
    return tol_y, tol_params, tol_x


def run_pair(case, dtype=torch.float32, x_dtype=None, deterministic=False, backend="triton"):
    """Forward + backward of ``backend`` and the reference on one drawn case."""
    torch.manual_seed(case["seed"])
    grid = MultiResGrid(**case["config"], backend=backend, deterministic=deterministic)
    grid = grid.to(DEVICE, dtype)
    ref = MultiResGrid(**case["config"], backend="torch").to(DEVICE, dtype)
    with torch.no_grad():
        grid.params.normal_()
        ref.params.copy_(grid.params)
    x = make_points(grid, case["n_points"], case["special_fraction"], case["seed"])
    x = x.to(DEVICE, x_dtype or dtype)
    x_tri = x.clone().requires_grad_(True)
    x_ref = x.clone().requires_grad_(True)
    y_tri, y_ref = grid(x_tri), ref(x_ref)
    dy = torch.randn_like(y_ref)
    y_tri.backward(dy)
    y_ref.backward(dy)
    return (
        grid,
        ref,
        x,
        dy,
        (y_tri, grid.params.grad, x_tri.grad),
        (y_ref, ref.params.grad, x_ref.grad),
    )


def check_pair(case, dtype=torch.float32, x_dtype=None, deterministic=False, backend="triton"):
    _, ref, x, dy, tri, expected = run_pair(case, dtype, x_dtype, deterministic, backend)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    u = torch.finfo(compute).eps / 2
    # The bounds are computed in the compute dtype so they see the same cells.
    bound_ref = MultiResGrid(**case["config"], backend="torch").to(DEVICE, compute)
    with torch.no_grad():
        bound_ref.params.copy_(ref.params)
    tol_y, tol_params, tol_x = tolerances(bound_ref, x.to(compute), dy.to(compute), u)
    # Half-precision results are rounded once more at the end: one ulp of the value.
    rounding = lambda t: torch.finfo(t.dtype).eps * t.detach().abs().double()
    for name, a, e, tol in zip(
        ("y", "dL/dparams", "dL/dx"), tri, expected, (tol_y, tol_params, tol_x)
    ):
        worst = (a.double() - e.double()).abs().max().item() if a.numel() else 0.0
        note(f"{name}: max |err| = {worst:.3g}")
        assert_close_verbose(a, e, tol.double() + rounding(e), name)
    assert torch.isfinite(tri[0]).all()
    outside = ~((x >= 0) & (x <= 1))  # includes NaN
    assert (tri[2][outside] == 0).all(), (
        "dL/dx must be exactly 0 outside [0, 1] and for non-finite x"
    )


BRICS_DEFAULT = dict(
    in_dim=3,
    n_groups=4,
    n_levels=16,
    n_features=4,
    log2_table_size=18,
    base_resolution=4,
    max_resolution=64,
    grid_type="tiled",
    interpolation="linear",
)
NGP_LIKE = dict(
    in_dim=3,
    n_groups=1,
    n_levels=4,
    n_features=2,
    log2_table_size=8,
    base_resolution=16,
    max_resolution=2048,
    grid_type="hash",
    interpolation="smoothstep",
)


@settings(max_examples=examples(25))
@given(case=grid_cases())
@example(case={"config": BRICS_DEFAULT, "n_points": 129, "special_fraction": 0.05, "seed": 0})
@example(case={"config": NGP_LIKE, "n_points": 341, "special_fraction": 0.3, "seed": 1})
def test_triton_matches_reference_float32(case):
    note(repr(case))
    check_pair(case)


@settings(max_examples=examples(8))
@given(case=grid_cases())
def test_triton_matches_reference_float64(case):
    note(repr(case))
    check_pair(case, dtype=torch.float64)


@settings(max_examples=examples(6))
@given(case=grid_cases(), dtype=st.sampled_from([torch.float16, torch.bfloat16]))
def test_half_precision_table(case, dtype):
    note(repr(case))
    check_pair(case, dtype=dtype, x_dtype=torch.float32)


@settings(max_examples=examples(6))
@given(case=grid_cases(), x_dtype=st.sampled_from([torch.float16, torch.bfloat16]))
def test_half_precision_coordinates(case, x_dtype):
    note(repr(case))
    check_pair(case, dtype=torch.float32, x_dtype=x_dtype)


@settings(max_examples=examples(5))
@given(case=grid_cases(sizes=(63, BLOCK + 1, 341)))
def test_replicated_coarse_accumulators_match_reference(case):
    """The atomic scatter with the coarse levels' rows summed in replicated copies."""
    note(repr(case))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ops, "REPLICA_POINTS", 16)  # several copies even for small batches
        patch.setattr(ops, "COARSE_LEVEL_ROWS", 64)
        check_pair(case)


# The deterministic scatter runs a few kernels per backward in the interpreter: smaller
# batches and tables of at least 2**6 entries keep it short.
@settings(max_examples=examples(5))
@given(case=grid_cases(sizes=(0, 1, 63, BLOCK + 1), min_log2_table=6))
def test_deterministic_mode_matches_reference_and_is_bitwise_reproducible(case):
    note(repr(case))
    check_pair(case, deterministic=True)
    grads = []
    for _ in range(2):
        tri = run_pair(case, deterministic=True)[4]
        grads.append(tri[1])
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("grid_type", ["hash", "tiled", "dense"])
def test_rows_never_leave_the_table(grid_type):
    """The rows the kernels read and write stay inside params for any coordinate value."""
    from gridcodes import kernels
    from gridcodes.ops import INTERPRET, _constants

    grid = MultiResGrid(
        3,
        n_groups=3,
        n_levels=5,
        base_resolution=2,
        max_resolution=40,
        log2_table_size=7,
        grid_type=grid_type,
        backend="triton",
    ).to(DEVICE)
    values = torch.tensor([*SPECIALS, 0.5, 1 - 2**-24, 2**-149, -(2**-149)])
    x = values[torch.randint(0, len(values), (200, 3, 3))].to(DEVICE)
    n_rows = grid.params.shape[0] * grid.params.shape[1]
    n_levels = grid.config.n_levels
    rows = torch.full((200 * 3 * n_levels * 8,), -1, dtype=torch.int32, device=DEVICE)
    kernels.grid_contribution_rows_kernel[(2, 3)](
        x,
        grid.level_table,
        rows,
        200,
        3,
        grid.params.shape[1],
        n_levels,
        STATIC_L=n_levels if INTERPRET else 0,
        BLOCK=BLOCK,
        **_constants(x, grid.params, False, 0),
    )
    assert rows.min().item() >= 0 and rows.max().item() < n_rows


SPANNING_CASES = [
    dict(in_dim=2, n_levels=3, n_features=2, grid_type="tiled", interpolation="linear"),
    dict(in_dim=3, n_levels=2, n_features=4, grid_type="hash", interpolation="smoothstep"),
]


@pytest.mark.parametrize("config", SPANNING_CASES)
@settings(max_examples=1)
@given(seed=st.just(3))
def test_deterministic_mode_with_rows_spanning_many_chunks(config, seed):
    """Chunks of 16 contributions: most rows span several chunks, so the chunk combine runs."""
    config = dict(config, n_groups=2, log2_table_size=6, base_resolution=2, max_resolution=6)
    case = {"config": config, "n_points": 63, "special_fraction": 0.05, "seed": seed}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ops, "CHUNK", 16)
        check_pair(case, deterministic=True)
        first, second = (run_pair(case, deterministic=True)[4][1] for _ in range(2))
    assert torch.equal(first, second)
