"""Pure-PyTorch fully connected network: the ground truth of the fused MLP (docs/tcnn.md §3).

tiny-cuda-nn's MLPs have no biases. The input is padded to a multiple of 16 columns that
read ``pad_value`` (1.0 in tcnn, where the padding comes from its Identity encoding, so the
padded columns of the first matrix act as a bias), the output to a multiple of 16 rows of
the last matrix, which are computed and then dropped. All weights live in one flat vector,
matrix after matrix, each row-major (output, input) as ``torch.nn.Linear.weight``:

    W_0 (width, in_padded), W_1 .. W_{n_hidden-1} (width, width), W_out (out_padded, width)

(tcnn: ``src/fully_fused_mlp.cu`` ``FullyFusedMLP`` constructor, ``src/cutlass_mlp.cu``
``CutlassMLP`` constructor; with no hidden layer, CutlassMLP's single matrix is
(out_padded, in_padded).) Written for clarity, differentiable by autograd to any order,
in the dtype of ``params`` (float64 for ``gradcheck``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# tcnn's activation names (include/tiny-cuda-nn/common.h ``enum class Activation``), spelt as
# its ``to_string``; ``activation_name`` accepts any case, as tcnn's ``string_to_activation``.
ACTIVATIONS = (
    "None",
    "ReLU",
    "LeakyReLU",
    "Exponential",
    "Sine",
    "Sigmoid",
    "Squareplus",
    "Softplus",
    "Tanh",
    "SiLU",
)
# tcnn's sharpness of Squareplus and Softplus (common_device.h ``K_ACT``).
K_ACT = 10.0
LEAKY_SLOPE = 0.01
ALIGNMENT = 16  # tcnn pads network inputs and outputs to 16 (16x16x16 tensor-core tiles)


def activation_name(name: str) -> str:
    """tcnn's spelling of activation ``name`` (any case); ValueError naming the valid ones."""
    if isinstance(name, str):
        for known in ACTIVATIONS:
            if known.lower() == name.lower():
                return known
    raise ValueError(f"activation {name!r} is not one of {list(ACTIVATIONS)} (any case)")


def activation(name: str, z: torch.Tensor) -> torch.Tensor:
    """tcnn's activation ``name`` applied to ``z`` (common_device.h ``warp_activation``).

    Softplus is written in the overflow-free form ``max(Kz, 0) + log1p(exp(-|Kz|))``, equal
    to tcnn's ``log(exp(Kz) + 1)`` wherever that one is finite (tcnn's gives inf for
    z > 8.8).
    """
    if name == "None":
        return z
    if name == "ReLU":
        return torch.relu(z)
    if name == "LeakyReLU":
        return torch.where(z > 0, z, z * LEAKY_SLOPE)
    if name == "Exponential":
        return torch.exp(z)
    if name == "Sine":
        return torch.sin(z)
    if name == "Sigmoid":
        return torch.sigmoid(z)
    if name == "Squareplus":
        u = z * K_ACT
        return 0.5 * (u + torch.sqrt(u * u + 4)) / K_ACT
    if name == "Softplus":
        u = z * K_ACT
        return (torch.clamp(u, min=0) + torch.log1p(torch.exp(-u.abs()))) / K_ACT
    if name == "Tanh":
        return torch.tanh(z)
    if name == "SiLU":
        return z * torch.sigmoid(z)
    raise ValueError(f"activation {name!r} is not one of {list(ACTIVATIONS)}")


def padded(width: int) -> int:
    """``width`` rounded up to tcnn's alignment of 16."""
    return -(-width // ALIGNMENT) * ALIGNMENT


@dataclass(frozen=True)
class MLPLayout:
    """Shapes of an MLP's weight matrices in its flat parameter vector (the module docstring).

    ``n_input_dims`` is what callers pass; ``in_padded`` what the first matrix reads.
    """

    n_input_dims: int
    n_output_dims: int
    width: int
    n_hidden_layers: int

    @property
    def in_padded(self) -> int:
        return padded(self.n_input_dims)

    @property
    def out_padded(self) -> int:
        return padded(self.n_output_dims)

    @property
    def shapes(self) -> tuple[tuple[int, int], ...]:
        """(rows, columns) of each matrix, first to last."""
        if self.n_hidden_layers == 0:
            return ((self.out_padded, self.in_padded),)
        hidden = ((self.width, self.width),) * (self.n_hidden_layers - 1)
        first = ((self.width, self.in_padded),)
        return (*first, *hidden, (self.out_padded, self.width))

    @property
    def n_params(self) -> int:
        return sum(rows * cols for rows, cols in self.shapes)

    def matrices(self, params: torch.Tensor) -> list[torch.Tensor]:
        """Views of the flat ``params`` (n_params,) as the weight matrices, first to last."""
        out, offset = [], 0
        for rows, cols in self.shapes:
            out.append(params[offset : offset + rows * cols].view(rows, cols))
            offset += rows * cols
        return out

    def initial_params(self, activation: str, generator: torch.Generator) -> torch.Tensor:
        """tcnn's initial distributions (gpu_matrix.h): Xavier-uniform ``±sqrt(6 / (fan_in +
        fan_out))`` per matrix, or for Sine SIREN's ``±30 / fan_in`` (first) and
        ``±sqrt(6 / fan_in)``; drawn from ``generator`` (tcnn: its own pcg32), float32."""
        parts = []
        for i, (rows, cols) in enumerate(self.shapes):
            if activation == "Sine":
                bound = 30.0 / cols if i == 0 else math.sqrt(6.0 / cols)
            else:
                bound = math.sqrt(6.0 / (rows + cols))
            parts.append(torch.empty(rows * cols).uniform_(-bound, bound, generator=generator))
        return torch.cat(parts)


def pad_input(x: torch.Tensor, layout: MLPLayout, pad_value: float) -> torch.Tensor:
    """x (N, n_input_dims) -> (N, in_padded), the new columns ``pad_value``."""
    extra = layout.in_padded - layout.n_input_dims
    if extra == 0:
        return x
    return torch.cat([x, x.new_full((x.shape[0], extra), pad_value)], dim=1)


def mlp_reference(
    x: torch.Tensor,
    params: torch.Tensor,
    layout: MLPLayout,
    activation_: str = "ReLU",
    output_activation: str = "None",
    pad_value: float = 1.0,
    rounding: torch.dtype | None = None,
) -> torch.Tensor:
    """x (N, n_input_dims) -> (N, n_output_dims), computed in ``params``' dtype.

    Every hidden layer is ``h = activation(h @ W.T)``, the last ``output_activation(h @ W.T)``;
    the padded output rows are dropped. With ``rounding`` (float16 or bfloat16), the input,
    the weights and every hidden activation are rounded to it as the fused kernels store
    them, the rest computed in ``params``' dtype: the fused kernels' numbers, up to the
    order of their float32 sums. The roundings are invisible to autograd (straight
    through), so gradients are exact for the rounded values.
    """
    if rounding is None:
        rounded = lambda t: t
    else:
        rounded = lambda t: t + (t.detach().to(rounding).to(t.dtype) - t.detach())
    h = rounded(pad_input(x.to(params.dtype), layout, pad_value))
    weights = [rounded(w) for w in layout.matrices(params)]
    for w in weights[:-1]:
        h = rounded(activation(activation_, h @ w.T))
    # The padded output rows are computed and dropped by the kernels; here, not computed.
    return activation(output_activation, h @ weights[-1][: layout.n_output_dims].T)
