"""Reading tiny-cuda-nn's JSON configs as tcnn reads them (docs/tcnn.md §1).

tcnn looks its ``otype`` names up case-insensitively (``ci_hashmap`` in src/encoding.cu,
``equals_case_insensitive`` in src/network.cu), reads the keys each type knows with
``json.value(key, default)`` and never looks at the others. Real configs carry keys of
their own (instant-nsr-pl's ``include_xyz``, threestudio's ``start_level``...), so keys
tcnn does not read are ignored here too, with one warning per key and config: a misspelt
key then shows up instead of silently falling back to a default.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

# Keys every encoding config may hold: the type, and what a Composite reads of its nested
# configs (encodings/composite.h).
ENCODING_COMMON = ("otype", "n_dims_to_encode", "dims_to_encode_begin")
GRID_KEYS = (
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
# otype (tcnn's spelling) -> the keys it reads (src/encoding.cu register_builtin_encodings).
ENCODING_KEYS = {
    "Composite": ("nested", "reduction"),
    "Empty": (),
    "Frequency": ("n_frequencies",),
    "Grid": GRID_KEYS,
    "HashGrid": GRID_KEYS,
    "TiledGrid": GRID_KEYS,
    "DenseGrid": GRID_KEYS,
    "Identity": ("scale", "offset"),
    "OneBlob": ("n_bins",),
    "SphericalHarmonics": ("degree",),
    "TriangleWave": ("n_frequencies",),
    "OneBlobFrequency": ("n_frequencies", "n_bins"),
    "NRC": ("n_frequencies", "n_bins"),
}
GRID_OTYPES = ("Grid", "HashGrid", "TiledGrid", "DenseGrid")
# src/network.cu select_network: "MLP" and "MegakernelMLP" are aliases. n_input_dims and
# n_output_dims are overwritten by tcnn (network_with_input_encoding.h), so read and unused.
NETWORK_OTYPES = {
    "FullyFusedMLP": "FullyFusedMLP",
    "MegakernelMLP": "FullyFusedMLP",
    "CutlassMLP": "CutlassMLP",
    "MLP": "CutlassMLP",
}
NETWORK_KEYS = (
    "otype",
    "n_neurons",
    "n_hidden_layers",
    "activation",
    "output_activation",
    "n_input_dims",
    "n_output_dims",
)


def check_mapping(config, what: str) -> Mapping:
    if not isinstance(config, Mapping):
        raise TypeError(f"{what} must be a dict (tcnn's JSON), got {type(config).__name__}")
    return config


def lookup(name, table, what: str) -> str:
    """tcnn's spelling of ``name`` among ``table``'s names, any case; else ValueError."""
    if isinstance(name, str):
        for known in table:
            if known.lower() == name.lower():
                return known
    raise ValueError(f"tcnn config: {what}={name!r} is not one of {list(table)} (any case)")


def warn_unread(config: Mapping, known, what: str) -> None:
    """One warning per key of ``config`` that tcnn does not read."""
    for key in config:
        if key not in known:
            warnings.warn(
                f"tcnn config: {what} does not read key {key!r}; ignored, as tiny-cuda-nn "
                "ignores it",
                stacklevel=4,
            )


def get_int(config: Mapping, key: str, default: int) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"tcnn config: {key} must be an int, got {value!r}")
    if value < 0:
        raise ValueError(f"tcnn config: {key}={value} must not be negative")
    return value


def get_float(config: Mapping, key: str, default: float) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"tcnn config: {key} must be a number, got {value!r}")
    return float(value)
