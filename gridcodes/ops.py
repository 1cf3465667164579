"""Launchers of the Triton kernels and their registration as ``torch.library`` custom ops.

``gridcodes::grid_encode`` (forward) and ``gridcodes::grid_encode_backward`` are opaque
to ``torch.compile`` (no graph break) and carry fake-tensor kernels for tracing.
Double backward is not supported: differentiating the backward op raises.

Launchers assume the module already validated shapes, dtypes and devices; they only
prepare contiguous buffers and launch.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl

    from . import kernels
except ImportError:  # pragma: no cover - triton is a Linux-only dependency
    triton = None

TRITON_AVAILABLE = triton is not None
# Read once: triton.jit picks the interpreter when the kernels module is imported.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# Points (segments) per program. The interpreter's cost is per operation, not per element,
# so it runs larger blocks.
BLOCK = 256 if INTERPRET else 128
SEGMENT_BLOCK = 512 if INTERPRET else 64


def _constants(x: torch.Tensor, params: torch.Tensor) -> dict:
    return {
        "D": x.shape[-1],
        "COMPUTE": tl.float64 if params.dtype == torch.float64 else tl.float32,
    }


def _accumulator_dtype(params: torch.Tensor) -> torch.dtype:
    return torch.float64 if params.dtype == torch.float64 else torch.float32


@torch.library.custom_op("gridcodes::grid_encode", mutates_args=())
def grid_encode(
    x: torch.Tensor,
    params: torch.Tensor,
    table: torch.Tensor,
    smoothstep: bool,
    deterministic: bool,
) -> torch.Tensor:
    """Triton lookup. x (N, G, D), params (G, E, F), table (L, 4 + D) int64 -> (N, G, L*F).

    ``deterministic`` only affects the backward: bitwise-reproducible dL/dparams.
    """
    n_points, n_groups, _ = x.shape
    n_levels = table.shape[0]
    n_features = params.shape[-1]
    y = params.new_empty(n_points, n_groups, n_levels * n_features)
    if n_points == 0:
        return y
    grid = (triton.cdiv(n_points, BLOCK), n_levels, n_groups)
    kernels.grid_forward_kernel[grid](
        x.contiguous(),
        params.contiguous(),
        table,
        y,
        n_points,
        n_groups,
        params.shape[1],
        n_levels,
        F=n_features,
        SMOOTH=smoothstep,
        BLOCK=BLOCK,
        **_constants(x, params),
    )
    return y


@grid_encode.register_fake
def _(x, params, table, smoothstep, deterministic):
    return params.new_empty(x.shape[0], x.shape[1], table.shape[0] * params.shape[-1])


@torch.library.custom_op("gridcodes::grid_encode_backward", mutates_args=())
def grid_encode_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    params: torch.Tensor,
    table: torch.Tensor,
    smoothstep: bool,
    need_dx: bool,
    need_dparams: bool,
    deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients w.r.t. x (shape of x, or empty) and params (shape of params, or empty)."""
    n_points, n_groups, _ = x.shape
    n_levels = table.shape[0]
    n_rows, n_features = params.shape[1:]
    x, dy = x.contiguous(), dy.contiguous()
    dx = torch.empty_like(x) if need_dx else x.new_empty(0)
    # The table-sized accumulator exists only when the table needs a gradient.
    acc_shape = params.shape if need_dparams else (0,)
    acc = torch.zeros(acc_shape, dtype=_accumulator_dtype(params), device=params.device)
    atomic = need_dparams and not deterministic
    constants = _constants(x, params)
    if n_points > 0 and (need_dx or atomic):
        kernels.grid_backward_kernel[(triton.cdiv(n_points, BLOCK), n_groups)](
            x,
            params.contiguous(),
            table,
            dy,
            acc,
            dx,
            n_points,
            n_groups,
            n_rows,
            n_levels,
            F=n_features,
            SMOOTH=smoothstep,
            PARAM_GRAD=atomic,
            INPUT_GRAD=need_dx,
            BLOCK=BLOCK,
            **constants,
        )
    if need_dparams and deterministic and n_points > 0:
        _sorted_scatter(dy, x, table, acc, smoothstep, constants)
    dparams = acc.to(params.dtype) if need_dparams else params.new_empty(0)
    return dx, dparams


def _sorted_scatter(dy, x, table, acc, smoothstep, constants) -> None:
    """Deterministic dL/dparams: per level, sort contributions by row and sum each row in order."""
    n_points, n_groups, _ = x.shape
    n_rows, n_features = acc.shape[1:]
    n_corners = 2 ** x.shape[-1]
    rows = torch.empty(n_points * n_groups * n_corners, dtype=torch.int32, device=x.device)
    for level in range(table.shape[0]):
        kernels.grid_corner_rows_kernel[(triton.cdiv(n_points, BLOCK), n_groups)](
            x,
            table,
            rows,
            n_points,
            n_groups,
            n_rows,
            level,
            BLOCK=BLOCK,
            **constants,
        )
        sorted_rows, order = torch.sort(rows, stable=True)
        seg_rows, seg_len = torch.unique_consecutive(sorted_rows, return_counts=True)
        seg_start = torch.cumsum(seg_len, 0) - seg_len
        n_segments = seg_rows.numel()
        kernels.grid_segment_sum_kernel[(triton.cdiv(n_segments, SEGMENT_BLOCK),)](
            x,
            table,
            dy,
            order,
            seg_rows,
            seg_start,
            seg_len,
            acc,
            n_segments,
            table.shape[0],
            level,
            F=n_features,
            SMOOTH=smoothstep,
            BLOCK=SEGMENT_BLOCK,
            **constants,
        )


@grid_encode_backward.register_fake
def _(dy, x, params, table, smoothstep, need_dx, need_dparams, deterministic):
    dx = torch.empty_like(x) if need_dx else x.new_empty(0)
    dparams = torch.empty_like(params) if need_dparams else params.new_empty(0)
    return dx, dparams


def _setup_context(ctx, inputs, output):
    x, params, table, smoothstep, deterministic = inputs
    ctx.save_for_backward(x, params, table)
    ctx.smoothstep = smoothstep
    ctx.deterministic = deterministic


def _backward(ctx, dy):
    x, params, table = ctx.saved_tensors
    need_dx, need_dparams = ctx.needs_input_grad[:2]
    dx, dparams = grid_encode_backward(
        dy, x, params, table, ctx.smoothstep, need_dx, need_dparams, ctx.deterministic
    )
    return (dx if need_dx else None), (dparams if need_dparams else None), None, None, None


grid_encode.register_autograd(_backward, setup_context=_setup_context)
