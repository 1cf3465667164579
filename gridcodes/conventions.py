"""Where a point falls in each level, and how big each level is, per coordinate convention.

Every backend reads one :class:`Level` per level (through ``GridConfig.levels`` and the
kernels' level table), so a convention is nothing but these numbers:

- ``"gridcodes"`` (the default, docs/grids.md §1-2): align-corners, ``p = x (r - 1)``, the cell
  origin clamped to ``r - 2``, no padding;
- ``"tcnn"``: tiny-cuda-nn's grid encodings, ``p = x scale_l + 0.5`` (one rounding, as the
  fused multiply-add of its kernels), its per-level scale, resolution and size rules;
- ``"torch-ngp"``: torch-ngp's ``gridencoder`` (hash grids), the same position rule with
  its own sizes and a dense index over ``r + 1`` vertices per axis.

docs/tcnn.md writes the tcnn and torch-ngp rules out; this module is their only home.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

CONVENTIONS = ("gridcodes", "tcnn", "torch-ngp")
UINT32 = 2**32
# tiny-cuda-nn's largest resolution per in_dim whose dense index fits 32 bits; beyond it
# the dense index is not formed at all (a hashed level hashes, a dense or tiled one reads
# entry 0 everywhere, which gridcodes refuses).
TCNN_MAX_DENSE_BASE = (0, 0xFFFFFFFF, 0xFFFF, 0x659, 0xFF, 0x54, 0x28, 0x17)
# tiny-cuda-nn caps the entries of a level at this before rounding up to a multiple of 8.
TCNN_MAX_LEVEL_PARAMS = 2**31 - 1


@dataclass(frozen=True)
class Level:
    """One level's geometry, as every backend reads it.

    A coordinate x in [0, 1] falls at ``p = x * scale + shift`` (gridcodes: the product
    alone; tcnn / torch-ngp: rounded once, as a fused multiply-add), in the cell with origin
    ``i = floor(p)`` (clamped to ``resolution - 2`` when ``clamped``) and fraction
    ``f = p - i``. A corner ``c`` has the dense index ``D(c) = sum_k c_k * base**k``; its row
    within the level is ``hash(c) mod size`` when ``hashed``, else ``D(c) mod size``.
    """

    resolution: int  # vertices per axis, r
    scale: float  # p = x * scale + shift; a float32 value for tcnn / torch-ngp
    shift: float  # 0.0 (align-corners) or 0.5
    size: int  # table entries of the level
    base: int  # radix of the dense index: r, or r + 1 (torch-ngp)
    hashed: bool  # Instant-NGP's spatial hash instead of the dense index
    clamped: bool  # cell origin clamped to r - 2 (the gridcodes convention)

    def top_corner(self) -> int:
        """Largest corner coordinate (per axis) any x in [0, 1] reads."""
        if self.clamped:
            return self.resolution - 1
        return math.floor(f32(self.scale + self.shift)) + 1

    def dense_bound(self, in_dim: int) -> int:
        """Largest dense index ``D(c)`` any x in [0, 1] reads."""
        return self.top_corner() * sum(self.base**k for k in range(in_dim))


def f32(value: float) -> float:
    """``value`` rounded to the nearest float32 (ties to even), as a Python float."""
    return struct.unpack("f", struct.pack("f", value))[0]


def _next_multiple_of_8(n: int) -> int:
    return (n + 7) // 8 * 8


def gridcodes_levels(
    in_dim: int, resolutions: Sequence[int], grid_type: str, table_size: int
) -> tuple[Level, ...]:
    """docs/grids.md §1: dense levels hold r**d entries, tiled and hashed ones at most T."""
    levels = []
    for r in resolutions:
        n_vertices = r**in_dim
        size = n_vertices if grid_type == "dense" else min(n_vertices, table_size)
        hashed = grid_type == "hash" and n_vertices > table_size
        levels.append(Level(r, float(r - 1), 0.0, size, r, hashed, True))
    return tuple(levels)


def tcnn_default_per_level_scale(grid_type: str, base_resolution: int, n_levels: int) -> float:
    """tcnn's default: 2 for hash and tiled grids; dense grids reach 256 at the last level."""
    if grid_type != "dense":
        return 2.0
    if n_levels < 2:
        raise ValueError(
            "a tcnn DenseGrid with n_levels=1 needs an explicit per_level_scale "
            "(tcnn's default divides by n_levels - 1)"
        )
    ratio = f32(256.0 / f32(base_resolution))
    return f32(math.exp(f32(f32(math.log(ratio)) / f32(n_levels - 1))))


