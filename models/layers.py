"""StyleGAN2 building blocks shared by the decoder and the discriminator.

Equalized learning rate (Karras et al. 2018): weights are stored ~N(0, 1/lr_mul) and scaled
by ``lr_mul / sqrt(fan_in)`` at run time. Resampling uses the [1, 3, 3, 1] FIR filter
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # lrelu(z) = leaky_relu(z * gain): the gain folds into the weight and bias scales
        gain = LRELU_GAIN if self.activation else 1.0
        bias_scale = self.lr_mul * gain
        bias = self.bias if bias_scale == 1 else self.bias * bias_scale
        out = F.linear(x, self.weight * (self.scale * gain), bias)
        return F.leaky_relu(out, 0.2) if self.activation else out


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stride, k = 1, self.weight.shape[-1]
        if self.downsample and k == 1:
            x = downsample_2x(x)
        elif self.downsample:
            # Padding so that the stride-2 conv below halves the size exactly (k odd).
            x, stride = blur(x, padding=(k + 1) // 2), 2
        t = self.out_scale
        bias = self.bias if self.bias is None or t == 1 else self.bias * t
        out = conv2d(x, self.weight * (self.scale * t), bias, stride, self.padding)
        return F.leaky_relu(out, 0.2) if self.activation else out
