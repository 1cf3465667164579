"""Resolution, size and index rules (docs/grids.md §1, §2 step 3) on hand-computed small cases."""

import itertools
import struct

import pytest
import torch

from gridcodes import GridConfig, MultiResGrid, level_resolutions
from gridcodes.levels import level_table
from tests.helpers import BACKENDS, DEVICE


def test_resolutions_follow_the_geometric_rule():
    # b = (64/4)**(1/15) = 2**(4/15); r_l = round(4 * 2**(4l/15)): 4*1.203=4.81 -> 5, 4*1.447=5.79
    # -> 6, 4*1.741=6.96 -> 7, 4*2.095=8.38 -> 8, ..., 4*16 = 64.
    r = level_resolutions(4, 64, 16)
    assert r[:5] == (4, 5, 6, 7, 8)
    assert r[-1] == 64 and len(r) == 16
    assert all(a <= b for a, b in itertools.pairwise(r))
    # Instant-NGP's shape 16 -> 2048 ends exactly at both bounds.
    r = level_resolutions(16, 2048, 16)
    assert (r[0], r[1], r[-1]) == (16, 22, 2048)
    assert level_resolutions(7, 99, 1) == (7,)


def test_brics_default_levels_are_all_dense():
    config = GridConfig(in_dim=3, n_groups=4, grid_type="tiled")
    assert config.level_sizes == tuple(r**3 for r in config.resolutions)
    assert config.level_sizes[-1] == 64**3 == 2**18
    assert not any(config.is_wrapped(level) for level in range(16))


@pytest.mark.parametrize("grid_type", ["hash", "tiled", "dense"])
def test_sizes_and_offsets(grid_type):
    config = GridConfig(
        in_dim=2, resolutions=(3, 5, 9), n_levels=3, log2_table_size=5, grid_type=grid_type
    )
    # r**2 = 9, 25, 81; T = 32: dense keeps 81, hash/tiled cap it at 32. No padding.
    expected = (9, 25, 81) if grid_type == "dense" else (9, 25, 32)
    assert config.level_sizes == expected
    assert config.offsets == (0, 9, 34, 34 + expected[2])
    grid = MultiResGrid(
        2,
        n_groups=3,
        n_levels=3,
        resolutions=(3, 5, 9),
        n_features=2,
        log2_table_size=5,
        grid_type=grid_type,
    )
    assert grid.params.shape == (3, config.offsets[-1], 2)
    assert grid.level_param_counts() == tuple(3 * s * 2 for s in expected)
    assert sum(grid.level_param_counts()) == grid.params.numel()


def _index_grid(backend, **kwargs) -> MultiResGrid:
    """A one-feature grid whose entry e holds e: a lookup on a vertex returns its row."""
    grid = MultiResGrid(n_features=1, backend=backend, **kwargs).to(DEVICE)
    with torch.no_grad():
        grid.params.copy_(torch.arange(grid.params.shape[1], dtype=torch.float32)[None, :, None])
    return grid


