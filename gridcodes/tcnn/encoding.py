"""tiny-cuda-nn's encoding tree: its encodings, nesting and padding (docs/tcnn.md §2).

``build`` reads an encoding config as tcnn's ``create_encoding`` (src/encoding.cu:132) does
and returns a tree of ``Leaf`` and ``Composite`` nodes. Each node knows its real output
width, its padding and tcnn's rule for changing it, ``set_alignment``: ``padded =
next_multiple(width, lcm(alignment, required_output_alignment))`` (include/tiny-cuda-nn/
encoding.h:70-71; a grid requires n_features_per_level, the others 1). Line numbers are of
NVlabs/tiny-cuda-nn at 6ee3546, files under include/tiny-cuda-nn/ unless src/.

Where tcnn pads:

- an encoding alone (``tcnn.Encoding``) is created with alignment 0: not padded
  (src/cpp_api.cu:167);
- in front of a network, the encoding is created with the default alignment 8
  (encoding.h:76, network_with_input_encoding.h:56), then ``set_alignment`` with the
  network's minimum alignment (network_with_input_encoding.h:47; src/network.cu:79), 16 for
  both MLPs (networks/fully_fused_mlp.h:111, networks/cutlass_mlp.h:122); ``tcnn.Network`` is
  the same with an Identity encoding (src/cpp_api.cu:161);
- in a Composite, each nested encoding is created with alignment 1 (encodings/
  composite.h:181); then every one but the last is padded so that the next starts at a
  multiple of the next one's required alignment (composite.h:188-198); a later request to
  pad the Composite goes to its last nested encoding (composite.h:382-386).

With what, and where in the row:

- grids pad with 0 (encodings/grid.h:757-766), every other encoding with 1
  (frequency.h:65, identity.h:63, oneblob.h:209 and 227, triangle_wave.h:65,
  spherical_harmonics.h:60, empty.h:82 and 86);
- after the features, except SphericalHarmonics, whose ``kernel_sh`` writes the padding
  first and the harmonics after it (spherical_harmonics.h:58-63).

Nodes take the flat parameter vector's slice of their own (Composite: nested encodings in
order) and compute in float32 (a grid in its table's dtype).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping

import torch
from torch import nn

from .. import encodings
from ..module import MultiResGrid
from .config import (
    ENCODING_COMMON,
    ENCODING_KEYS,
    GRID_OTYPES,
    check_mapping,
    get_float,
    get_int,
    lookup,
    warn_unread,
)
from .grid import grid_arguments, n_params


def next_multiple(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


class Node(nn.Module):
    """An encoding of ``n_input_dims`` columns with tcnn's padding rules."""

    n_input_dims: int
    n_params: int
    alignment: int  # tcnn's required_output_alignment

    def output_width(self) -> int:
        raise NotImplementedError

    def set_padded_output_width(self, width: int) -> None:
        raise NotImplementedError

    def set_alignment(self, alignment: int) -> None:
        """encoding.h ``set_alignment``."""
        multiple = math.lcm(alignment, self.alignment)
        self.set_padded_output_width(next_multiple(self.output_width(), multiple))

    def initial_params(self, generator: torch.Generator) -> torch.Tensor:
        return torch.empty(0)


