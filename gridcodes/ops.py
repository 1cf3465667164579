"""Launchers of the Triton kernels and their registration as ``torch.library`` custom ops.

``gridcodes::grid_encode`` (forward), ``gridcodes::grid_encode_backward`` and
``gridcodes::grid_encode_double_backward`` are opaque to ``torch.compile`` (no graph
break) and carry fake-tensor kernels for tracing. The backward op is differentiable
(second-order gradients, docs/tcnn.md); differentiating the double backward raises.

Launchers assume the module already validated shapes, dtypes and devices; they only
prepare contiguous buffers and launch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .reference import compute_dtype

try:
    import triton
    import triton.language as tl

    from . import kernels
except ImportError:  # pragma: no cover - triton is a Linux-only dependency
    triton = None

TRITON_AVAILABLE = triton is not None
# The oldest Triton that compiles every kernel (docs/grids.md §8): 3.3 is torch 2.7's. Older
# ones reject the per-dimension tuples and tl.gather of kernels.py.
TRITON_FLOOR = (3, 3)


def triton_missing() -> str | None:
    """Why the Triton kernels cannot run in this environment, or None when they can."""
    if triton is None:
        return "triton is not installed"
    version = tuple(int(part) for part in triton.__version__.split(".")[:2])
    if version < TRITON_FLOOR:
        return (
            f"triton {triton.__version__} is installed and the kernels need triton>=3.3 "
            "(torch>=2.7); upgrade torch, or use backend='cpu' or 'torch'"
        )
    return None


# Read once: triton.jit picks the interpreter when the kernels module is imported.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# Contributions per chunk of the deterministic table gradient. Part of the summation
# order (kernels.py), so changing it changes the bits of deterministic gradients; the
# interpreter (whose cost is per operation, not per element) uses larger chunks.
CHUNK = 2048 if INTERPRET else 256


@dataclass(frozen=True)
class LaunchConfig:
    """Tuning knobs of one kernel: points (chunks) per program and warps."""

    block: int
    num_warps: int = 4


# The interpreter's cost is per operation, not per element, so it runs larger blocks.
TUNING = {
    "forward": LaunchConfig(256 if INTERPRET else 128),
    "backward": LaunchConfig(256 if INTERPRET else 128),
    "double_backward": LaunchConfig(256 if INTERPRET else 128),
    "rows": LaunchConfig(256 if INTERPRET else 128),
    "combine": LaunchConfig(256 if INTERPRET else 128),
}
BLOCK = TUNING["forward"].block  # kept for callers that size batches around it
# Atomic table gradient: rows of levels with at most COARSE_LEVEL_ROWS entries are summed in
# one replicated accumulator per REPLICA_POINTS points (at most MAX_REPLICAS), then added.
# Measured on an H100 (bench/results/gpu_notes.md): BRICS training shape (49,152 points)
# backward 0.93 -> 0.55 ms with 16 copies (Instant-NGP shape: 3.53 -> 4.27 ms, slower,
# in that version's scalar reductions); one image (4,096 points) gets none, which keeps
# its memory at 8.7 MB instead of 10.9.
COARSE_LEVEL_ROWS = 4096
REPLICA_POINTS = 3072
MAX_REPLICAS = 16


def coarse_rows(level_sizes) -> int:
    """Rows (per group) of the leading levels with at most COARSE_LEVEL_ROWS entries each."""
    rows = 0
    for size in level_sizes:
        if size > COARSE_LEVEL_ROWS:
            break
        rows += size
    return rows


def _launch(kernel, grid: tuple, *args, num_warps: int = 4, **constants) -> None:
    """Launch ``kernel`` on ``grid`` (the one place kernels are launched).

    ``enable_fp_fusion=False``: the compiled code rounds every product and sum as the
    reference does. With contraction, ``f = p - i`` after ``p = x (r - 1)`` becomes
    ``fma(x, r - 1, -i)``, so at a vertex the compiled fraction is ±1e-7 where the
    reference's is exactly 0 (docs/grids.md §2 step 2).
    """
    _run(kernel, grid, args, {**constants, "num_warps": num_warps, "enable_fp_fusion": False})


def _run(kernel, grid: tuple, args: tuple, kwargs: dict) -> None:
    """The launch itself; ``gridcodes.compiled`` replaces it to record launches instead."""
    kernel[grid](*args, **kwargs)


def _constants(x: torch.Tensor, params: torch.Tensor, fused: bool = False, reduce: int = 0) -> dict:
    """Compile-time constants of a launch: in_dim, computation dtype, and the level geometry's
    position rule (FUSED) and index reduction (REDUCE), see kernels._position / _corner."""
    return {
        "D": x.shape[-1],
        "COMPUTE": tl.float64 if params.dtype == torch.float64 else tl.float32,
        "FUSED": fused,
        "REDUCE": reduce,
    }


def forward(x, params, table, smoothstep: bool, fused: bool = False, reduce: int = 0):
    """Launch the lookup. x (N, G, D), params (G, E, F), table (L, 7 + D) int64 -> (N, G, L*F).

    ``fused`` and ``reduce`` describe the level geometry (``GridConfig.convention`` not
    "gridcodes", ``GridConfig.index_reduction``)."""
    n_points, n_groups, _ = x.shape
    n_levels = table.shape[0]
    n_features = params.shape[-1]
    y = params.new_empty(n_points, n_groups, n_levels * n_features)
    if n_points == 0:
        return y
    tune = TUNING["forward"]
    grid = (triton.cdiv(n_points, tune.block), n_levels, n_groups)
    _launch(
        kernels.grid_forward_kernel,
        grid,
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
        BLOCK=tune.block,
        num_warps=tune.num_warps,
        **_constants(x, params, fused, reduce),
    )
    return y


def backward(
    dy,
    x,
    params,
    table,
    smoothstep,
    need_dx,
    need_dparams,
    deterministic,
    coarse=0,
    fused=False,
    reduce=0,
):
    """Launch the backward: (dL/dx or empty, dL/dparams or empty), see grid_encode_backward."""
    n_points, n_groups, _ = x.shape
    n_levels = table.shape[0]
    n_rows, n_features = params.shape[1:]
    x, dy = x.contiguous(), dy.contiguous()
    dx = torch.empty_like(x) if need_dx else x.new_empty(0)
    # The table-sized accumulator exists only when the table needs a gradient.
    acc_shape = params.shape if need_dparams else (0,)
    acc = torch.zeros(acc_shape, dtype=compute_dtype(params), device=params.device)
    atomic = need_dparams and not deterministic
    constants = _constants(x, params, fused, reduce)
    n_replicas = min(MAX_REPLICAS, n_points // REPLICA_POINTS) if atomic else 0
    if n_replicas < 2 or coarse == 0:
        n_replicas, coarse = 1, 0
    replicas = acc.new_zeros(n_replicas, n_groups, coarse, n_features)
    if n_points > 0 and (need_dx or atomic):
        tune = TUNING["backward"]
        _launch(
            kernels.grid_backward_kernel,
            (triton.cdiv(n_points, tune.block), n_groups),
            x,
            params.contiguous(),
            table,
            dy,
            acc,
            replicas,
            dx,
            n_points,
            n_groups,
            n_rows,
            n_levels,
            coarse,
            F=n_features,
            SMOOTH=smoothstep,
            PARAM_GRAD=atomic,
            INPUT_GRAD=need_dx,
            REPLICAS=n_replicas,
            BLOCK=tune.block,
            num_warps=tune.num_warps,
            **constants,
            STATIC_L=n_levels if INTERPRET else 0,
        )
    if n_replicas > 1:
        acc[:, :coarse] += replicas.sum(0)
    if need_dparams and deterministic and n_points > 0:
        sorted_scatter(dy, x, table, acc, smoothstep, constants)
    dparams = acc.to(params.dtype) if need_dparams else params.new_empty(0)
    return dx, dparams


def sorted_scatter(dy, x, table, acc, smoothstep, constants, hx=None) -> None:
    """Deterministic dL/dparams into ``acc`` (zeros): one sort by row, chunked segmented sums.

    With ``hx`` (N, G, D), the double backward's scatter of ``v * dy`` instead of ``w * dy``.
    """
    n_points, n_groups, _ = x.shape
    n_levels = table.shape[0]
    n_rows, n_features = acc.shape[1:]
    n_contributions = n_points * n_groups * n_levels * 2 ** x.shape[-1]
    rows = torch.empty(n_contributions, dtype=torch.int32, device=x.device)
    tune = TUNING["rows"]
    _launch(
        kernels.grid_contribution_rows_kernel,
        (triton.cdiv(n_points, tune.block), n_groups),
        x,
        table,
        rows,
        n_points,
        n_groups,
        n_rows,
        n_levels,
        BLOCK=tune.block,
        num_warps=tune.num_warps,
        **constants,
        STATIC_L=n_levels if INTERPRET else 0,
    )
    rows, order = torch.sort(rows, stable=True)
    n_chunks = triton.cdiv(n_contributions, CHUNK)
    head = acc.new_empty(n_chunks, n_features)
    tail = acc.new_empty(n_chunks, n_features)
    tail_row = rows.new_empty(n_chunks)
    flags = rows.new_empty(n_chunks)
    _launch(
        kernels.grid_chunk_sum_kernel,
        (n_chunks,),
        x,
        table,
        dy,
        x if hx is None else hx.contiguous(),
        rows,
        order,
        acc,
        head,
        tail,
        tail_row,
        flags,
        n_contributions,
        n_points * n_groups,
        n_levels,
        F=n_features,
        SMOOTH=smoothstep,
        CHUNK=CHUNK,
        STEPS=CHUNK.bit_length() - 1,
        DIRECTIONAL=hx is not None,
        **{k: v for k, v in constants.items() if k != "REDUCE"},
    )
    tune = TUNING["combine"]
    _launch(
        kernels.grid_chunk_combine_kernel,
        (triton.cdiv(n_chunks, tune.block),),
        head,
        tail,
        tail_row,
        flags,
        acc,
        n_chunks,
        F=n_features,
        COMPUTE=constants["COMPUTE"],
        BLOCK=tune.block,
        num_warps=tune.num_warps,
    )


def double_backward(
    hx,
    dy,
    x,
    params,
    table,
    smoothstep,
    fused,
    reduce,
    need_ddy,
    need_dx,
    need_dparams,
    deterministic,
    coarse=0,
):
    """Launch the double backward's terms in ``hx`` (the upstream gradient of dL/dx): d/d(dy)
    or empty, d/dx or empty, d/dparams or empty (see kernels.grid_double_backward_kernel)."""
    n_points, n_groups, _ = x.shape
    n_levels = table.shape[0]
    n_rows, n_features = params.shape[1:]
    x, dy, hx = x.contiguous(), dy.contiguous(), hx.contiguous()
    ddy = torch.empty_like(dy) if need_ddy else dy.new_empty(0)
    dx = torch.empty_like(x) if need_dx else x.new_empty(0)
    acc_shape = params.shape if need_dparams else (0,)
    acc = torch.zeros(acc_shape, dtype=compute_dtype(params), device=params.device)
    atomic = need_dparams and not deterministic
    constants = _constants(x, params, fused, reduce)
    n_replicas = min(MAX_REPLICAS, n_points // REPLICA_POINTS) if atomic else 0
    if n_replicas < 2 or coarse == 0:
        n_replicas, coarse = 1, 0
    replicas = acc.new_zeros(n_replicas, n_groups, coarse, n_features)
    if n_points > 0 and (need_ddy or need_dx or atomic):
        tune = TUNING["double_backward"]
        _launch(
            kernels.grid_double_backward_kernel,
            (triton.cdiv(n_points, tune.block), n_groups),
            x,
            params.contiguous(),
            table,
            dy,
            hx,
            ddy,
            acc,
            replicas,
            dx,
            n_points,
            n_groups,
            n_rows,
            n_levels,
            coarse,
            F=n_features,
            SMOOTH=smoothstep,
            DY_GRAD=need_ddy,
            PARAM_GRAD=atomic,
            INPUT_GRAD=need_dx,
            REPLICAS=n_replicas,
            BLOCK=tune.block,
            num_warps=tune.num_warps,
            **constants,
            STATIC_L=n_levels if INTERPRET else 0,
        )
    if n_replicas > 1:
        acc[:, :coarse] += replicas.sum(0)
    if need_dparams and deterministic and n_points > 0:
        sorted_scatter(dy, x, table, acc, smoothstep, constants, hx=hx)
    dparams = acc.to(params.dtype) if need_dparams else params.new_empty(0)
    return ddy, dx, dparams


@torch.library.custom_op("gridcodes::grid_encode", mutates_args=())
def grid_encode(
    x: torch.Tensor,
    params: torch.Tensor,
    table: torch.Tensor,
    smoothstep: bool,
    fused: bool,
    reduce: int,
    deterministic: bool,
    coarse: int,
) -> torch.Tensor:
    """Triton lookup. x (N, G, D), params (G, E, F), table (L, 7 + D) int64 -> (N, G, L*F).

    ``fused`` and ``reduce``: the level geometry (see :func:`forward`). ``deterministic``
    and ``coarse`` (see :func:`coarse_rows`) only affect the backward: bitwise-reproducible
    dL/dparams, and which rows get replicated accumulators.
    """
    return forward(x, params, table, smoothstep, fused, reduce)


@grid_encode.register_fake
def _(x, params, table, smoothstep, fused, reduce, deterministic, coarse):
    return params.new_empty(x.shape[0], x.shape[1], table.shape[0] * params.shape[-1])


@torch.library.custom_op("gridcodes::grid_encode_backward", mutates_args=())
def grid_encode_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    params: torch.Tensor,
    table: torch.Tensor,
    smoothstep: bool,
    fused: bool,
    reduce: int,
    need_dx: bool,
    need_dparams: bool,
    deterministic: bool,
    coarse: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients w.r.t. x (shape of x, or empty) and params (shape of params, or empty)."""
    return backward(
        dy,
        x,
        params,
        table,
        smoothstep,
        need_dx,
        need_dparams,
        deterministic,
        coarse,
        fused,
        reduce,
    )


