"""tiny-cuda-nn compatibility (docs/tcnn.md): config parsing, level rules, and every backend
against an independent reference written from the description in docs/tcnn.md.

The reference below is a literal scalar reading of that description in numpy float32 /
Python ints: one point, one level, one corner at a time. It shares no code with gridcodes.
"""

import math

import numpy as np
import pytest
import torch

from gridcodes import MultiResGrid, tcnn
from tests.helpers import BACKENDS, DEVICE, assert_close_verbose

PRIMES = (1, 2654435761, 805459861, 3674653429)
F32 = np.float32


def tcnn_reference(n_dims, config):
    """Levels of a tcnn grid: (scale, resolution, size, hashed) each, and the offsets."""
    n_levels = config.get("n_levels", 16)
    base = config.get("base_resolution", 16)
    otype = config["otype"]
    kind = {"HashGrid": "hash", "DenseGrid": "dense", "TiledGrid": "tiled"}.get(otype)
    kind = kind or config["type"].lower()
    log2_pls = F32(math.log2(F32(config.get("per_level_scale", 2.0))))
    levels, offsets = [], [0]
    for level in range(n_levels):
        growth = F32(2.0 ** float(F32(F32(level) * log2_pls)))
        scale = F32(float(growth) * base - 1.0)  # one rounding (fused multiply-add)
        resolution = math.ceil(scale) + 1
        size = min(resolution**n_dims, 2**31 - 1)
        size = -(-size // 8) * 8
        if kind == "tiled":
            size = min(size, base**n_dims)
        if kind == "hash":
            size = min(size, 2 ** config.get("log2_hashmap_size", 19))
        hashed = kind == "hash" and size < resolution**n_dims
        levels.append((scale, resolution, size, hashed))
        offsets.append(offsets[-1] + size)
    return levels, offsets


def tcnn_lookup(x, flat, n_dims, config, dy=None):
    """One point x (d floats in [0, 1]) through a tcnn grid with flat params (n_params,).

    Returns the features (L*F,), and with dy (L*F,): dL/dparams (n_params,) and dL/dx (d,).
    """
    n_features = config.get("n_features_per_level", 2)
    smooth = config.get("interpolation", "Linear") == "Smoothstep"
    levels, offsets = tcnn_reference(n_dims, config)
    out, dx = [], [0.0] * n_dims
    dparams = np.zeros_like(flat) if dy is not None else None
    for level, (scale, resolution, size, hashed) in enumerate(levels):
        cell, s, ds = [], [], []
        for v in x:
            # x * scale + 0.5 rounded once: exact in float64 for float32 operands, then rounded
            pos = F32(float(F32(v)) * float(scale) + 0.5)
            i = math.floor(pos)
            f = float(pos) - i
            cell.append(i)
            s.append(f * f * (3 - 2 * f) if smooth else f)
            ds.append(6 * f * (1 - f) if smooth else 1.0)
        acc = np.zeros(n_features)
        for corner in range(2**n_dims):
            bits = [(corner >> k) & 1 for k in range(n_dims)]
            c = [i + b for i, b in zip(cell, bits)]
            if hashed:
                index = 0
                for k, ck in enumerate(c):
                    index ^= (ck * PRIMES[k]) % 2**32
            else:
                index = sum(ck * resolution**k for k, ck in enumerate(c)) % 2**32
            row = offsets[level] + index % size
            entry = flat[row * n_features : (row + 1) * n_features].astype(np.float64)
            factors = [sk if b else 1 - sk for sk, b in zip(s, bits)]
            acc += math.prod(factors) * entry
            if dy is None:
                continue
            g = dy[level * n_features : (level + 1) * n_features]
            dparams[row * n_features : (row + 1) * n_features] += math.prod(factors) * g
            for k in range(n_dims):
                others = math.prod(f for m, f in enumerate(factors) if m != k)
                sign = 1.0 if bits[k] else -1.0
                dx[k] += float(scale) * ds[k] * sign * others * float(entry @ g)
        out.extend(acc)
    if dy is None:
        return np.array(out)
    return np.array(out), dparams, np.array(dx)


HASH = {
    "otype": "HashGrid",
    "n_levels": 4,
    "n_features_per_level": 2,
    "log2_hashmap_size": 10,
    "base_resolution": 4,
    "per_level_scale": 1.7,
}
CONFIGS = {
    "hash": HASH,  # levels 0-1 dense (4**3, 7**3 <= 1024), 2-3 hashed
    "hash-smoothstep-2d": dict(HASH, interpolation="Smoothstep", per_level_scale=2.0),
    "dense": {"otype": "DenseGrid", "n_levels": 3, "base_resolution": 3, "per_level_scale": 1.5},
    "tiled": {"otype": "TiledGrid", "n_levels": 3, "n_features_per_level": 4, "base_resolution": 3},
    "grid-type": {"otype": "Grid", "type": "Hash", "n_levels": 2, "log2_hashmap_size": 6},
}
DIMS = {"hash-smoothstep-2d": 2}


def _points(levels, n_dims, gen):
    """Vertices, cell centres and faces of every level, the borders 0 and 1, random points."""
    special = [0.0, 1.0]
    for scale, *_ in levels:
        scale = float(scale)
        for k in range(1, 4):
            special += [(k - 0.5) / scale, k / scale]  # a vertex (pos = k), a centre (k + 0.5)
        special.append(1 - 0.5 / scale)  # pos = scale: the last vertex
    special = np.clip(np.array(special, dtype=np.float32), 0, 1)
    rand = gen.random((40, n_dims)).astype(np.float32)
    picks = special[gen.integers(0, len(special), (40, n_dims))]
    return np.concatenate([rand, picks, np.array([[0.0] * n_dims, [1.0] * n_dims], np.float32)])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_backends_match_the_independent_tcnn_reference(backend, name):
    config, n_dims = CONFIGS[name], DIMS.get(name, 3)
    grid = MultiResGrid.from_tcnn(n_dims, config, backend=backend).to(DEVICE)
    levels, offsets = tcnn_reference(n_dims, config)
    assert grid.config.offsets == tuple(offsets)
    assert grid.resolutions == tuple(r for _, r, _, _ in levels)
    gen = np.random.default_rng(0)
    flat = gen.standard_normal(tcnn.n_params(grid)).astype(np.float32)
    grid.load_tcnn_params(torch.from_numpy(flat).to(DEVICE))
    assert torch.equal(grid.tcnn_params().cpu(), torch.from_numpy(flat))
    x = _points(levels, n_dims, gen)
    dy = gen.standard_normal((len(x), grid.out_features)).astype(np.float32)
    xt = torch.from_numpy(x).to(DEVICE)[:, None, :].requires_grad_(True)
    y = grid(xt)
    y.backward(torch.from_numpy(dy).to(DEVICE)[:, None, :])
    expected = [tcnn_lookup(p, flat, n_dims, config, g) for p, g in zip(x, dy)]
    y_ref = torch.tensor(np.stack([e[0] for e in expected]), dtype=torch.float32)
    dx_ref = torch.tensor(np.stack([e[2] for e in expected]), dtype=torch.float32)
    dp_ref = torch.tensor(sum(e[1] for e in expected), dtype=torch.float32)
    # float32 sums of at most 2**d products of magnitude max|P|: a few ulps of sum |w P|.
    magnitude = float(np.abs(flat).max())
    assert_close_verbose(y[:, 0].cpu(), y_ref, 1e-6 * magnitude * 8, f"{name} y")
    assert_close_verbose(grid.params.grad.reshape(-1).cpu(), dp_ref, 1e-5, f"{name} dL/dparams")
    scale_sum = sum(float(s) for s, *_ in levels)
    tol_x = 1e-6 * 8 * 4 * magnitude * float(np.abs(dy).max()) * scale_sum
    assert_close_verbose(xt.grad[:, 0].cpu(), dx_ref, tol_x, f"{name} dL/dx")


def test_encoding_keeps_tcnn_call_signature_and_state_dict():
    enc = tcnn.Encoding(3, HASH, seed=7)
    assert list(enc.state_dict()) == ["params"]
    assert enc.params.shape == (tcnn.n_params(enc.grid),) and enc.n_output_dims == 8
    assert enc.params.abs().max() <= 1e-4
    flat = torch.randn_like(enc.params)
    enc.load_state_dict({"params": flat})
    x = torch.rand(33, 3)
    grid = MultiResGrid.from_tcnn(3, HASH, backend="torch")
    grid.load_tcnn_params(flat)
    torch.testing.assert_close(enc(x), grid(x[:, None])[:, 0], rtol=1e-6, atol=1e-6)
    enc(x).sum().backward()
    assert enc.params.grad.shape == enc.params.shape
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        enc(torch.rand(4, 1, 3))


def test_level_rules_hand_computed():
    # per_level_scale 2, base 16: scale 15, 31, 63, 127 -> resolutions 16, 32, 64, 128;
    # entries 16**3 = 4096, 32768, 262144, then 128**3 > 2**19: hashed, T = 524288.
    grid = MultiResGrid.from_tcnn(3, {"otype": "HashGrid", "n_levels": 4})
    assert grid.resolutions == (16, 32, 64, 128)
    assert grid.config.level_sizes == (4096, 32768, 262144, 524288)
    assert [lv.scale for lv in grid.config.levels] == [15.0, 31.0, 63.0, 127.0]
    assert [lv.hashed for lv in grid.config.levels] == [False, False, False, True]
    assert tcnn.n_params(grid) == 2 * (4096 + 32768 + 262144 + 524288)
    # Sizes round up to a multiple of 8: r = 3 -> 27 -> 32. Tiled caps at base**d = 27.
    dense = MultiResGrid.from_tcnn(3, {"otype": "DenseGrid", "n_levels": 2, "base_resolution": 3})
    assert dense.config.level_sizes[0] == 32
    tiled = MultiResGrid.from_tcnn(3, {"otype": "TiledGrid", "n_levels": 2, "base_resolution": 3})
    assert tiled.config.level_sizes == (27, 27)
    # DenseGrid's default scale reaches 256 vertices at the last level.
    assert MultiResGrid.from_tcnn(3, {"otype": "DenseGrid", "n_levels": 8}).resolutions[-1] == 256


@pytest.mark.parametrize(
    ("config", "error", "message"),
    [
        ({"otype": "Frequency"}, ValueError, "'HashGrid', 'DenseGrid', 'TiledGrid'"),
        ({}, ValueError, "otype"),
        ({"otype": "HashGrid", "interpolation": "Nearest"}, ValueError, "Nearest"),
        ({"otype": "HashGrid", "interpolation": "Cubic"}, ValueError, "'Cubic'"),
        ({"otype": "Grid", "type": "Octree"}, ValueError, "'Octree'"),
        ({"otype": "HashGrid", "n_features_per_level": 3}, ValueError, "n_features_per_level=3"),
        ({"otype": "HashGrid", "n_levels": 2, "n_features": 4}, ValueError, "not both"),
        ({"otype": "HashGrid", "hash": "Prime"}, ValueError, "hash='Prime'"),
        ({"otype": "HashGrid", "n_levels": 2.0}, TypeError, "n_levels"),
        ({"otype": "HashGrid", "per_level_scale": "2"}, TypeError, "per_level_scale"),
        ({"otype": "HashGrid", "per_level_scale": 0.5}, ValueError, "per_level_scale"),
    ],
)
def test_bad_tcnn_configs_name_the_value(config, error, message):
    with pytest.raises(error, match=message):
        MultiResGrid.from_tcnn(3, config)


def test_keys_tcnn_does_not_read_are_ignored_with_a_warning_each():
    # Real configs carry keys of their own (instant-nsr-pl: include_xyz, start_level, ...);
    # tcnn ignores them, so a config with them builds the same grid, and each key warns once.
    config = {**CONFIGS["hash"], "include_xyz": True, "start_level": 4, "n_levls": 4}
    with pytest.warns(UserWarning) as caught:
        grid = MultiResGrid.from_tcnn(3, config)
    messages = [str(w.message) for w in caught]
    for key in ("include_xyz", "start_level", "n_levls"):
        assert sum(f"'{key}'" in m for m in messages) == 1, messages
    assert grid.config == MultiResGrid.from_tcnn(3, CONFIGS["hash"]).config


def test_tcnn_grids_save_and_load(tmp_path):
    grid = MultiResGrid.from_tcnn(3, CONFIGS["tiled"])
    with torch.no_grad():
        grid.params.normal_()
    grid.save(tmp_path / "g.safetensors")
    loaded = MultiResGrid.load(tmp_path / "g.safetensors")
    assert loaded.config == grid.config and torch.equal(loaded.params, grid.params)