class Leaf(Node):
    """One encoding: ``module`` maps (N, n_input_dims) to (N, n_features); ``pad`` columns of
    ``pad_value`` follow (or, ``pad_front``, precede) them."""

    def __init__(self, module: nn.Module, n_dims: int, n_features: int, pad_value, pad_front=False):
        super().__init__()
        self.module = module
        self.n_input_dims = n_dims
        self.n_features = n_features
        self.pad, self.pad_value = 0, pad_value
        self.pad_front = pad_front
        self.is_grid = isinstance(module, MultiResGrid)
        self.n_params = n_params(module) if self.is_grid else 0
        self.alignment = module.config.n_features if self.is_grid else 1

    def output_width(self) -> int:
        return self.n_features + self.pad

    def set_padded_output_width(self, width: int) -> None:
        if width < self.n_features:
            raise ValueError(f"padded width {width} below the encoding's {self.n_features}")
        self.pad = width - self.n_features

    def initial_params(self, generator: torch.Generator) -> torch.Tensor:
        """tcnn's grid initialisation, U(-1e-4, 1e-4) (grid.h ``initialize_params``)."""
        return torch.empty(self.n_params).uniform_(-1e-4, 1e-4, generator=generator)

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        if self.is_grid:
            c = self.module.config
            table = params.view(1, c.n_entries, c.n_features)
            y = self.module.lookup(x[:, None, :], table)[:, 0]
        else:
            y = self.module(x)
        if self.pad == 0:
            return y
        fill = y.new_full((x.shape[0], self.pad), self.pad_value)
        return torch.cat([fill, y] if self.pad_front else [y, fill], dim=1)


class Composite(Node):
    """Nested encodings of consecutive input columns (composite.h ``CompositeEncoding``):
    outputs concatenated in order, or reduced by ``Sum`` / ``Product``."""

    def __init__(self, nested: list[Node], begins: list[int], n_dims: int, reduction: str):
        super().__init__()
        self.nested = nn.ModuleList(nested)
        self.begins = begins
        self.n_input_dims = n_dims
        self.reduction = reduction
        self.n_params = sum(node.n_params for node in nested)
        self.alignment = math.lcm(1, *(node.alignment for node in nested))
        if reduction == "Concatenation":
            so_far = 0
            for node, after in itertools.pairwise(nested):
                width = next_multiple(so_far + node.output_width(), after.alignment) - so_far
                node.set_padded_output_width(width)
                so_far += node.output_width()
        else:
            for node in nested:
                node.set_alignment(self.alignment)
            widths = {node.output_width() for node in nested}
            if len(widths) > 1:
                raise ValueError(
                    f"tcnn config: Composite reduction={reduction!r} needs nested encodings "
                    f"of one output width, got {[n.output_width() for n in nested]}"
                )

    def output_width(self) -> int:
        if self.reduction != "Concatenation":
            return self.nested[0].output_width()
        return sum(node.output_width() for node in self.nested)

    def set_padded_output_width(self, width: int) -> None:
        if self.reduction != "Concatenation":
            for node in self.nested:
                node.set_padded_output_width(width)
            return
        before = self.output_width() - self.nested[-1].output_width()
        self.nested[-1].set_padded_output_width(width - before)

    def initial_params(self, generator: torch.Generator) -> torch.Tensor:
        parts = [node.initial_params(generator) for node in self.nested]
        return torch.cat(parts) if parts else torch.empty(0)

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        outputs, offset = [], 0
        for node, begin in zip(self.nested, self.begins):
            part = params[offset : offset + node.n_params]
            outputs.append(node(x[:, begin : begin + node.n_input_dims], part))
            offset += node.n_params
        if self.reduction == "Concatenation":
            return torch.cat(outputs, dim=1)
        reduced = outputs[0].float()
        for y in outputs[1:]:
            reduced = reduced + y.float() if self.reduction == "Sum" else reduced * y.float()
        return reduced


def nrc_config(config: Mapping) -> dict:
    """OneBlobFrequency / NRC: the Composite it stands for (src/encoding.cu ``nrc_factory``)."""
    return {
        "otype": "Composite",
        "nested": [
            {
                "n_dims_to_encode": 3,
                "otype": "TriangleWave",
                "n_frequencies": config.get("n_frequencies", 12),
            },
            {"n_dims_to_encode": 5, "otype": "OneBlob", "n_bins": config.get("n_bins", 4)},
            {"otype": "Identity"},
        ],
    }