# (config, point on a vertex, expected row). r - 1 is a power of two so x * (r - 1) is exact.
INDEX_CASES = [
    # dense, r = 5: c = (0.25, 0.75) * 4 = (1, 3); D = 1 + 3 * 5 = 16
    (dict(in_dim=2, n_levels=1, resolutions=(5,), grid_type="dense"), (0.25, 0.75), 16),
    # hash with r**d = 25 <= T = 32 is dense: 16
    (
        dict(in_dim=2, n_levels=1, resolutions=(5,), grid_type="hash", log2_table_size=5),
        (0.25, 0.75),
        16,
    ),
    # tiled, T = 16 < 25: D mod 16 = 0
    (
        dict(in_dim=2, n_levels=1, resolutions=(5,), grid_type="tiled", log2_table_size=4),
        (0.25, 0.75),
        0,
    ),
    # tiled at x = 1: the upper corner (4, 4) of the last cell, D = 4 + 4 * 5 = 24; 24 mod 16 = 8
    (
        dict(in_dim=2, n_levels=1, resolutions=(5,), grid_type="tiled", log2_table_size=4),
        (1.0, 1.0),
        8,
    ),
    # hash, T = 16 < 25: (1 * 1) XOR (3 * 2654435761 mod 2**32 = 3668339987) = 3668339986;
    # mod 16 = 2
    (
        dict(in_dim=2, n_levels=1, resolutions=(5,), grid_type="hash", log2_table_size=4),
        (0.25, 0.75),
        2,
    ),
    # hash 3-D, T = 64 < 125, c = (1, 2, 3): low 6 bits of 1, 2 * 2654435761 mod 2**32 =
    # 1013904226 and 3 * 805459861 = 2416379583 are 1, 34, 63; 1 ^ 34 ^ 63 = 28
    (
        dict(in_dim=3, n_levels=1, resolutions=(5,), grid_type="hash", log2_table_size=6),
        (0.25, 0.5, 0.75),
        28,
    ),
    # tiled with D beyond 2**32: r = 2048, c = (2047,) * 3, D = 2048**3 - 1; mod 1024 = 1023
    (
        dict(in_dim=3, n_levels=1, resolutions=(2048,), grid_type="tiled", log2_table_size=10),
        (1.0,) * 3,
        1023,
    ),
    # second level starts at offsets[1] = 2**2 = 4: 4 + 16 = 20
    (dict(in_dim=2, n_levels=2, resolutions=(2, 5), grid_type="dense"), (0.25, 0.75), 20),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("kwargs", "point", "row"), INDEX_CASES)
def test_index_rules_hand_computed(backend, kwargs, point, row):
    grid = _index_grid(backend, **kwargs)
    x = torch.tensor([[point]], device=DEVICE)
    y = grid(x)
    assert y[0, 0, -1].item() == row


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("interpolation", "x", "expected"),
    [
        # r = 2, entries (a, b) = (2, 6): linear 0.75 a + 0.25 b = 3
        ("linear", 0.25, 3.0),
        # smoothstep s = 0.25**2 * (3 - 0.5) = 0.15625: 0.84375 * 2 + 0.15625 * 6 = 2.625
        ("smoothstep", 0.25, 2.625),
        ("linear", 1.0, 6.0),
        ("linear", -3.0, 2.0),  # clamped to 0
        ("linear", float("nan"), 2.0),  # NaN reads as 0
        ("linear", float("inf"), 6.0),
        ("linear", float("-inf"), 2.0),
        ("linear", 1e30, 6.0),
        ("linear", -0.0, 2.0),
    ],
)
def test_weights_and_sanitizing(backend, interpolation, x, expected):
    grid = MultiResGrid(
        1,
        n_levels=1,
        resolutions=(2,),
        n_features=1,
        grid_type="dense",
        interpolation=interpolation,
        backend=backend,
    ).to(DEVICE)
    with torch.no_grad():
        grid.params.copy_(torch.tensor([[[2.0], [6.0]]]))
    assert grid(torch.tensor([[[x]]], device=DEVICE)).item() == expected


def test_level_table_rows():
    config = GridConfig(in_dim=2, n_levels=2, resolutions=(4, 8), log2_table_size=5)
    table = level_table(config)
    # level 0: 16 <= 32 dense-in-hash; level 1: 64 > 32 hashed with primes, mask T - 1.
    # Columns: r, offset, use_hash, mask, size, bits of the float64 scale (r - 1) and shift.
    bits = lambda v: struct.unpack("<q", struct.pack("<d", v))[0]
    assert table[0].tolist() == [4, 0, 0, 2**32 - 1, 16, bits(3.0), 0, 1, 4]
    assert table[1].tolist() == [8, 16, 1, 31, 32, bits(7.0), 0, 1, 2654435761]
