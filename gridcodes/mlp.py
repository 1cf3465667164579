"""``FusedMLP``: tiny-cuda-nn's fully fused MLP as a gridcodes module (docs/tcnn.md §3)."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from . import mlp_ops, ops
from .mlp_reference import ACTIVATIONS, MLPLayout, activation_name

BACKENDS = ("auto", "triton", "cpu", "torch")
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class FusedMLP(nn.Module):
    """A bias-free MLP whose layers run in one kernel: ``FusedMLP(3, 4)(x)`` maps x (N, 3) to
    (N, 4), through ``n_hidden_layers`` layers of ``width`` neurons.

    The weights are one flat float32 vector ``params`` laid out as tiny-cuda-nn's (so a
    tcnn network's ``params`` load as they are): the input is padded to a multiple of 16
    columns that read 1.0 (their weights act as the first layer's bias), the output to a
    multiple of 16 rows that are computed and dropped (``mlp_reference.py``).

    Args:
        n_input_dims, n_output_dims: widths of x and of the output.
        width: neurons per hidden layer (the fused kernels: 16, 32, 64, 128).
        n_hidden_layers: hidden layers (the fused kernels: at least 1).
        activation, output_activation: tcnn's names, any case: None, ReLU, LeakyReLU,
            Exponential, Sine, Sigmoid, Squareplus, Softplus, Tanh, SiLU (the fused kernels
            take all but Sine and SiLU as ``activation``).
        dtype: the matmuls' operands and the output: float16 (tcnn's), bfloat16 (both with
            float32 accumulation) or float32. None: float16 on CUDA and on the Triton
            backend, float32 on the CPU.
        backend: ``"triton"`` (the fused kernels; CUDA, or the CPU under
            ``TRITON_INTERPRET=1``), ``"cpu"`` or ``"torch"`` (the reference's ``torch``
            matmuls, in float32, float64 for float64 params: one path, two names as for
            ``MultiResGrid``) or ``"auto"``: Triton for CUDA tensors when the network fits
            the fused kernels, else matmuls.
        deterministic: bitwise-reproducible weight gradients on the Triton backend (per-block
            partial sums instead of atomics; also on under
            ``torch.use_deterministic_algorithms(True)``).
        seed: seed of the initial weights (tcnn's distributions, torch's generator).

    Gradients reach ``params`` and x; second-order gradients (``create_graph=True``) are
    computed through the float32 reference.
    """

    def __init__(
        self,
        n_input_dims: int,
        n_output_dims: int,
        width: int = 64,
        n_hidden_layers: int = 2,
        activation: str = "ReLU",
        output_activation: str = "None",
        dtype: torch.dtype | None = None,
        backend: str = "auto",
        deterministic: bool = False,
        seed: int = 1337,
    ) -> None:
        super().__init__()
        for name, value in (("n_input_dims", n_input_dims), ("n_output_dims", n_output_dims)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive int, got {width!r}")
        if isinstance(n_hidden_layers, bool) or not isinstance(n_hidden_layers, int):
            raise ValueError(f"n_hidden_layers must be an int, got {n_hidden_layers!r}")
        if n_hidden_layers < 0:
            raise ValueError(f"n_hidden_layers must be >= 0, got {n_hidden_layers}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if dtype is not None and dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES} or None, got {dtype}")
        self.layout = MLPLayout(n_input_dims, n_output_dims, width, n_hidden_layers)
        self.activation = activation_name(activation)
        self.output_activation = activation_name(output_activation)
        self.dtype = dtype
        self.backend = backend
        self.deterministic = bool(deterministic)
        if backend == "triton":
            spec = self.spec(dtype or torch.float16)
            if reason := mlp_ops.fused_unsupported(spec):
                raise ValueError(f"backend='triton' cannot run this MLP: {reason}")
        generator = torch.Generator().manual_seed(seed)
        self.params = nn.Parameter(self.layout.initial_params(self.activation, generator))

    @property
    def n_input_dims(self) -> int:
        return self.layout.n_input_dims

    @property
    def n_output_dims(self) -> int:
        return self.layout.n_output_dims

    @property
    def n_params(self) -> int:
        return self.layout.n_params

    def compute_dtype(self, device: torch.device) -> torch.dtype:
        """The dtype of the matmuls' operands and of the output for inputs on ``device``."""
        if self.dtype is not None:
            return self.dtype
        if self.backend == "triton" or torch.device(device).type == "cuda":
            return torch.float16
        return torch.float32

    def spec(self, dtype: torch.dtype) -> mlp_ops.MLPSpec:
        deterministic = self.deterministic or torch.are_deterministic_algorithms_enabled()
        return mlp_ops.MLPSpec(
            self.layout, self.activation, self.output_activation, 1.0, dtype, deterministic
        )

    def resolved_backend(self, device=None, spec: mlp_ops.MLPSpec | None = None) -> str:
        """The backend a call on ``device`` (default: the params' device) uses."""
        if device is None:
            device = self.params.device if self.params is not None else "cpu"
        device = torch.device(device)
        if self.backend != "auto":
            return self.backend
        spec = spec or self.spec(self.compute_dtype(device))
        if device.type == "cuda" and mlp_ops.fused_unsupported(spec) is None:
            return "triton"
        return "cpu" if device.type == "cpu" else "torch"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, n_input_dims), any float dtype -> (N, n_output_dims) in the compute dtype."""
        return self.run(x, self.params)

    def run(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` with another flat weight vector ``params`` (n_params,)."""
        self._check(x, params)
        spec = self.spec(self.compute_dtype(x.device))
        backend = self.resolved_backend(x.device, spec)
        if backend == "triton" and x.device.type != "cuda" and not ops.INTERPRET:
            raise ValueError(
                f"backend='triton' got tensors on {x.device}: the kernels need CUDA, or "
                "TRITON_INTERPRET=1 set before gridcodes is imported"
            )
        # Fused or not, the network chooses its precision itself (``dtype``), not autocast.
        device = x.device.type
        with torch.autocast(device, enabled=False) if device in ("cpu", "cuda") else nullcontext():
            if backend == "triton":  # supported: checked at construction or by "auto"
                return mlp_ops.fused_mlp(x, params, spec)
            return mlp_ops.mlp_torch(x, params, spec)

    def _check(self, x: torch.Tensor, params: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            kind = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
            raise TypeError(f"x must be a floating-point tensor, got {kind}")
        if x.dim() != 2 or x.shape[1] != self.n_input_dims:
            raise ValueError(f"x must have shape (N, {self.n_input_dims}), got {tuple(x.shape)}")
        if tuple(params.shape) != (self.n_params,):
            raise ValueError(f"params must have shape ({self.n_params},), got {params.shape}")
        if x.device != params.device:
            raise ValueError(
                f"x is on {x.device} but the params are on {params.device}; move one of them "
                "(gridcodes never copies across devices silently)"
            )

    def extra_repr(self) -> str:
        lay = self.layout
        return (
            f"{lay.n_input_dims} -> {lay.width} x {lay.n_hidden_layers} -> {lay.n_output_dims}, "
            f"activation={self.activation}, output_activation={self.output_activation}, "
            f"dtype={self.dtype}, backend={self.backend!r}"
            + (f" (resolved: {self.resolved_backend()!r})" if self.params is not None else "")
        )


__all__ = ["ACTIVATIONS", "FusedMLP"]
