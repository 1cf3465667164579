"""StyleGAN2 building blocks shared by the decoder and the discriminator.

Equalized learning rate (Karras et al. 2018): weights are stored ~N(0, 1/lr_mul) and scaled
by ``lr_mul / sqrt(fan_in)`` at run time. A network scales all its layers' parameters in one
pass (:func:`equalized`: one foreach kernel forward, one backward) instead of a
multiplication per tensor per call. Resampling uses the [1, 3, 3, 1] FIR filter
(StyleGAN2 App. B) of :mod:`models.resample`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .convolution import conv2d
from .resample import blur, downsample_2x

LRELU_GAIN = math.sqrt(2.0)


def lrelu(x: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU (slope 0.2) scaled by sqrt(2) to keep unit variance."""
    return F.leaky_relu(x, 0.2) * LRELU_GAIN


def leaky_relu(x: torch.Tensor) -> torch.Tensor:
    """``F.leaky_relu(x, 0.2)``, differentiable to any order with one kernel per derivative
    (:class:`LeakyReLU`)."""
    return LeakyReLU.apply(x)


class LeakyReLU(torch.autograd.Function):
    """Leaky ReLU (slope 0.2) whose backward, :class:`LeakyReLUGrad`, is one
    ``leaky_relu_backward`` at every order: PyTorch's own double backward also zero-fills a
    tensor for the (zero) derivative with respect to the input, and adds it, per activation
    of D in the gradient penalty. Saves its input, as PyTorch's own (saving the output
    costs a ``detach`` each way)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return F.leaky_relu(x, 0.2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # a double backward: x gets no edge (its derivative is
            x = x.detach()  # zero), or the penalty's backward would run D's on zeros
        return LeakyReLUGrad.apply(grad, x)


class LeakyReLUGrad(torch.autograd.Function):
    """``grad`` times leaky ReLU's slope at ``x`` (1 or 0.2): linear in ``grad``, so its
    backward is itself; piecewise constant in ``x``, so nothing flows to ``x``."""

    @staticmethod
    def forward(ctx, grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.ops.aten.leaky_relu_backward(grad, x, 0.2, False)

    @staticmethod
    def backward(ctx, h: torch.Tensor):
        (x,) = ctx.saved_tensors
        return LeakyReLUGrad.apply(h, x), None


class ScaleEach(torch.autograd.Function):
    """``tensors[i] * factors[i]`` for every i in one foreach kernel. The map is linear, so
    its backward is itself (on the gradients that are defined): one kernel per pass at
    every order of differentiation."""

    @staticmethod
    def forward(ctx, factors: tuple[float, ...], *tensors: torch.Tensor):
        ctx.factors = factors
        ctx.set_materialize_grads(False)  # no zero-filled gradients for unused outputs
        return tuple(torch._foreach_mul(list(tensors), list(factors)))

    @staticmethod
    def backward(ctx, *grads):
        live = [i for i, g in enumerate(grads) if g is not None]
        out = [None] * len(grads)
        if live:
            scaled = ScaleEach.apply(tuple(ctx.factors[i] for i in live), *(grads[i] for i in live))
            for i, g in zip(live, scaled):
                out[i] = g
        return None, *out


def equalized(layers) -> list[tuple[torch.Tensor, ...]]:
    """The run-time parameters of every layer in ``layers`` (each with
    ``equalized_parameters()``: pairs of a stored tensor and its factor), all scaled in one
    :class:`ScaleEach` pass: one tuple per layer, in that layer's order."""
    layers = list(layers)
    pairs = [layer.equalized_parameters() for layer in layers]
    flat = [pair for group in pairs for pair in group]
    scaled = iter(ScaleEach.apply(tuple(f for _, f in flat), *(t for t, _ in flat)))
    return [tuple(next(scaled) for _ in group) for group in pairs]


class EqualLinear(nn.Module):
    """Linear layer with equalized learning rate; optional leaky-ReLU activation."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias_init: float = 0.0,
        lr_mul: float = 1.0,
        activation: bool = False,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_features)
        self.lr_mul = lr_mul
        self.activation = activation

    def equalized_parameters(self) -> list[tuple[torch.Tensor, float]]:
        # lrelu(z) = leaky_relu(z * gain): the gain folds into the weight and bias scales
        gain = LRELU_GAIN if self.activation else 1.0
        return [(self.weight, self.scale * gain), (self.bias, self.lr_mul * gain)]

    def forward(self, x: torch.Tensor, weight=None, bias=None) -> torch.Tensor:
        """``weight``, ``bias``: this layer's scaled parameters when :func:`equalized` made
        them for a whole network (default: scaled here)."""
        if weight is None:
            ((weight, bias),) = equalized([self])
        out = F.linear(x, weight, bias)
        return leaky_relu(out) if self.activation else out


class EqualConv2d(nn.Module):
    """Convolution with equalized learning rate, optional leaky ReLU (gain sqrt 2) and output
    factor ``gain``; optional FIR-filtered 2x downsampling.
    Differentiable to any order with one kernel call per derivative
    (:func:`models.convolution.conv2d`): D's gradient penalty differentiates it twice.

    Downsampling as StyleGAN2-ADA's training form: a k x k conv (k > 1) filters at full
    resolution and convolves with stride 2; a 1 x 1 conv downsamples first (filter and
    stride 2 in one pass) and convolves at half resolution, a quarter of the work.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        downsample: bool = False,
        bias: bool = True,
        activation: bool = False,
        gain: float = 1.0,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.downsample = downsample
        self.padding = 0 if downsample else kernel_size // 2
        self.activation = activation
        # The output's factor: ``gain``, times lrelu's; it folds into the weight and bias
        # scales, since leaky ReLU is positively homogeneous.
        self.out_scale = gain * (LRELU_GAIN if activation else 1.0)

    def equalized_parameters(self) -> list[tuple[torch.Tensor, float]]:
        t = self.out_scale
        return [(self.weight, self.scale * t)] + ([] if self.bias is None else [(self.bias, t)])

    def forward(self, x: torch.Tensor, weight=None, bias=None) -> torch.Tensor:
        """``weight``, ``bias``: this layer's scaled parameters when :func:`equalized` made
        them for a whole network (default: scaled here)."""
        if weight is None:
            weight, *rest = equalized([self])[0]  # no bias: the weight alone
            bias = rest[0] if rest else None
        stride, k = 1, self.weight.shape[-1]
        if self.downsample and k == 1:
            x = downsample_2x(x)
        elif self.downsample:
            # Padding so that the stride-2 conv below halves the size exactly (k odd).
            x, stride = blur(x, padding=(k + 1) // 2), 2
        out = conv2d(x, weight, bias, stride, self.padding)
        return leaky_relu(out) if self.activation else out