@grid_encode_backward.register_fake
def _(
    dy, x, params, table, smoothstep, fused, reduce, need_dx, need_dparams, deterministic, coarse
):
    dx = torch.empty_like(x) if need_dx else x.new_empty(0)
    dparams = torch.empty_like(params) if need_dparams else params.new_empty(0)
    return dx, dparams


def _setup_context(ctx, inputs, output):
    x, params, table, smoothstep, fused, reduce, deterministic, coarse = inputs
    ctx.save_for_backward(x, params, table)
    ctx.geometry = (smoothstep, fused, reduce)
    ctx.deterministic = deterministic
    ctx.coarse = coarse


def _backward(ctx, dy):
    x, params, table = ctx.saved_tensors
    need_dx, need_dparams = ctx.needs_input_grad[:2]
    dx, dparams = grid_encode_backward(
        dy, x, params, table, *ctx.geometry, need_dx, need_dparams, ctx.deterministic, ctx.coarse
    )
    grads = (dx if need_dx else None), (dparams if need_dparams else None)
    return *grads, None, None, None, None, None, None


grid_encode.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("gridcodes::grid_encode_double_backward", mutates_args=())
def grid_encode_double_backward(
    hx: torch.Tensor,
    dy: torch.Tensor,
    x: torch.Tensor,
    params: torch.Tensor,
    table: torch.Tensor,
    smoothstep: bool,
    fused: bool,
    reduce: int,
    need_ddy: bool,
    need_dx: bool,
    need_dparams: bool,
    deterministic: bool,
    coarse: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The terms in ``hx`` of the backward's gradient w.r.t. dy, x and params (or empty)."""
    return double_backward(
        hx,
        dy,
        x,
        params,
        table,
        smoothstep,
        fused,
        reduce,
        need_ddy,
        need_dx,
        need_dparams,
        deterministic,
        coarse,
    )


@grid_encode_double_backward.register_fake
def _(hx, dy, x, params, table, smoothstep, fused, reduce, need_ddy, need_dx, need_dparams, *_):
    ddy = torch.empty_like(dy) if need_ddy else dy.new_empty(0)
    dx = torch.empty_like(x) if need_dx else x.new_empty(0)
    dparams = torch.empty_like(params) if need_dparams else params.new_empty(0)
    return ddy, dx, dparams


def _setup_backward_context(ctx, inputs, output):
    dy, x, params, table, smoothstep, fused, reduce, _, _, deterministic, coarse = inputs
    ctx.save_for_backward(dy, x, params, table)
    ctx.geometry = (smoothstep, fused, reduce)
    ctx.deterministic = deterministic
    ctx.coarse = coarse


def _present(t: torch.Tensor | None) -> bool:
    return t is not None and t.numel() > 0


def _double_backward(ctx, hx, hparams):
    """Gradients of the backward's (dL/dx, dL/dparams) w.r.t. (dy, x, params), given their
    upstream gradients ``hx`` and ``hparams`` (docs/tcnn.md, "Second-order gradients")."""
    dy, x, params, table = ctx.saved_tensors
    need_ddy, need_dx, need_dparams = ctx.needs_input_grad[:3]
    det, coarse = ctx.deterministic, ctx.coarse
    ddy = dx = dparams = None
    if _present(hx) and (need_ddy or need_dx or need_dparams):
        terms = grid_encode_double_backward(
            hx, dy, x, params, table, *ctx.geometry, need_ddy, need_dx, need_dparams, det, coarse
        )
        ddy, dx, dparams = (t if need else None for t, need in zip(terms, ctx.needs_input_grad))
    if _present(hparams):  # dL/dparams = scatter(w dy): linear in dy, its w depends on x
        if need_ddy:
            looked_up = grid_encode(x, hparams, table, *ctx.geometry, det, coarse)
            ddy = looked_up if ddy is None else ddy + looked_up
        if need_dx:
            slope, _ = grid_encode_backward(
                dy, x, hparams, table, *ctx.geometry, True, False, det, coarse
            )
            dx = slope if dx is None else dx + slope
    return ddy, dx, dparams, None, None, None, None, None, None, None, None


grid_encode_backward.register_autograd(_double_backward, setup_context=_setup_backward_context)
