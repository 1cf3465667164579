"""tiny-cuda-nn's grid encodings, reproduced: its JSON config, its numbers, its parameter layout.

::

    # before                                     # after
    import tinycudann as tcnn                    from gridcodes import tcnn
    enc = tcnn.Encoding(3, config)               enc = tcnn.Encoding(3, config)
    features = enc(x)  # x (N, 3) in [0, 1]      features = enc(x)  # (N, n_levels * F)

``Encoding`` keeps tcnn's call signature, output shape and state-dict layout (one flat
``params`` vector), so a tcnn or nerfstudio checkpoint loads with ``load_state_dict``.
``MultiResGrid.from_tcnn`` builds the underlying grid (groups, backends, save/load).
docs/tcnn.md describes the convention and what differs (inputs outside [0, 1]).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .conventions import tcnn_default_per_level_scale

OTYPES = {"grid": None, "hashgrid": "hash", "densegrid": "dense", "tiledgrid": "tiled"}
GRID_TYPES = {"hash": "hash", "dense": "dense", "tiled": "tiled", "tile": "tiled"}
INTERPOLATIONS = {"linear": "linear", "smoothstep": "smoothstep"}
FEATURES_PER_LEVEL = (1, 2, 4, 8)
KEYS = (
    "otype",
    "type",
    "n_levels",
    "n_features",
    "n_grid_features",
    "n_features_per_level",
    "log2_hashmap_size",
    "base_resolution",
    "per_level_scale",
    "interpolation",
    "hash",
    "stochastic_interpolation",
    "fixed_point_pos",
)


def _int(config: Mapping, key: str, default: int) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"tcnn config: {key} must be an int, got {value!r}")
    return value


def _name(config: Mapping, key: str, default: str, valid: dict) -> str:
    value = config.get(key, default)
    if not isinstance(value, str) or value.lower() not in valid:
        names = sorted({k.title() if k != "hashgrid" else k for k in valid})
        raise ValueError(f"tcnn config: {key}={value!r} is not one of {names}")
    return value.lower()


def grid_arguments(n_input_dims: int, config: Mapping) -> dict:
    """``MultiResGrid`` keyword arguments of tcnn's encoding ``config`` (a dict, as its JSON).

    Reads tcnn's keys with tcnn's defaults (16 levels, 2 features per level, T = 2**19,
    base resolution 16, per-level scale 2, or for DenseGrid the scale that reaches 256 at
    the last level; Linear interpolation). Raises ValueError / TypeError naming a bad key
    or value; Nearest interpolation, stochastic interpolation, fixed-point positions and
    hashes other than CoherentPrime are not supported.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"encoding_config must be a dict, got {type(config).__name__}")
    unknown = sorted(set(config) - set(KEYS))
    if unknown:
        raise ValueError(f"tcnn config: unknown keys {unknown}; known keys: {list(KEYS)}")
    if "otype" not in config:
        raise ValueError(f"tcnn config needs an otype, one of {list(OTYPES)} (any case)")
    otype = config["otype"]
    if not isinstance(otype, str) or otype.lower() not in OTYPES:
        raise ValueError(
            f"tcnn config: otype={otype!r} is not a grid encoding; valid: "
            "'HashGrid', 'DenseGrid', 'TiledGrid', 'Grid' (with 'type')"
        )
    default_type = {"densegrid": "Dense", "tiledgrid": "Tiled"}.get(otype.lower(), "Hash")
    grid_type = GRID_TYPES[_name(config, "type", default_type, GRID_TYPES)]
    interpolation = config.get("interpolation", "Linear")
    if isinstance(interpolation, str) and interpolation.lower() == "nearest":
        raise ValueError(
            "tcnn config: interpolation='Nearest' is not supported; use 'Linear' or 'Smoothstep'"
        )
    interpolation = INTERPOLATIONS[_name(config, "interpolation", "Linear", INTERPOLATIONS)]
    for key, allowed in (
        ("hash", "CoherentPrime"),
        ("stochastic_interpolation", False),
        ("fixed_point_pos", False),
    ):
        if key in config and config[key] != allowed:
            raise ValueError(
                f"tcnn config: {key}={config[key]!r} is not supported (only {allowed!r})"
            )
    features = _int(config, "n_features_per_level", 2)
    if features not in FEATURES_PER_LEVEL:
        raise ValueError(
            f"tcnn config: n_features_per_level={features} must be one of {FEATURES_PER_LEVEL}"
        )
    total = [key for key in ("n_features", "n_grid_features") if key in config]
    if total and "n_levels" in config:
        raise ValueError("tcnn config: give n_levels or n_features, not both")
    n_levels = _int(config, "n_levels", 16)
    if total:
        n_levels = _int(config, total[0], 0) // features
    base = _int(config, "base_resolution", 16)
    if "per_level_scale" in config:
        scale = config["per_level_scale"]
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise TypeError(f"tcnn config: per_level_scale must be a number, got {scale!r}")
        scale = float(scale)
    else:
        scale = tcnn_default_per_level_scale(grid_type, base, n_levels)
    return dict(
        in_dim=n_input_dims,
        n_levels=n_levels,
        n_features=features,
        log2_table_size=_int(config, "log2_hashmap_size", 19),
        base_resolution=base,
        per_level_scale=scale,
        grid_type=grid_type,
        interpolation=interpolation,
        convention="tcnn",
    )


