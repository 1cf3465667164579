"""A 2-D convolution whose derivatives of every order use the weight-gradient kernel.

A gradient penalty differentiates D's input gradient again. PyTorch's own double backward
of a convolution computes the weight term of that second derivative as a forward
convolution with the output gradient as the filter (as large as the feature map): the
shape cuDNN handles worst (23 ms per call on an H100, over half of a 10.5 s step once).
Here the three linear maps of a convolution, and their adjoints, call each other:

- :class:`Conv2d`         y  = conv(x, w)                    backward: dx = InputGrad(g, w),
                                                             dw = WeightGrad(g, x)
- :class:`InputGrad`      dx = conv_transpose(g, w)          backward: dg = Conv2d(h, w),
                                                             dw = WeightGrad(g, h)
- :class:`WeightGrad`     dw = sum_b g (x) x, per tap        backward: dg = Conv2d(x, h),
                                                             dx = InputGrad(g, h)

so every derivative is one call of a forward, input-gradient or weight-gradient kernel
(``aten.convolution_backward`` with one output), and a penalty's first backward skips
the weight gradients it does not need (:func:`no_weight_gradients`), as StyleGAN2-ADA's
``conv2d_gradfix``.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from . import precision

# Blocks of no_weight_gradients open. Process-wide, not thread- or context-local: on CUDA
# the autograd engine runs backward nodes on a thread of its own per device, where a
# contextvar set by the caller is not seen.
_skip_weights = [0]


@contextlib.contextmanager
def no_weight_gradients():
    """Inside the block, backward passes through :func:`conv2d` compute no weight or bias
    gradients: for ``torch.autograd.grad`` with respect to D's input only (R1, WGAN-GP, the
    generator's gradient through D). Process-wide, as StyleGAN2-ADA's ``conv2d_gradfix``:
    run no other backward that needs D's weight gradients inside the block."""
    _skip_weights[0] += 1
    try:
        yield
    finally:
        _skip_weights[0] -= 1


def conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int = 1,
    padding: int = 0,
) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding)`` (groups 1), differentiable to any order
    with one kernel call per derivative."""
    return Conv2d.apply(x, weight, bias, stride, padding)


def _weight_grad(grad: torch.Tensor, x: torch.Tensor, weight, stride: int, padding: int):
    """dL/dw of y = conv(x, w) for dL/dy = ``grad``: the weight-gradient kernel alone (of
    ``weight`` only the shape is read)."""
    mask = [False, True, False]
    return torch.ops.aten.convolution_backward(
        grad, x, weight, None, [stride] * 2, [padding] * 2, [1, 1], False, [0, 0], 1, mask
    )[1]


def _input_grad(grad: torch.Tensor, weight: torch.Tensor, size, stride: int, padding: int):
    """dL/dx of y = conv(x, w), x of spatial ``size``, for dL/dy = ``grad``."""
    k = weight.shape[-2:]
    extra = [
        n - ((m - 1) * stride - 2 * padding + kk) for n, m, kk in zip(size, grad.shape[-2:], k)
    ]
    return F.conv_transpose2d(grad, weight, None, stride, padding, extra)


class Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride: int, padding: int):
        (x, weight, bias), no_autocast = precision.in_compute_dtype(x, weight, bias)
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None
        with no_autocast:
            return F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        s, p = ctx.stride, ctx.padding
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = InputGrad.apply(grad, weight, x.shape[-2:], s, p)
        if not _skip_weights[0]:
            if ctx.needs_input_grad[1]:
                dw = WeightGrad.apply(grad, x, weight, s, p)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                db = grad.sum(dim=(0, 2, 3))
        return dx, dw, db, None, None


class InputGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grad, weight, size, stride: int, padding: int):
        ctx.save_for_backward(grad, weight)
        ctx.stride, ctx.padding = stride, padding
        return _input_grad(grad, weight, size, stride, padding)

    @staticmethod
    def backward(ctx, h):
        grad, weight = ctx.saved_tensors
        s, p = ctx.stride, ctx.padding
        dg = Conv2d.apply(h, weight, None, s, p) if ctx.needs_input_grad[0] else None
        dw = WeightGrad.apply(grad, h, weight, s, p) if ctx.needs_input_grad[1] else None
        return dg, dw, None, None, None


class WeightGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grad, x, weight, stride: int, padding: int):  # weight: for its shape
        ctx.save_for_backward(grad, x)
        ctx.stride, ctx.padding = stride, padding
        return _weight_grad(grad, x, weight, stride, padding)  # no graph in forward

    @staticmethod
    def backward(ctx, h):
        grad, x = ctx.saved_tensors
        s, p = ctx.stride, ctx.padding
        dg = Conv2d.apply(x, h, None, s, p) if ctx.needs_input_grad[0] else None
        dx = InputGrad.apply(grad, h, x.shape[-2:], s, p) if ctx.needs_input_grad[1] else None
        return dg, dx, None, None, None
