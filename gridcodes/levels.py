"""Level geometry of a multi-resolution grid: resolutions, table sizes, offsets.

Everything here is computed once on the host from a frozen :class:`GridConfig`
(docs/grids.md §1). The hot path only ever sees the small integer table built by
:func:`level_table`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .conventions import (
    CONVENTIONS,
    Level,
    gridcodes_levels,
    index_reduction,
    tcnn_levels,
    torch_ngp_levels,
)

GRID_TYPES = ("hash", "tiled", "dense")
INTERPOLATIONS = ("linear", "smoothstep")
MAX_IN_DIM = 7

# Spatial-hash primes of Instant-NGP (Teschner et al. 2003); π_0 = 1 keeps the
# first coordinate coherent in memory.
HASH_PRIMES = (1, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737)

# Flat indices into params are int32 in the kernels.
MAX_PARAMS = 2**31 - 1


def _check_int(name: str, value, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def level_resolutions(base_resolution: int, max_resolution: int, n_levels: int) -> tuple[int, ...]:
    """Vertices per axis of each level (paper App. A.1, Instant-NGP eq. 2-3).

    ``r_l = round(base * b**l)`` with ``b = exp((ln max - ln base) / (n_levels - 1))``,
    evaluated in float64 so that ``r_0 == base`` and ``r_{L-1} == max`` exactly.
    """
    if n_levels == 1:
        return (base_resolution,)
    growth = math.exp((math.log(max_resolution) - math.log(base_resolution)) / (n_levels - 1))
    return tuple(round(base_resolution * growth**level) for level in range(n_levels))


@dataclass(frozen=True)
class GridConfig:
    """Hyper-parameters of a :class:`~gridcodes.MultiResGrid` (docs/grids.md §1).

    The derived geometry (``resolutions``, ``levels``, ``level_sizes``, ``offsets``) is
    validated and filled in on construction. ``convention`` picks the coordinate
    convention and size rules (:mod:`gridcodes.conventions`): ``"gridcodes"`` (docs/grids.md §2,
    the default) or ``"tcnn"`` / ``"torch-ngp"``, whose resolutions follow from
    ``base_resolution`` and ``per_level_scale`` (docs/tcnn.md).
    """

    in_dim: int
    n_groups: int = 1
    n_levels: int = 16
    n_features: int = 4
    log2_table_size: int = 18
    base_resolution: int = 4
    max_resolution: int = 64
    resolutions: tuple[int, ...] | None = None
    grid_type: str = "hash"
    interpolation: str = "linear"
    convention: str = "gridcodes"
    per_level_scale: float | None = None
    levels: tuple[Level, ...] = field(init=False, repr=False)
    level_sizes: tuple[int, ...] = field(init=False)
    offsets: tuple[int, ...] = field(init=False)
    index_reduction: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _check_int("in_dim", self.in_dim, 1, MAX_IN_DIM)
        _check_int("n_groups", self.n_groups, 1)
        _check_int("n_levels", self.n_levels, 1)
        _check_int("n_features", self.n_features, 1)
        _check_int("log2_table_size", self.log2_table_size, 1, 30)
        if self.grid_type not in GRID_TYPES:
            raise ValueError(f"grid_type must be one of {GRID_TYPES}, got {self.grid_type!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}"
            )
        if self.convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {CONVENTIONS}, got {self.convention!r}")
        if self.convention == "gridcodes":
            levels = self._gridcodes_levels()
        else:
            levels = self._scaled_levels()
        object.__setattr__(self, "levels", levels)
        object.__setattr__(self, "resolutions", tuple(level.resolution for level in levels))

        sizes = [level.size for level in levels]
        offsets = [0]
        for size in sizes:
            offsets.append(offsets[-1] + size)
        numel = self.n_groups * offsets[-1] * self.n_features
        if numel > MAX_PARAMS:
            raise ValueError(
                f"the grid would hold {numel} parameters (n_groups={self.n_groups} x "
                f"{offsets[-1]} entries x n_features={self.n_features}), more than the "
                f"{MAX_PARAMS} that int32 indexing allows; lower log2_table_size, the resolutions "
                f"or use grid_type='hash'"
            )
        object.__setattr__(self, "level_sizes", tuple(sizes))
        object.__setattr__(self, "offsets", tuple(offsets))
        masked = [self.level_mask(level) != 2**32 - 1 for level in range(self.n_levels)]
        object.__setattr__(self, "index_reduction", index_reduction(levels, self.in_dim, masked))

    def _gridcodes_levels(self) -> tuple[Level, ...]:
        if self.per_level_scale is not None:
            raise ValueError(
                f"per_level_scale={self.per_level_scale!r} belongs to convention='tcnn' or "
                "'torch-ngp'; the gridcodes convention takes base/max_resolution or resolutions"
            )
        if self.resolutions is None:
            _check_int("base_resolution", self.base_resolution, 2)
            _check_int("max_resolution", self.max_resolution, self.base_resolution)
            resolutions = level_resolutions(
                self.base_resolution, self.max_resolution, self.n_levels
            )
        else:
            if isinstance(self.resolutions, (str, bytes)) or not isinstance(
                self.resolutions, Sequence
            ):
                raise TypeError(f"resolutions must be a sequence of ints, got {self.resolutions!r}")
            resolutions = tuple(self.resolutions)
            if len(resolutions) != self.n_levels:
                raise ValueError(
                    f"resolutions has {len(resolutions)} entries but n_levels={self.n_levels}; "
                    f"pass n_levels={len(resolutions)}"
                )
            for level, r in enumerate(resolutions):
                _check_int(f"resolutions[{level}]", r, 2)
        return gridcodes_levels(self.in_dim, resolutions, self.grid_type, self.table_size)

    def _scaled_levels(self) -> tuple[Level, ...]:
        """Levels of the tcnn / torch-ngp conventions, from base_resolution and per_level_scale."""
        if self.resolutions is not None:
            raise ValueError(
                f"convention={self.convention!r} derives the resolutions from base_resolution "
                f"and per_level_scale; got resolutions={self.resolutions!r}"
            )
        _check_int("base_resolution", self.base_resolution, 2)
        scale = self.per_level_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise TypeError(f"per_level_scale must be a float, got {scale!r}")
        if not (math.isfinite(scale) and scale >= 1.0):
            raise ValueError(f"per_level_scale must be a finite float >= 1, got {scale!r}")
        if self.convention == "tcnn":
            levels = tcnn_levels(
                self.in_dim,
                self.n_levels,
                self.base_resolution,
                float(scale),
                self.grid_type,
                self.log2_table_size,
            )
        else:
            if self.grid_type != "hash":
                raise ValueError(
                    f"convention='torch-ngp' supports grid_type='hash' only, got {self.grid_type!r}"
                )
            levels = torch_ngp_levels(
                self.in_dim, self.n_levels, self.base_resolution, float(scale), self.log2_table_size
            )
        object.__setattr__(self, "max_resolution", levels[-1].resolution)
        return levels

    @property
    def table_size(self) -> int:
        """T: the most entries a hashed or tiled level may hold."""
        return 2**self.log2_table_size

    @property
    def n_entries(self) -> int:
        """Entries per group, all levels together (``offsets[-1]``)."""
        return self.offsets[-1]

    @property
    def n_corners(self) -> int:
        return 2**self.in_dim

    def is_wrapped(self, level: int) -> bool:
        """True when level ``level`` has fewer entries than vertices (hashed or tiled)."""
        return self.levels[level].size < self.resolutions[level] ** self.in_dim

    def level_mask(self, level: int) -> int:
        """The bit mask the kernels apply to a combined index: ``size - 1`` where that alone
        reduces it (power-of-two hashed levels, the gridcodes convention's tiled levels),
        all ones elsewhere (see ``index_reduction``)."""
        lv = self.levels[level]
        power_of_two = lv.size & (lv.size - 1) == 0
        if power_of_two and (lv.hashed or (lv.clamped and self.is_wrapped(level))):
            return lv.size - 1
        return 2**32 - 1

    def to_dict(self) -> dict:
        """The constructor arguments, JSON-serialisable."""
        out = {
            "in_dim": self.in_dim,
            "n_groups": self.n_groups,
            "n_levels": self.n_levels,
            "n_features": self.n_features,
            "log2_table_size": self.log2_table_size,
            "base_resolution": self.base_resolution,
            "max_resolution": self.max_resolution,
            "resolutions": list(self.resolutions),
            "grid_type": self.grid_type,
            "interpolation": self.interpolation,
        }
        if self.convention != "gridcodes":
            out.update(
                resolutions=None, convention=self.convention, per_level_scale=self.per_level_scale
            )
        return out


# Columns of the per-level table the kernels read. SCALE and SHIFT hold the bits of float64
# values (the kernels bitcast them back).
(
    META_RESOLUTION,
    META_OFFSET,
    META_USE_HASH,
    META_MASK,
    META_SIZE,
    META_SCALE,
    META_SHIFT,
    META_STRIDES,
) = range(8)


def _float_bits(value: float) -> int:
    return struct.unpack("<q", struct.pack("<d", value))[0]


def level_table(config: GridConfig, device: torch.device | str | None = None) -> torch.Tensor:
    """Per-level numbers the kernels need, shape ``(n_levels, 7 + in_dim)``, int64.

    Row ``l`` is ``[r_l, offsets[l], use_hash, mask, size, bits(scale), bits(shift),
    stride_0 .. stride_{d-1}]``. The kernels place x at ``p = x * scale + shift``
    (:class:`~gridcodes.conventions.Level`) and compute, in wrapping uint32 arithmetic,
    ``index = combine_k(c_k * stride_k) & mask``, combine = XOR when ``use_hash``, else a
    sum, then reduce it modulo ``size`` as ``config.index_reduction`` says. That equals
    docs/grids.md §2 step 3 (and the tcnn / torch-ngp rules, docs/tcnn.md) for every grid type:

    - dense levels (and hash/tiled levels that fit, ``r**d <= T``): strides ``base**k``,
      mask all ones; the sum never wraps (``GridConfig`` checks the bound);
    - gridcodes' tiled levels with ``r**d > T``: strides ``r**k mod 2**32`` and mask
      ``T - 1``; since T is a power of two dividing ``2**32``, ``D(c) mod 2**32 mod T ==
      D(c) mod T``;
    - hashed levels: strides are the primes π_k, XOR-combined, mask ``T - 1``.
    """
    rows = []
    for level, lv in enumerate(config.levels):
        if lv.hashed:
            strides = HASH_PRIMES[: config.in_dim]
        else:
            strides = tuple(lv.base**k % 2**32 for k in range(config.in_dim))
        rows.append(
            [
                lv.resolution,
                config.offsets[level],
                int(lv.hashed),
                config.level_mask(level),
                lv.size,
                _float_bits(lv.scale),
                _float_bits(lv.shift),
                *strides,
            ]
        )
    return torch.tensor(rows, dtype=torch.int64, device=device)
