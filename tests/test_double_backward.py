"""Second-order gradients (docs/tcnn.md): the gradient of the backward's (dL/dx, dL/dparams)
w.r.t. dL/dy, x and the table, in the Triton kernels and the CPU backend against the
reference's autograd, under the property tests of ``tests/test_kernels.py``; gradgradcheck
on the reference; third order raises."""

import pytest
import torch
from hypothesis import example, given, note, settings

from gridcodes import MultiResGrid, grid_encode_reference
from gridcodes.levels import GridConfig
from tests.helpers import BACKENDS, DEVICE, assert_close_verbose, examples
from tests.test_kernels import BRICS_DEFAULT, NGP_LIKE, grid_cases, make_points

FAST = [b for b in BACKENDS if b != "torch"]  # "cpu" only runs on a CPU machine
# Fewer points than the first-order tests: the double backward's corner loops make each
# interpreted launch several times longer.
SIZES = (0, 1, 63, 257)


def second_order(grid, x, dy, hx, hparams):
    """(d/dx, d/dparams, d/d(dy)) of <dL/dx, hx> + <dL/dparams, hparams> for L = <y, dy>."""
    x = x.clone().requires_grad_(True)
    dy = dy.clone().requires_grad_(True)
    y = grid(x)
    dx, dparams = torch.autograd.grad(y, (x, grid.params), dy, create_graph=True)
    loss = (dx * hx).sum() + (dparams * hparams).sum()
    inputs = (x, grid.params, dy)
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return tuple(torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs))


def run_double(case, backend, dtype=torch.float32, deterministic=False):
    torch.manual_seed(case["seed"])
    grid = MultiResGrid(**case["config"], backend=backend, deterministic=deterministic)
    grid = grid.to(DEVICE, dtype)
    ref = MultiResGrid(**case["config"], backend="torch").to(DEVICE, dtype)
    with torch.no_grad():
        grid.params.normal_()
        ref.params.copy_(grid.params)
    x = make_points(grid, case["n_points"], case["special_fraction"], case["seed"])
    x = x.to(DEVICE, dtype)
    dy = torch.randn(*x.shape[:-1], grid.out_features, device=DEVICE, dtype=dtype)
    hx = torch.randn_like(x)
    hparams = torch.randn_like(grid.params)
    fast = second_order(grid, x, dy, hx, hparams)
    expected = second_order(ref, x, dy, hx, hparams)
    return grid, x, dy, hx, hparams, fast, expected


def _max(t: torch.Tensor) -> torch.Tensor:
    return t.abs().max() if t.numel() else t.new_zeros(())


def tolerances(grid, x, dy, hx, hparams, unit_roundoff):
    """Per-element bounds |fast - reference| for d/dx, d/dparams and d/d(dy).

    With a_l the scale, |s'| <= 1.5, |s''| <= 6, sum_c |dw/ds_k| <= 2 and sum_c of the
    two-axis products <= 4: |v_c| summed over corners <= 3 a_l |h|_1, so
    |d/d(dy)| <= 3 a_l |h|_1 max|P| + max|H| (H: the upstream gradient of dL/dparams);
    |d/dx_m| <= sum_l a_l**2 F max|P| max|dy_l| (12 |h_m| + 9 |h|_1) + the first backward's
    bound with H as the table; an entry of d/dparams sums hits * 3 a_l |h|_1 max|dy| at most.
    Each is a sum of as many roundings as terms, plus the products' few.
    """
    c = grid.config
    d, n_corners, n_features, n_levels = c.in_dim, 2**c.in_dim, c.n_features, c.n_levels
    inside = (x >= 0) & (x <= 1)
    h = torch.where(inside, hx.abs(), 0.0)
    h1 = h.sum(-1, keepdim=True)
    scale = torch.tensor([lv.scale for lv in c.levels], dtype=x.dtype, device=x.device)
    p_max, hp_max = _max(grid.params.detach()), _max(hparams)
    dy_levels = dy.abs().reshape(*dy.shape[:-1], n_levels, n_features).amax(-1)  # (N, G, L)
    u = unit_roundoff
    bound_dy = 3 * scale[:, None] * h1[..., None] * p_max + hp_max  # (N, G, L, 1)
    tol_dy = 2 * (n_corners + 2 * d + 8) * u * bound_dy.expand(*dy.shape[:-1], n_levels, 1)
    tol_dy = tol_dy.expand(*dy.shape[:-1], n_levels, n_features).reshape(dy.shape)
    hessian = (scale**2 * dy_levels).sum(-1, keepdim=True) * n_features * p_max * (12 * h + 9 * h1)
    first = 3 * n_features * hp_max * (scale * dy_levels).sum(-1, keepdim=True)
    count = n_features + n_corners + n_levels + 4 * d + 10
    tol_x = 2 * count * u * (hessian + first)
    hits = grid.hit_counts(x.detach())[..., None].to(x.dtype)
    level_of_entry = torch.repeat_interleave(
        torch.arange(n_levels, device=x.device), torch.tensor(c.level_sizes, device=x.device)
    )
    per_hit = 3 * scale[level_of_entry][None, :, None] * _max(h1) * _max(dy)
    tol_params = 2 * (hits + 2 * d + 6) * u * hits * per_hit
    return tol_x, tol_params, tol_dy


def check_double(case, backend, dtype=torch.float32, deterministic=False):
    grid, x, dy, hx, hparams, fast, expected = run_double(case, backend, dtype, deterministic)
    u = torch.finfo(dtype).eps / 2
    tols = tolerances(grid, x, dy, hx, hparams, u)
    for name, a, e, tol in zip(("d/dx", "d/dparams", "d/d(dy)"), fast, expected, tols):
        worst = (a.double() - e.double()).abs().max().item() if a.numel() else 0.0
        note(f"{name}: max |err| = {worst:.3g}")
        assert_close_verbose(a, e, tol.double(), name)
    outside = ~((x >= 0) & (x <= 1))
    assert (fast[0][outside] == 0).all(), "d/dx must be 0 outside [0, 1]"
    return fast