def n_params(grid) -> int:
    """Length of tcnn's flat parameter vector for ``grid`` (one group): entries times F."""
    return grid.config.n_entries * grid.config.n_features


def load_params(grid, flat: torch.Tensor) -> None:
    """Copy tcnn's flat ``params`` (n_params,) — or (n_groups, n_params) — into ``grid.params``.

    tcnn stores level after level, entry after entry, the F features of an entry together:
    exactly ``grid.params[g].flatten()``. A ``tcnn.NetworkWithInputEncoding`` holds the
    network's parameters first: pass the last ``n_params(grid)`` values.
    """
    c = grid.config
    if not isinstance(flat, torch.Tensor):
        raise TypeError(f"params must be a torch.Tensor, got {type(flat).__name__}")
    expected = {(n_params(grid),), (c.n_groups, n_params(grid))}
    if c.n_groups > 1:
        expected.discard((n_params(grid),))
    if tuple(flat.shape) not in expected:
        raise ValueError(
            f"tcnn params must have shape {sorted(expected)[0]} for this grid "
            f"({c.n_entries} entries x {c.n_features} features), got {tuple(flat.shape)}"
        )
    with torch.no_grad():
        grid.params.copy_(flat.reshape(grid.params.shape))


class Encoding(nn.Module):
    """tiny-cuda-nn's ``tcnn.Encoding`` for grid encodings, on gridcodes' backends.

    ``Encoding(n_input_dims, encoding_config)`` maps ``x`` (N, n_input_dims), float, to
    features (N, n_levels * n_features_per_level) in ``dtype``, as tcnn does. ``params``
    is tcnn's flat vector (n_params,), so tcnn state dicts load as they are. Differences:
    ``dtype`` defaults to float32 (tcnn: float16 where supported); the initial values
    are U(-1e-4, 1e-4) from torch's generator seeded with ``seed`` (tcnn: its own
    generator); coordinates outside [0, 1] are clamped (docs/tcnn.md).

    Args:
        n_input_dims: coordinates per point (tcnn: 2..4; here 1..7, 1..4 on Triton).
        encoding_config: tcnn's encoding JSON as a dict (``grid_arguments``).
        seed: seed of the initial values.
        dtype: float32 (default), float16, bfloat16 or float64 table and output.
        backend, deterministic: as ``MultiResGrid``.
    """

    def __init__(
        self,
        n_input_dims: int,
        encoding_config: Mapping,
        seed: int = 1337,
        dtype: torch.dtype | None = None,
        backend: str = "auto",
        deterministic: bool = False,
    ) -> None:
        super().__init__()
        from .module import MultiResGrid

        grid = MultiResGrid(
            **grid_arguments(n_input_dims, encoding_config),
            backend=backend,
            deterministic=deterministic,
        )
        self.n_input_dims = n_input_dims
        self.n_output_dims = grid.out_features
        self.encoding_config = dict(encoding_config)
        self.seed = seed
        generator = torch.Generator().manual_seed(seed)
        flat = torch.empty(n_params(grid)).uniform_(-1e-4, 1e-4, generator=generator)
        self.params = nn.Parameter(flat.to(dtype or torch.float32))
        grid.params = None  # the table is this module's flat vector, viewed per call
        self.grid = grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, n_input_dims) -> (N, n_output_dims) in the params' dtype."""
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != self.n_input_dims:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (N, {self.n_input_dims}), got {shape}")
        c = self.grid.config
        table = self.params.view(1, c.n_entries, c.n_features)
        return self.grid.lookup(x[:, None, :], table)[:, 0]

    def extra_repr(self) -> str:
        return (
            f"n_input_dims={self.n_input_dims}, n_output_dims={self.n_output_dims}, "
            f"seed={self.seed}, dtype={self.params.dtype}"
        )
