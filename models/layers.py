"""StyleGAN2 building blocks shared by the decoder and the discriminator.

Equalized learning rate (Karras et al. 2018): weights are stored ~N(0, 1/lr_mul) and scaled
by ``lr_mul / sqrt(fan_in)`` at run time. Resampling uses the [1, 3, 3, 1] FIR filter
(StyleGAN2 App. B).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

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
        out = F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)
        return lrelu(out) if self.activation else out


def fir_kernel(device=None) -> torch.Tensor:
    """The normalized 4x4 [1, 3, 3, 1] outer-product filter."""
    k = torch.tensor([1.0, 3.0, 3.0, 1.0], device=device)
    k = k[:, None] * k[None, :]
    return k / k.sum()


def blur(x: torch.Tensor, pad: tuple[int, int], gain: float = 1.0) -> torch.Tensor:
    """Depthwise 4x4 FIR filter with padding (before, after) on both spatial axes."""
    channels = x.shape[1]
    kernel = (fir_kernel(x.device) * gain).to(x.dtype).expand(channels, 1, 4, 4)
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    return F.conv2d(x, kernel, groups=channels)


def blur_separable(x: torch.Tensor, pad: tuple[int, int]) -> torch.Tensor:
    """:func:`blur` (gain 1) as shifted, weighted sums of slices along each axis.

    The same filter, computed without a grouped convolution: the discriminator's gradient
    penalty differentiates it twice, and the double backward of a grouped convolution
    loops over the groups, one convolution per channel: 1,822 of the 1,947 convolutions of
    a training step on the CPU, and most of a 10.5 s step on an H100 (batch 12, 256^2).
    """
    taps = (1.0 / 8, 3.0 / 8, 3.0 / 8, 1.0 / 8)  # [1, 3, 3, 1] / 8 per axis
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    h, w = x.shape[-2] - 3, x.shape[-1] - 3
    rows = sum(t * x[..., i : i + h, :] for i, t in enumerate(taps))
    return sum(t * rows[..., i : i + w] for i, t in enumerate(taps))


def upsample_2x(x: torch.Tensor) -> torch.Tensor:
    """Zero-insertion 2x upsampling and the FIR filter (gain 4): (B,C,H,W) -> (B,C,2H,2W)."""
    b, c, h, w = x.shape
    up = x.new_zeros(b, c, h, 2, w, 2)
    up[:, :, :, 0, :, 0] = x
    return blur(up.reshape(b, c, 2 * h, 2 * w), pad=(2, 1), gain=4.0)


class EqualConv2d(nn.Module):
    """Convolution with equalized learning rate; optional FIR-filtered stride-2 downsampling."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        downsample: bool = False,
        bias: bool = True,
        activation: bool = False,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.downsample = downsample
        self.padding = 0 if downsample else kernel_size // 2
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stride = 1
        if self.downsample:
            # Blur so the strided conv below halves the size exactly (StyleGAN2's layout).
            p = 2 + (self.weight.shape[-1] - 1)
            x = blur_separable(x, pad=((p + 1) // 2, p // 2))
            stride = 2
        out = F.conv2d(x, self.weight * self.scale, self.bias, stride=stride, padding=self.padding)
        return lrelu(out) if self.activation else out
