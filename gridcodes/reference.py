"""Pure-PyTorch multi-resolution grid lookup: the ground truth.

Written for clarity, one level at a time, following docs/grids.md §2 step by step. It is
differentiable by autograd (w.r.t. both the table and the coordinates), runs in
float32 or float64 (``torch.autograd.gradcheck``), on any device, and is what the
Triton kernels are tested against.
"""

from __future__ import annotations

import torch

from .conventions import Level
from .levels import HASH_PRIMES, GridConfig


def compute_dtype(params: torch.Tensor) -> torch.dtype:
    """float64 when the table is float64, else float32 (docs/grids.md §4)."""
    return torch.float64 if params.dtype == torch.float64 else torch.float32


def sanitize(x: torch.Tensor) -> torch.Tensor:
    """docs/grids.md §2 step 1: NaN -> 0, +inf -> 1, -inf -> 0, then clamp to [0, 1]."""
    return torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0).clamp(0.0, 1.0)


def corner_offsets(in_dim: int, device: torch.device) -> torch.Tensor:
    """The 2**d corners of a unit cell, ``(2**d, d)`` int64; bit k of corner c is ``b_k``."""
    corners = torch.arange(2**in_dim, device=device)
    return (corners[:, None] >> torch.arange(in_dim, device=device)) & 1


def level_index(corner: torch.Tensor, config: GridConfig, level: int) -> torch.Tensor:
    """docs/grids.md §2 step 3: index within level ``level`` of integer vertices ``corner``
    (..., d).

    Hashed levels XOR ``c_k * π_k mod 2**32``; the others take the dense index
    ``D(c) = sum_k c_k base**k`` (base = r; torch-ngp: r + 1). Both are reduced modulo the
    level's size (docs/tcnn.md for the tcnn and torch-ngp sizes).
    """
    lv = config.levels[level]
    if lv.hashed:
        index = torch.zeros_like(corner[..., 0])
        for k in range(config.in_dim):
            index = index ^ ((corner[..., k] * HASH_PRIMES[k]) & 0xFFFFFFFF)
        return index % lv.size
    # D(c) reduced mod size with Horner's rule so nothing overflows int64; for dense levels
    # of the gridcodes convention (and levels that fit) the mod is the identity.
    index = torch.zeros_like(corner[..., 0])
    for k in reversed(range(config.in_dim)):
        index = (index * lv.base + corner[..., k]) % lv.size
    return index


def fused_position(x: torch.Tensor, scale: float, shift: float) -> torch.Tensor:
    """``x * scale + shift`` rounded once to x's dtype, as a fused multiply-add would.

    For float32, the product of two float32 values is exact in float64 and so is the sum
    when ``x * scale >= 2**-6``; below that, p lies in [0.5, 0.52) and the float64 rounding
    can move it by at most one float32 ulp, never across an integer (docs/tcnn.md).
    """
    if x.dtype == torch.float32:
        return (x.double() * scale + shift).float()
    return x * scale + shift


def cell_position(x: torch.Tensor, level: Level) -> tuple[torch.Tensor, torch.Tensor]:
    """docs/grids.md §2 step 2: cell origin ``i`` (int64) and fraction ``f`` in [0, 1].

    gridcodes (align-corners): ``p = x (r - 1)``, ``i = min(floor p, r - 2)``; tcnn and
    torch-ngp: ``p = x scale + 0.5`` rounded once, ``i = floor p``. ``x`` must already be
    in [0, 1]. ``i`` carries no gradient; ``f`` does, through ``x``.
    """
    if level.clamped:
        p = x * level.scale
        i = torch.clamp(torch.floor(p.detach()), max=level.resolution - 2)
    else:
        p = fused_position(x, level.scale, level.shift)
        i = torch.floor(p.detach())
    return i.long(), p - i


def interpolation_weight(f: torch.Tensor, interpolation: str) -> torch.Tensor:
    """docs/grids.md §2 step 4: ``s = f`` (linear) or ``s = f**2 (3 - 2f)`` (smoothstep)."""
    if interpolation == "smoothstep":
        return f * f * (3.0 - 2.0 * f)
    return f


def _differentiable_coords(x: torch.Tensor) -> torch.Tensor:
    """Sanitized coordinates whose gradient follows docs/grids.md §2 step 6.

    Inside [0, 1] (bounds included) the input itself flows through, so the gradient
    at exactly 0 and 1 is the derivative inside the boundary cell (a clamp would
    zero it there). Outside [0, 1] or non-finite, the sanitized constant is used and
    the gradient is 0.
    """
    inside = (x >= 0) & (x <= 1)  # False for NaN
    return torch.where(inside, x, sanitize(x.detach()))


def grid_encode_reference(
    x: torch.Tensor, params: torch.Tensor, config: GridConfig
) -> torch.Tensor:
    """Multi-resolution grid lookup, reference implementation.

    Args:
        x: ``(N, n_groups, in_dim)`` coordinates, any float dtype; values outside
            [0, 1] (and NaN, ±inf) are handled per docs/grids.md §2 step 1.
        params: ``(n_groups, n_entries, n_features)`` table; float32 or float64.
        config: the grid's geometry.

    Returns:
        ``(N, n_groups, n_levels * n_features)`` in ``params.dtype``; level ``l`` occupies
        features ``l * F .. l * F + F - 1``.
    """
    dtype = compute_dtype(params)
    coords = _differentiable_coords(x.to(dtype))
    table = params.to(dtype)
    corners = corner_offsets(config.in_dim, x.device)  # (C, d)
    group = torch.arange(coords.shape[1], device=x.device)[None, :, None]  # (1, G, 1)
    levels = []
    for level, lv in enumerate(config.levels):
        i, f = cell_position(coords, lv)  # (N, G, d)
        s = interpolation_weight(f, config.interpolation)
        vertex = i[:, :, None, :] + corners  # (N, G, C, d)
        rows = config.offsets[level] + level_index(vertex, config, level)  # (N, G, C)
        factors = torch.where(corners.bool(), s[:, :, None, :], 1.0 - s[:, :, None, :])
        weight = factors.prod(dim=-1)  # (N, G, C)
        values = table[group, rows]  # (N, G, C, F)
        levels.append((weight[..., None] * values).sum(dim=2))
    return torch.cat(levels, dim=-1).to(params.dtype)


def corner_rows(
    x: torch.Tensor, config: GridConfig, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Table rows (within a group) of every corner every point reads: ``(N, G, L, 2**d)`` int64.

    ``dtype`` is the computation dtype of the lookup (see :func:`compute_dtype`), so the
    cells are exactly those the lookup reads. Used for hit statistics (paper Fig. 3b,
    App. E); no gradient.
    """
    coords = sanitize(x.detach().to(dtype))
    corners = corner_offsets(config.in_dim, x.device)
    rows = []
    for level, lv in enumerate(config.levels):
        i, _ = cell_position(coords, lv)
        vertex = i[:, :, None, :] + corners
        rows.append(config.offsets[level] + level_index(vertex, config, level))
    return torch.stack(rows, dim=2)
