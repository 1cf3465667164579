"""Pure-PyTorch multi-resolution grid lookup: the ground truth.

Written for clarity, one level at a time, following SPEC §1.2 step by step. It is
differentiable by autograd (w.r.t. both the table and the coordinates), runs in
float32 or float64 (``torch.autograd.gradcheck``), on any device, and is what the
Triton kernels are tested against.
"""

from __future__ import annotations

import torch

from .levels import HASH_PRIMES, GridConfig


def compute_dtype(params: torch.Tensor) -> torch.dtype:
    """float64 when the table is float64, else float32 (SPEC §1.2: computation in float32)."""
    return torch.float64 if params.dtype == torch.float64 else torch.float32


def sanitize(x: torch.Tensor) -> torch.Tensor:
    """SPEC §1.2 step 1: NaN -> 0, +inf -> 1, -inf -> 0, then clamp to [0, 1]."""
    return torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0).clamp(0.0, 1.0)


def corner_offsets(in_dim: int, device: torch.device) -> torch.Tensor:
    """The 2**d corners of a unit cell, ``(2**d, d)`` int64; bit k of corner c is ``b_k``."""
    corners = torch.arange(2**in_dim, device=device)
    return (corners[:, None] >> torch.arange(in_dim, device=device)) & 1


def level_index(corner: torch.Tensor, config: GridConfig, level: int) -> torch.Tensor:
    """SPEC §1.2 step 3: index within level ``level`` of integer vertices ``corner`` (..., d)."""
    r = config.resolutions[level]
    size = config.level_sizes[level]
    if config.grid_type == "hash" and config.is_wrapped(level):
        index = torch.zeros_like(corner[..., 0])
        for k in range(config.in_dim):
            index = index ^ ((corner[..., k] * HASH_PRIMES[k]) & 0xFFFFFFFF)
        return index % size
    # D(c) = sum_k c_k r**k, reduced mod size with Horner's rule so nothing overflows
    # int64; for dense levels (and levels that fit) the mod is the identity.
    index = torch.zeros_like(corner[..., 0])
    for k in reversed(range(config.in_dim)):
        index = (index * r + corner[..., k]) % size
    return index


def cell_position(x: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SPEC §1.2 step 2 (align-corners): cell origin ``i`` (int64) and fraction ``f`` in [0, 1].

    ``x`` must already be in [0, 1]. ``i`` carries no gradient; ``f`` does, through ``x``.
    """
    p = x * (r - 1)
    i = torch.clamp(torch.floor(p.detach()), max=r - 2)
    return i.long(), p - i


def interpolation_weight(f: torch.Tensor, interpolation: str) -> torch.Tensor:
    """SPEC §1.2 step 4: ``s = f`` (linear) or ``s = f**2 (3 - 2f)`` (smoothstep)."""
    if interpolation == "smoothstep":
        return f * f * (3.0 - 2.0 * f)
    return f


def _differentiable_coords(x: torch.Tensor) -> torch.Tensor:
    """Sanitized coordinates whose gradient follows SPEC §1.2 step 6.

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
            [0, 1] (and NaN, ±inf) are handled per SPEC §1.2 step 1.
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
    for level, r in enumerate(config.resolutions):
        i, f = cell_position(coords, r)  # (N, G, d)
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
    for level, r in enumerate(config.resolutions):
        i, _ = cell_position(coords, r)
        vertex = i[:, :, None, :] + corners
        rows.append(config.offsets[level] + level_index(vertex, config, level))
    return torch.stack(rows, dim=2)
