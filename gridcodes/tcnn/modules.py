"""tinycudann's Python classes (bindings/torch/tinycudann/modules.py) on gridcodes' modules.

Each holds one flat float32 ``params`` vector laid out as tcnn's, so tcnn state dicts load
with ``load_state_dict``, and takes tcnn's arguments plus gridcodes' ``backend`` (as
``MultiResGrid``: "auto", "triton", "cpu", "torch"), ``deterministic`` and ``dtype``.
What differs from tcnn is listed in docs/tcnn.md §1.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Mapping

import torch
from torch import nn

from ..mlp import FusedMLP
from ..mlp_ops import FUSED_ACTIVATIONS, FUSED_WIDTHS
from ..mlp_reference import activation_name
from .config import NETWORK_KEYS, NETWORK_OTYPES, check_mapping, get_int, lookup, warn_unread
from .encoding import Leaf, Node, build

ENCODING_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def supports_jit_fusion() -> bool:
    """tcnn 2.0's JIT fusion of encoding and network into one kernel: not offered (the
    attribute ``jit_fusion`` is accepted and has no effect)."""
    return False


def free_temporary_memory() -> None:
    """Release cached memory, as tcnn's frees its arenas: Python garbage, then PyTorch's
    CUDA cache (gridcodes has no allocator of its own)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def network_arguments(config: Mapping) -> dict:
    """``FusedMLP`` arguments of tcnn's network config (src/network.cu ``create_network``):
    defaults 128 neurons, 5 hidden layers, ReLU, no output activation; otype "MLP" is
    CutlassMLP, "MegakernelMLP" FullyFusedMLP. FullyFusedMLP refuses what tcnn's does."""
    check_mapping(config, "network_config")
    otype = NETWORK_OTYPES[lookup(config.get("otype", "MLP"), NETWORK_OTYPES, "network otype")]
    warn_unread(config, NETWORK_KEYS, otype)
    width = get_int(config, "n_neurons", 128)
    hidden = get_int(config, "n_hidden_layers", 5)
    activation = activation_name(config.get("activation", "ReLU"))
    output_activation = activation_name(config.get("output_activation", "None"))
    if otype == "FullyFusedMLP":
        if width not in FUSED_WIDTHS:
            raise ValueError(
                f"tcnn config: FullyFusedMLP supports n_neurons in {list(FUSED_WIDTHS)}, got "
                f"{width}; use CutlassMLP for other widths (as in tiny-cuda-nn)"
            )
        if hidden < 1:
            raise ValueError("tcnn config: FullyFusedMLP needs n_hidden_layers >= 1")
        if activation not in FUSED_ACTIVATIONS:
            raise ValueError(
                f"tcnn config: FullyFusedMLP does not support activation {activation!r} "
                f"(tiny-cuda-nn's fused kernels take {list(FUSED_ACTIVATIONS)}); use CutlassMLP"
            )
    elif width < 1:
        raise ValueError(f"tcnn config: n_neurons={width} must be positive")
    return dict(
        width=width,
        n_hidden_layers=hidden,
        activation=activation,
        output_activation=output_activation,
    )