CPU_ONLY = pytest.mark.skipif(DEVICE != "cpu", reason="the CPU backend runs on CPU tensors")


@CPU_ONLY
@settings(max_examples=examples(12))
@given(case=grid_cases(sizes=SIZES))
@example(case={"config": BRICS_DEFAULT, "n_points": 129, "special_fraction": 0.05, "seed": 0})
@example(case={"config": NGP_LIKE, "n_points": 257, "special_fraction": 0.3, "seed": 1})
def test_cpu_double_backward_matches_reference_float32(case):
    note(repr(case))
    check_double(case, "cpu")


# The interpreter runs the double backward's unrolled corner loops op by op (up to 10 s
# per example at d = 4 with 16 levels): fewer examples than the CPU backend.
@settings(max_examples=examples(5))
@given(case=grid_cases(sizes=SIZES))
@example(case={"config": BRICS_DEFAULT, "n_points": 129, "special_fraction": 0.05, "seed": 0})
@example(case={"config": NGP_LIKE, "n_points": 257, "special_fraction": 0.3, "seed": 1})
def test_triton_double_backward_matches_reference_float32(case):
    note(repr(case))
    check_double(case, "triton")


@pytest.mark.parametrize(
    ("backend", "n_examples"), [pytest.param("cpu", 6, marks=CPU_ONLY), ("triton", 3)]
)
def test_double_backward_matches_reference_float64(backend, n_examples):
    @settings(max_examples=examples(n_examples))
    @given(case=grid_cases(sizes=SIZES))
    def check(case):
        note(repr(case))
        check_double(case, backend, dtype=torch.float64)

    check()


@settings(max_examples=examples(3))
@given(case=grid_cases(sizes=(1, 63, 257), min_log2_table=6))
def test_deterministic_double_backward_is_bitwise_reproducible(case):
    note(repr(case))
    first = check_double(case, "triton", deterministic=True)[1]
    second = run_double(case, "triton", deterministic=True)[5][1]
    assert torch.equal(first, second)


CONFIGS = [
    dict(in_dim=1, n_levels=3, max_resolution=9, grid_type="dense"),
    dict(in_dim=2, n_levels=3, max_resolution=9, grid_type="hash", log2_table_size=5),
    dict(in_dim=3, n_levels=2, max_resolution=7, grid_type="tiled", log2_table_size=6),
    dict(in_dim=3, n_levels=3, per_level_scale=1.6, convention="tcnn", log2_table_size=6),
]


@pytest.mark.parametrize("interpolation", ["linear", "smoothstep"])
@pytest.mark.parametrize("kwargs", CONFIGS)
def test_gradgradcheck_reference_float64(kwargs, interpolation):
    config = GridConfig(
        n_groups=2, n_features=2, base_resolution=3, interpolation=interpolation, **kwargs
    )
    gen = torch.Generator().manual_seed(0)
    params = torch.randn(2, config.n_entries, 2, generator=gen, dtype=torch.float64)
    # Interior points, away from cell faces where the lookup is not twice differentiable.
    x = torch.rand(5, 2, config.in_dim, generator=gen, dtype=torch.float64) * 0.8 + 0.1
    params.requires_grad_(True)
    x.requires_grad_(True)
    lookup = lambda x, p: grid_encode_reference(x, p, config)
    assert torch.autograd.gradgradcheck(lookup, (x, params), eps=1e-7, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_eikonal_gradient_reaches_table_and_mlp(backend):
    """|df/dx| of f = MLP(grid(x)) is differentiable w.r.t. the table and the MLP."""
    grid = MultiResGrid(3, n_levels=4, n_features=2, max_resolution=16, backend=backend)
    grid = grid.to(DEVICE)
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Softplus(), torch.nn.Linear(16, 1))
    mlp = mlp.to(DEVICE)
    with torch.no_grad():
        grid.params.normal_()
    x = torch.rand(50, 1, 3, device=DEVICE, requires_grad=True)
    f = mlp(grid(x))
    (grad,) = torch.autograd.grad(f.sum(), x, create_graph=True)
    ((grad.norm(dim=-1) - 1) ** 2).mean().backward()
    assert grid.params.grad.abs().sum() > 0
    *weights, last_bias = mlp.parameters()  # the last bias does not change df/dx
    assert all(p.grad.abs().sum() > 0 for p in weights) and last_bias.grad is None


@pytest.mark.parametrize("backend", FAST)
def test_third_order_fails_loudly(backend):
    grid = MultiResGrid(3, n_groups=2, n_levels=2, max_resolution=8, backend=backend).to(DEVICE)
    x = torch.rand(7, 2, 3, device=DEVICE, requires_grad=True)
    (dx,) = torch.autograd.grad(grid(x).pow(2).sum(), x, create_graph=True)
    (ddx,) = torch.autograd.grad(dx.pow(2).sum(), x, create_graph=True)
    third_order = r"no autograd formula|once_differentiable|require grad|not three times"
    with pytest.raises(RuntimeError, match=third_order):
        ddx.sum().backward()
    if backend == "cpu":  # raises, never a partial value, asked for any input
        (dx,) = torch.autograd.grad(grid(x).pow(2).sum(), x, create_graph=True)
        (ddx,) = torch.autograd.grad(dx.pow(2).sum(), x, create_graph=True)
        with pytest.raises(RuntimeError, match="not three times"):
            torch.autograd.grad(ddx.sum(), [x, grid.params], allow_unused=True)