def build(n_dims: int, config: Mapping, alignment: int, grid_options: dict) -> Node:
    """tcnn's ``create_encoding(n_dims, config, alignment)``; ``grid_options`` (backend,
    deterministic) go to every grid."""
    check_mapping(config, "encoding config")
    otype = lookup(config.get("otype", "OneBlob"), ENCODING_KEYS, "otype")
    warn_unread(config, (*ENCODING_COMMON, *ENCODING_KEYS[otype]), otype)
    if otype in ("OneBlobFrequency", "NRC"):
        node = build(n_dims, nrc_config(config), 0, grid_options)
    elif otype == "Composite":
        node = composite(n_dims, config, grid_options)
    else:
        node = leaf(n_dims, otype, config, grid_options)
    if alignment > 0:
        node.set_alignment(alignment)
    return node


def leaf(n_dims: int, otype: str, config: Mapping, grid_options: dict) -> Leaf:
    if otype in GRID_OTYPES:
        grid = MultiResGrid(**grid_arguments(n_dims, config), **grid_options)
        grid.params = None  # the table is a slice of the owner's flat vector
        return Leaf(grid, n_dims, grid.out_features, 0.0)
    if otype == "Frequency":
        module = encodings.Frequency(n_dims, get_int(config, "n_frequencies", 12))
    elif otype == "OneBlob":
        module = encodings.OneBlob(n_dims, get_int(config, "n_bins", 16))
    elif otype == "SphericalHarmonics":
        module = encodings.SphericalHarmonics(n_dims, get_int(config, "degree", 4))
        return Leaf(module, n_dims, module.n_output_dims, 1.0, pad_front=True)
    elif otype == "TriangleWave":
        module = encodings.TriangleWave(n_dims, get_int(config, "n_frequencies", 12))
    elif otype == "Identity":
        scale, offset = get_float(config, "scale", 1.0), get_float(config, "offset", 0.0)
        module = encodings.Identity(n_dims, scale, offset)
    else:
        module = encodings.Empty(n_dims)
    return Leaf(module, n_dims, module.n_output_dims, 1.0)


def composite(n_dims: int, config: Mapping, grid_options: dict) -> Composite:
    """composite.h's constructor: which nested encoding reads which input columns."""
    nested = config.get("nested")
    if not isinstance(nested, list) or not nested:
        raise ValueError("tcnn config: a Composite needs 'nested', a list of encoding configs")
    reduction = lookup(config.get("reduction", "Concatenation"), REDUCTIONS, "reduction")
    for sub in nested:
        check_mapping(sub, "a nested encoding config")
    explicit = [get_int(sub, "n_dims_to_encode", 0) for sub in nested]
    positioned = any("dims_to_encode_begin" in sub for sub in nested)
    if not positioned and sum(explicit) > n_dims:
        raise ValueError(
            f"tcnn config: the nested encodings' n_dims_to_encode {explicit} sum to "
            f"{sum(explicit)}, more than the Composite's {n_dims} input dimensions"
        )
    unspecified = [i for i, sub in enumerate(nested) if "n_dims_to_encode" not in sub]
    if len(unspecified) > 1 or (positioned and unspecified):
        raise ValueError(
            "tcnn config: a Composite may leave 'n_dims_to_encode' unspecified for one nested "
            "encoding only (and none when 'dims_to_encode_begin' is given)"
        )
    nodes, begins, offset = [], [], 0
    for sub, count in zip(nested, explicit):
        if "n_dims_to_encode" not in sub:
            count = n_dims - sum(explicit)
        if "dims_to_encode_begin" in sub:
            offset = get_int(sub, "dims_to_encode_begin", 0)
        if offset + count > n_dims:
            raise ValueError(
                f"tcnn config: a nested encoding reads input columns {offset}..{offset + count}"
                f" of the Composite's {n_dims}"
            )
        if count > 0:
            nodes.append(build(count, sub, 1, grid_options))
            begins.append(offset)
        offset += count
    if not nodes:
        raise ValueError("tcnn config: every nested encoding of this Composite encodes 0 dims")
    return Composite(nodes, begins, n_dims, reduction)


REDUCTIONS = ("Concatenation", "Sum", "Product")