class Module(nn.Module):
    """What tcnn's three classes share: ``params``, ``seed``, ``dtype``, ``jit_fusion``."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.seed = seed
        self._jit_fusion = False

    @property
    def jit_fusion(self) -> bool:
        return self._jit_fusion

    @jit_fusion.setter
    def jit_fusion(self, value: bool) -> None:
        if value and not supports_jit_fusion():
            warnings.warn(
                "gridcodes.tcnn: jit_fusion is not offered; encoding and network run as "
                "their own kernels",
                stacklevel=2,
            )
        self._jit_fusion = bool(value)

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != self.n_input_dims:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (N, {self.n_input_dims}), got {shape}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")

    def extra_repr(self) -> str:
        return (
            f"n_input_dims={self.n_input_dims}, n_output_dims={self.n_output_dims}, "
            f"seed={self.seed}, dtype={self.dtype}, n_params={self.params.numel()}"
        )


class Encoding(Module):
    """tcnn's ``Encoding(n_input_dims, encoding_config, seed=1337, dtype=None)``: every
    encoding tcnn offers (docs/tcnn.md §2), x (N, n_input_dims) -> (N, n_output_dims).

    ``dtype`` is that of ``params`` and of the output: float32 by default (tcnn: float16
    where the GPU has it), float16, bfloat16 or float64. An encoding alone is not padded
    (tcnn creates it with alignment 0); a Composite pads inside, as tcnn's.
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
        super().__init__(seed)
        dtype = torch.float32 if dtype is None else dtype
        if dtype not in ENCODING_DTYPES:
            raise ValueError(f"dtype must be one of {ENCODING_DTYPES} or None, got {dtype}")
        self.n_input_dims = n_input_dims
        self.encoding_config = encoding_config
        self.dtype = dtype
        options = {"backend": backend, "deterministic": deterministic}
        self.encoding = build(n_input_dims, encoding_config, 0, options)
        self.n_output_dims = self.encoding.output_width()
        initial = self.encoding.initial_params(torch.Generator().manual_seed(seed))
        self.params = nn.Parameter(initial.to(dtype))

    @property
    def grid(self):
        """The ``MultiResGrid`` of a grid encoding (None for other encodings)."""
        node = self.encoding
        return node.module if isinstance(node, Leaf) and node.is_grid else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, n_input_dims) -> (N, n_output_dims) in ``dtype``."""
        self._check_input(x)
        return self.encoding(x, self.params).to(self.dtype)


class _Networks(Module):
    """What Network and NetworkWithInputEncoding share: the ``FusedMLP`` of a network
    config, whose weights live in the owner's flat ``params``."""

    def _network(self, n_in: int, n_out: int, config: Mapping, seed: int, **options):
        """The FusedMLP and its initial weights (taken out of it: one flat vector per module,
        as tcnn's state dicts have)."""
        self.network = FusedMLP(n_in, n_out, **network_arguments(config), seed=seed, **options)
        initial = self.network.params.data
        self.network.params = None
        return initial

    @property
    def dtype(self) -> torch.dtype:
        return self.network.compute_dtype(self.params.device)


class Network(_Networks):
    """tcnn's ``Network(n_input_dims, n_output_dims, network_config, seed=1337)``:
    FullyFusedMLP or CutlassMLP on gridcodes' ``FusedMLP``.

    As tcnn (which puts an Identity encoding in front), the input is padded to a multiple
    of 16 columns reading 1.0, the output to a multiple of 16 rows that are dropped.
    ``dtype``: float16 on CUDA by default (tcnn's), bfloat16 or float32 to choose; float32
    on the CPU by default.
    """

    def __init__(
        self,
        n_input_dims: int,
        n_output_dims: int,
        network_config: Mapping,
        seed: int = 1337,
        dtype: torch.dtype | None = None,
        backend: str = "auto",
        deterministic: bool = False,
    ) -> None:
        super().__init__(seed)
        self.n_input_dims = n_input_dims
        self.n_output_dims = n_output_dims
        self.network_config = network_config
        options = {"dtype": dtype, "backend": backend, "deterministic": deterministic}
        initial = self._network(n_input_dims, n_output_dims, network_config, seed, **options)
        self.params = nn.Parameter(initial)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.network.run(x, self.params)


class NetworkWithInputEncoding(_Networks):
    """tcnn's ``NetworkWithInputEncoding(n_input_dims, n_output_dims, encoding_config,
    network_config, seed=1337)``: the encoding, padded to a multiple of 16 as tcnn pads it,
    then the network. ``params`` holds the network's weights first, then the encoding's."""

    def __init__(
        self,
        n_input_dims: int,
        n_output_dims: int,
        encoding_config: Mapping,
        network_config: Mapping,
        seed: int = 1337,
        dtype: torch.dtype | None = None,
        backend: str = "auto",
        deterministic: bool = False,
    ) -> None:
        super().__init__(seed)
        self.n_input_dims = n_input_dims
        self.n_output_dims = n_output_dims
        self.encoding_config = encoding_config
        self.network_config = network_config
        options = {"backend": backend, "deterministic": deterministic}
        self.encoding: Node = build(n_input_dims, encoding_config, 8, options)
        self.encoding.set_alignment(16)  # minimum_alignment of both tcnn MLPs
        width = self.encoding.output_width()
        network = self._network(width, n_output_dims, network_config, seed, dtype=dtype, **options)
        encoding = self.encoding.initial_params(torch.Generator().manual_seed(seed + 1))
        self.params = nn.Parameter(torch.cat([network, encoding]))

    @property
    def n_network_params(self) -> int:
        return self.network.n_params

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        # One split (its backward is one concatenation, not two zero-filled full-size grads).
        network, encoding = self.params.split([self.network.n_params, self.encoding.n_params])
        return self.network.run(self.encoding(x, encoding), network)
