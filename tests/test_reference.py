"""The PyTorch reference against a literal scalar reading of docs/grids.md §2, and its gradients."""

import math

import pytest
import torch
from hypothesis import given, note
from hypothesis import strategies as st

from gridcodes import GridConfig, grid_encode_reference
from gridcodes.levels import HASH_PRIMES


def scalar_lookup(point, params, config, group):
    """docs/grids.md §2 steps 1-5 for one point, in Python floats and ints."""
    out = []
    for level, r in enumerate(config.resolutions):
        x = [0.0 if math.isnan(v) else min(max(v, 0.0), 1.0) for v in point]
        cell, frac = [], []
        for v in x:
            p = v * (r - 1)
            i = min(math.floor(p), r - 2)
            cell.append(i)
            frac.append(p - i)
        s = [f * f * (3 - 2 * f) for f in frac] if config.interpolation == "smoothstep" else frac
        acc = [0.0] * config.n_features
        for corner in range(2**config.in_dim):
            bits = [(corner >> k) & 1 for k in range(config.in_dim)]
            c = [i + b for i, b in zip(cell, bits)]
            dense = sum(ck * r**k for k, ck in enumerate(c))
            if config.grid_type == "dense":
                index = dense
            elif config.grid_type == "tiled" or r**config.in_dim <= config.table_size:
                index = dense % config.level_sizes[level]
            else:
                h = 0
                for k, ck in enumerate(c):
                    h ^= (ck * HASH_PRIMES[k]) % 2**32
                index = h % config.table_size
            w = math.prod(sk if b else 1 - sk for sk, b in zip(s, bits))
            entry = params[group, config.offsets[level] + index]
            acc = [a + w * float(e) for a, e in zip(acc, entry)]
        out.extend(acc)
    return out


@st.composite
def small_configs(draw):
    in_dim = draw(st.integers(1, 7))
    n_levels = draw(st.integers(1, 3))
    top = 12 if in_dim <= 3 else 4
    base = draw(st.integers(2, min(5, top)))
    return GridConfig(
        in_dim=in_dim,
        n_groups=draw(st.integers(1, 3)),
        n_levels=n_levels,
        n_features=draw(st.integers(1, 3)),
        log2_table_size=draw(st.integers(2, 8)),
        base_resolution=base,
        max_resolution=draw(st.integers(base, top)),
        grid_type=draw(st.sampled_from(["hash", "tiled", "dense"])),
        interpolation=draw(st.sampled_from(["linear", "smoothstep"])),
    )


@given(config=small_configs(), seed=st.integers(0, 2**31 - 1))
def test_reference_matches_scalar_reading_of_spec(config, seed):
    note(repr(config))
    gen = torch.Generator().manual_seed(seed)
    params = torch.randn(
        config.n_groups, config.n_entries, config.n_features, generator=gen, dtype=torch.float64
    )
    x = torch.rand(9, config.n_groups, config.in_dim, generator=gen, dtype=torch.float64)
    x = x * 1.4 - 0.2  # some coordinates outside [0, 1]
    x[0, 0, 0] = float("nan")
    x[1] = 1.0
    x[2] = 0.0
    y = grid_encode_reference(x, params, config)
    for n in range(x.shape[0]):
        for g in range(config.n_groups):
            expected = torch.tensor(
                scalar_lookup(x[n, g].tolist(), params, config, g), dtype=torch.float64
            )
            torch.testing.assert_close(y[n, g], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("grid_type", ["hash", "tiled", "dense"])
@pytest.mark.parametrize("interpolation", ["linear", "smoothstep"])
@pytest.mark.parametrize("in_dim", [1, 3])
def test_gradcheck_float64(grid_type, interpolation, in_dim):
    config = GridConfig(
        in_dim=in_dim,
        n_groups=2,
        n_levels=3,
        n_features=2,
        log2_table_size=6,
        base_resolution=3,
        max_resolution=9,
        grid_type=grid_type,
        interpolation=interpolation,
    )
    gen = torch.Generator().manual_seed(0)
    params = torch.randn(2, config.n_entries, 2, generator=gen, dtype=torch.float64)
    # Interior points, away from cell faces where the lookup is not differentiable.
    x = torch.rand(7, 2, in_dim, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    params.requires_grad_(True)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x, p: grid_encode_reference(x, p, config), (x, params), eps=1e-7, atol=1e-6
    )


@pytest.mark.parametrize("interpolation", ["linear", "smoothstep"])
def test_gradient_at_bounds_is_the_inner_cell_derivative(interpolation):
    # At exactly 0 and 1 the gradient is the one-sided derivative inside the boundary cell
    # (docs/grids.md §2 step 6), which a central finite difference would halve: compare it with
    # a one-sided difference taken from inside [0, 1].
    config = GridConfig(
        in_dim=2,
        n_levels=2,
        n_features=3,
        base_resolution=3,
        max_resolution=6,
        interpolation=interpolation,
        grid_type="dense",
    )
    gen = torch.Generator().manual_seed(1)
    params = torch.randn(1, config.n_entries, 3, generator=gen, dtype=torch.float64)
    dy = torch.randn(1, 1, config.n_levels * 3, generator=gen, dtype=torch.float64)
    h = 1e-9  # truncation error ~ h * |second derivative|, roundoff ~ 1e-16 / h
    for value, step in [(0.0, h), (1.0, -h)]:
        x = torch.tensor([[[value, 0.37]]], dtype=torch.float64, requires_grad=True)
        (grid_encode_reference(x, params, config) * dy).sum().backward()
        moved = x.detach().clone()
        moved[0, 0, 0] += step
        loss = lambda p: (grid_encode_reference(p, params, config) * dy).sum().item()
        one_sided = (loss(moved) - loss(x.detach())) / step
        assert abs(x.grad[0, 0, 0].item() - one_sided) < 1e-6
        if interpolation == "linear":
            assert x.grad[0, 0, 0].item() != 0.0


def test_gradient_is_zero_outside_and_for_non_finite():
    config = GridConfig(in_dim=1, n_levels=2, n_features=2, base_resolution=2, max_resolution=5)
    params = torch.randn(1, config.n_entries, 2, dtype=torch.float64)
    values = [-0.5, 1.5, float("nan"), float("inf"), float("-inf"), 1e30, -1e-30, 0.5]
    x = torch.tensor(values, dtype=torch.float64).reshape(-1, 1, 1).requires_grad_(True)
    y = grid_encode_reference(x, params, config)
    assert torch.isfinite(y).all()
    y.sum().backward()
    assert x.grad[:7].abs().sum().item() == 0.0
    assert x.grad[7].abs().item() > 0.0
