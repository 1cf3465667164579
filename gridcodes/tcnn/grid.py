"""tiny-cuda-nn's grid encodings on ``MultiResGrid``: its config, numbers and parameter layout.

``grid_arguments`` maps tcnn's grid config onto ``MultiResGrid`` (``MultiResGrid.from_tcnn``);
``load_params`` and ``n_params`` convert tcnn's flat parameter vector. docs/tcnn.md §4
describes the convention and what differs (inputs outside [0, 1]).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..conventions import tcnn_default_per_level_scale
from .config import ENCODING_COMMON, GRID_KEYS, GRID_OTYPES, check_mapping, get_int, warn_unread

GRID_TYPES = {"hash": "hash", "dense": "dense", "tiled": "tiled", "tile": "tiled"}
INTERPOLATIONS = {"linear": "linear", "smoothstep": "smoothstep"}
FEATURES_PER_LEVEL = (1, 2, 4, 8)


def _name(config: Mapping, key: str, default: str, valid: dict) -> str:
    value = config.get(key, default)
    if not isinstance(value, str) or value.lower() not in valid:
        names = sorted({k.title() for k in valid})
        raise ValueError(f"tcnn config: {key}={value!r} is not one of {names}")
    return value.lower()


def grid_arguments(n_input_dims: int, config: Mapping) -> dict:
    """``MultiResGrid`` keyword arguments of tcnn's encoding ``config`` (a dict, as its JSON).

    Reads tcnn's keys with tcnn's defaults (16 levels, 2 features per level, T = 2**19,
    base resolution 16, per-level scale 2, or for DenseGrid the scale that reaches 256 at
    the last level; Linear interpolation). Raises ValueError / TypeError naming a bad key
    or value; Nearest interpolation, stochastic interpolation, fixed-point positions and
    hashes other than CoherentPrime are not supported. Keys tcnn does not read are ignored
    with a warning (``config.warn_unread``).
    """
    check_mapping(config, "encoding_config")
    if "otype" not in config:
        raise ValueError(f"tcnn config needs an otype, one of {list(GRID_OTYPES)} (any case)")
    otype = config["otype"]
    if not isinstance(otype, str) or otype.lower() not in [o.lower() for o in GRID_OTYPES]:
        raise ValueError(
            f"tcnn config: otype={otype!r} is not a grid encoding; valid: "
            "'HashGrid', 'DenseGrid', 'TiledGrid', 'Grid' (with 'type')"
        )
    warn_unread(config, (*ENCODING_COMMON, *GRID_KEYS), otype)
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
    features = get_int(config, "n_features_per_level", 2)
    if features not in FEATURES_PER_LEVEL:
        raise ValueError(
            f"tcnn config: n_features_per_level={features} must be one of {FEATURES_PER_LEVEL}"
        )
    total = [key for key in ("n_features", "n_grid_features") if key in config]
    if total and "n_levels" in config:
        raise ValueError("tcnn config: give n_levels or n_features, not both")
    n_levels = get_int(config, "n_levels", 16)
    if total:
        n_levels = get_int(config, total[0], 0) // features
    base = get_int(config, "base_resolution", 16)
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
        log2_table_size=get_int(config, "log2_hashmap_size", 19),
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
