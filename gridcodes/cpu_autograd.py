"""The CPU backend's autograd wiring: the lookup (``cpu.lookup``), its backward
(``cpu.first_backward``) as a differentiable Function of its own, and that Function's
backward, the double backward (``cpu_second_order``). A third derivative raises.
"""

from __future__ import annotations

import weakref

import torch

from .cpu import Geometry, first_backward, lookup
from .cpu_runtime import BUFFERS
from .cpu_second_order import double_backward


@torch.compiler.disable  # a graph break: chunk loops and embedding_bag stay eager
def grid_encode_cpu(x: torch.Tensor, params: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """Lookup of ``x`` (N, G, d) in ``params`` (G, n_entries, F): (N, G, L * F), params' dtype."""
    return _GridEncode.apply(x, params, geo)


class _GridEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, params, geo: Geometry):
        out, chunks = lookup(x, params, geo, keep=any(ctx.needs_input_grad[:2]))
        ctx.save_for_backward(x, params)
        ctx.geo, ctx.chunks = geo, chunks
        # The chunks' buffers go back when the graph is freed (after the backward, or never
        # run): not in the backward, which retain_graph may run again.
        if chunks:
            kept = [t for c in chunks for t in (c.rows, c.weights, c.factors)]
            weakref.finalize(ctx, BUFFERS.give, kept)
        return out

    @staticmethod
    def backward(ctx, dy):
        x, params = ctx.saved_tensors
        need_dx, need_dparams = ctx.needs_input_grad[:2]
        # A Function of its own, so that the backward is differentiable (second order).
        dx, dtable = _GridEncodeBackward.apply(
            dy, x, params, ctx.geo, ctx.chunks, need_dx, need_dparams
        )
        return (dx if need_dx else None), (dtable if need_dparams else None), None


class _GridEncodeBackward(torch.autograd.Function):
    """The backward as a function of (dL/dy, x, params): its own backward is the double
    backward (``cpu_second_order``); differentiating that raises."""

    @staticmethod
    def forward(ctx, dy, x, params, geo: Geometry, chunks, need_dx, need_dparams):
        ctx.save_for_backward(dy, x, params)
        ctx.geo = geo
        ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None
        dx, dtable = first_backward(dy, x, params, geo, chunks, need_dx, need_dparams)
        # Empty tensors stand for the gradients not asked for.
        return (x.new_empty(0) if dx is None else dx), (
            params.new_empty(0) if dtable is None else dtable
        )

    @staticmethod
    def backward(ctx, hx, hparams):
        dy, x, params = ctx.saved_tensors
        need_ddy, need_dx, need_dparams = ctx.needs_input_grad[:3]
        with torch.no_grad():
            grads = double_backward(
                hx, hparams, dy, x, params, ctx.geo, need_ddy, need_dx, need_dparams
            )
        if torch.is_grad_enabled():  # create_graph: a third derivative may follow
            grads = _NoThirdOrder.apply(dy, x, params, hx, hparams, *grads)
        return *grads, None, None, None, None


class _NoThirdOrder(torch.autograd.Function):
    """The double backward's results, tied to its inputs so that differentiating them
    reaches this node and raises (third order is the reference's alone, docs/grids.md §2)."""

    @staticmethod
    def forward(ctx, dy, x, params, hx, hparams, *grads):
        return tuple(g if g is None else g.view_as(g) for g in grads)

    @staticmethod
    def backward(ctx, *upstream):
        raise RuntimeError(
            "gridcodes' CPU backend differentiates a lookup twice, not three times: use "
            "backend='torch' for third-order gradients"
        )