def tcnn_scales(base_resolution: int, per_level_scale: float, n_levels: int) -> tuple[float, ...]:
    """tcnn's per-level scale in float32: ``2**(l * log2(per_level_scale)) * base - 1``.

    Each step rounds to float32 as tcnn does; the last product and subtraction round once
    (the CUDA compiler contracts them into a fused multiply-add).
    """
    log2_scale = f32(math.log2(f32(per_level_scale)))
    return tuple(
        f32(f32(2.0 ** f32(level * log2_scale)) * base_resolution - 1.0)
        for level in range(n_levels)
    )


def tcnn_levels(
    in_dim: int,
    n_levels: int,
    base_resolution: int,
    per_level_scale: float,
    grid_type: str,
    log2_table_size: int,
) -> tuple[Level, ...]:
    """tiny-cuda-nn's levels (docs/tcnn.md): resolution ``ceil(scale) + 1``; entries
    ``r**d`` (capped at 2**31 - 1) rounded up to a multiple of 8, then at most ``base**d``
    (tiled) or T (hash); a hash level hashes when it has fewer entries than ``r**d``."""
    levels = []
    for level, scale in enumerate(tcnn_scales(base_resolution, per_level_scale, n_levels)):
        r = math.ceil(scale) + 1
        n_vertices = r**in_dim
        size = _next_multiple_of_8(min(n_vertices, TCNN_MAX_LEVEL_PARAMS))
        if grid_type == "tiled":
            size = min(size, base_resolution**in_dim)
        elif grid_type == "hash":
            size = min(size, 2**log2_table_size)
        too_fine = r > TCNN_MAX_DENSE_BASE[in_dim]
        hashed = grid_type == "hash" and (too_fine or size < n_vertices)
        if too_fine and not hashed:
            raise ValueError(
                f"level {level} has resolution {r}: beyond {TCNN_MAX_DENSE_BASE[in_dim]} for "
                f"in_dim={in_dim} tcnn's {grid_type} grids read entry 0 for every point; "
                "lower per_level_scale or n_levels"
            )
        levels.append(Level(r, scale, 0.5, size, r, hashed, False))
    return tuple(levels)


def torch_ngp_levels(
    in_dim: int, n_levels: int, base_resolution: int, per_level_scale: float, log2_table_size: int
) -> tuple[Level, ...]:
    """torch-ngp's hash-grid levels (docs/tcnn.md): the scale of tcnn's rule (with
    ``log2(per_level_scale)`` rounded from float64); entries ``min(T, (R + 1)**d)`` rounded
    up to a multiple of 8 with ``R = ceil(base * per_level_scale**l)`` in float64; a dense
    index over ``r + 1`` vertices per axis, hashed when that exceeds the entries."""
    log2_scale = f32(math.log2(per_level_scale))
    levels = []
    for level in range(n_levels):
        scale = f32(f32(2.0 ** f32(level * log2_scale)) * base_resolution - 1.0)
        r = math.ceil(scale) + 1
        host_resolution = math.ceil(base_resolution * per_level_scale**level)
        size = _next_multiple_of_8(min(2**log2_table_size, (host_resolution + 1) ** in_dim))
        hashed = (r + 1) ** in_dim > size
        levels.append(Level(r, scale, 0.5, size, r + 1, hashed, False))
    return tuple(levels)


def index_reduction(levels: Sequence[Level], in_dim: int, wrapped_by_mask: Sequence[bool]) -> int:
    """How the kernels bring a combined index into ``[0, size)``, for all levels at once.

    0: the mask alone suffices (power-of-two hashed levels, gridcodes' tiled levels, and
    dense indices that never reach ``size``); 1: one conditional subtraction of ``size``
    (every dense index is below ``2 size``); 2: a full modulo (tcnn's tiled grids, or a
    hashed level whose size is not a power of two).
    """
    mode = 0
    for level, by_mask in zip(levels, wrapped_by_mask):
        if by_mask:
            continue
        if level.hashed:
            mode = max(mode, 0 if level.size & (level.size - 1) == 0 else 2)
            continue
        bound = level.dense_bound(in_dim)
        if bound >= UINT32:
            raise ValueError(
                f"resolution {level.resolution}: its dense index reaches {bound}, beyond 32 bits"
            )
        mode = max(mode, 0 if bound < level.size else 1 if bound < 2 * level.size else 2)
    return mode
