"""Launchers of the fused MLP kernels and their autograd glue (docs/tcnn.md §3).

``fused_mlp`` runs the Triton kernels: one launch forward, one backward (plus the zeroed
float32 gradient buffer, and in deterministic mode the sum of the per-program partials).
``mlp_torch`` is the same network as plain ``torch`` matmuls in float32: the CPU backend,
float32 networks on CUDA, and widths or activations the fused kernel does not take.

First-order gradients come from the backward kernel. When the backward itself is
differentiated (``create_graph=True``, an eikonal loss through the network), the backward
is recomputed with the float32 reference so that autograd sees every operation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import ops
from .mlp_reference import ACTIVATIONS, MLPLayout, mlp_reference

try:
    import triton
    import triton.language as tl

    from . import mlp_kernels
except ImportError:  # pragma: no cover - triton is a Linux-only dependency
    triton = None

FUSED_WIDTHS = (16, 32, 64, 128)
FUSED_DTYPES = (torch.float16, torch.bfloat16)
# Activations whose derivative the backward reads from the post-activation (tcnn's
# FullyFusedMLP supports exactly these; Sine and SiLU need the pre-activation).
FUSED_ACTIVATIONS = tuple(a for a in ACTIVATIONS if a not in ("Sine", "SiLU"))
# tcnn's default loss scale (include/tiny-cuda-nn/common.h default_loss_scale<__half>).
LOSS_SCALE = {torch.float16: 128.0, torch.bfloat16: 1.0}


@dataclass(frozen=True)
class MLPSpec:
    """What a launch needs besides tensors: shapes, activations, padding, dtypes."""

    layout: MLPLayout
    activation: str = "ReLU"
    output_activation: str = "None"
    pad_value: float = 1.0
    dtype: torch.dtype = torch.float16  # operands of every matmul; the output's dtype
    deterministic: bool = False


def fused_unsupported(spec: MLPSpec) -> str | None:
    """Why the fused kernels cannot run ``spec``, or None when they can."""
    layout = spec.layout
    if reason := ops.triton_missing():
        return reason
    if layout.width not in FUSED_WIDTHS:
        return f"width {layout.width} (the fused kernels take {FUSED_WIDTHS})"
    if layout.n_hidden_layers < 1:
        return "n_hidden_layers=0 (the fused kernels need at least one hidden layer)"
    if spec.activation not in FUSED_ACTIVATIONS:
        return f"activation {spec.activation!r} (its derivative needs the pre-activation)"
    if spec.dtype not in FUSED_DTYPES:
        return f"dtype {spec.dtype} (the fused kernels run float16 and bfloat16)"
    return None


def tuning(width: int) -> tuple[int, int]:
    """(rows per program, warps) of a width. Chosen so that no variant spills on sm_80 or
    sm_90 at any depth (tests/test_compiled_mlp.py): the backward holds a (rows, width)
    float32 gradient, a weight-gradient tile and the saved activations in registers."""
    if ops.INTERPRET:  # the interpreter's cost is per operation: fewer, larger programs
        return 256, 4
    return {16: (128, 4), 32: (128, 4), 64: (128, 8)}.get(width, (64, 8))


def _constants(spec: MLPSpec) -> dict:
    layout = spec.layout
    return {
        "IN_PAD": layout.in_padded,
        "IN_BLOCK": triton.next_power_of_2(layout.in_padded),
        "WIDTH": layout.width,
        "OUT_PAD": layout.out_padded,
        "OUT_BLOCK": triton.next_power_of_2(layout.out_padded),
        "ACT": ACTIVATIONS.index(spec.activation),
        "OUT_ACT": ACTIVATIONS.index(spec.output_activation),
        "DTYPE": tl.float16 if spec.dtype == torch.float16 else tl.bfloat16,
        "EMULATE": ops.INTERPRET,
        "STATIC_DEPTH": layout.n_hidden_layers if ops.INTERPRET else 0,
    }


def _launch(kernel, grid: tuple, *args, num_warps: int, **constants) -> None:
    ops._run(kernel, grid, args, {**constants, "num_warps": num_warps, "num_stages": 1})


def forward(x: torch.Tensor, params: torch.Tensor, spec: MLPSpec, save: bool):
    """x (N, n_input_dims), params (n_params,) -> (y (N, n_output_dims) in spec.dtype,
    hidden post-activations (N, n_hidden, width) when ``save``, else an empty tensor)."""
    layout = spec.layout
    n_rows = x.shape[0]
    y = x.new_empty(n_rows, layout.n_output_dims, dtype=spec.dtype)
    shape = (n_rows, layout.n_hidden_layers, layout.width) if save else (0,)
    hidden = x.new_empty(shape, dtype=spec.dtype)
    if n_rows == 0:
        return y, hidden
    block, warps = tuning(layout.width)
    _launch(
        mlp_kernels.mlp_forward_kernel,
        (triton.cdiv(n_rows, block),),
        x,
        params,
        y,
        hidden,
        n_rows,
        layout.n_input_dims,
        layout.n_output_dims,
        x.stride(0),
        y.stride(0),
        layout.n_hidden_layers,
        spec.pad_value,
        SAVE=save,
        BLOCK_M=block,
        num_warps=warps,
        **_constants(spec),
    )
    return y, hidden


def backward(dy, x, params, hidden, spec: MLPSpec, need_dx: bool):
    """(dL/dx (N, n_input_dims) in x's dtype or None, dL/dparams (n_params,) float32)."""
    layout = spec.layout
    n_rows = x.shape[0]
    dx = torch.empty_like(x, memory_format=torch.contiguous_format) if need_dx else None
    if n_rows == 0:
        return dx, params.new_zeros(layout.n_params, dtype=torch.float32)
    block, warps = tuning(layout.width)
    programs = triton.cdiv(n_rows, block)
    shape = (programs, layout.n_params) if spec.deterministic else (layout.n_params,)
    make = torch.empty if spec.deterministic else torch.zeros
    dparams = make(shape, dtype=torch.float32, device=x.device)
    dy = dy if dy.stride(1) == 1 else dy.contiguous()
    _launch(
        mlp_kernels.mlp_backward_kernel,
        (programs,),
        x,
        params,
        hidden,
        dy,
        x if dx is None else dx,
        dparams,
        n_rows,
        layout.n_input_dims,
        layout.n_output_dims,
        x.stride(0),
        dy.stride(0),
        layout.n_hidden_layers,
        spec.pad_value,
        NEED_DX=need_dx,
        ATOMIC=not spec.deterministic,
        LOSS_SCALE=LOSS_SCALE[spec.dtype],
        BLOCK_M=block,
        num_warps=warps,
        **_constants(spec),
    )
    if spec.deterministic:
        dparams = dparams.sum(0)
    return dx, dparams


def mlp_torch(x: torch.Tensor, params: torch.Tensor, spec: MLPSpec) -> torch.Tensor:
    """The network as float32 ``torch`` matmuls (autograd to any order), output in spec.dtype."""
    compute = torch.float64 if params.dtype == torch.float64 else torch.float32
    args = (spec.layout, spec.activation, spec.output_activation, spec.pad_value)
    return mlp_reference(x.to(compute), params.to(compute), *args).to(spec.dtype)


class FusedMLPFunction(torch.autograd.Function):
    """y = MLP(x; params) on the Triton kernels; gradients to x and params."""

    @staticmethod
    def forward(ctx, x, params, spec: MLPSpec):
        x = x if x.stride(1) == 1 else x.contiguous()
        params = params.contiguous()
        save = any(ctx.needs_input_grad[:2])
        y, hidden = forward(x, params, spec, save)
        ctx.save_for_backward(x, params, hidden)
        ctx.spec = spec
        return y

    @staticmethod
    def backward(ctx, dy):
        x, params, hidden = ctx.saved_tensors
        spec = ctx.spec
        if torch.is_grad_enabled():  # create_graph: a backward autograd can differentiate
            inputs = [t for t in (x, params) if t.requires_grad]
            y = mlp_torch(x, params, spec)
            grads = iter(torch.autograd.grad(y, inputs, dy.to(y.dtype), create_graph=True))
            return (
                next(grads) if x.requires_grad else None,
                next(grads) if params.requires_grad else None,
                None,
            )
        dx, dparams = backward(dy, x, params, hidden, spec, ctx.needs_input_grad[0])
        dparams = dparams.to(params.dtype) if ctx.needs_input_grad[1] else None
        return dx, dparams, None


def fused_mlp(x: torch.Tensor, params: torch.Tensor, spec: MLPSpec) -> torch.Tensor:
    """x (N, n_input_dims) -> (N, n_output_dims) in spec.dtype, on the Triton kernels."""
    return FusedMLPFunction.apply(x, params, spec)
