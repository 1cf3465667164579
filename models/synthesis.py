"""StyleGAN2-style synthesis decoder of BRICS (Sec. 3.3): feature block f -> image.

Instead of StyleGAN2's learned 4x4 constant, synthesis starts from the feature block
f (B, Cd, Hd, Wd); the style code w = MLPs(normalize(avg_pool(f))) modulates every
convolution. Each resolution block has modulated/demodulated 3x3 convolutions with
noise injection and a toRGB output added to the upsampled image of the block before
(skip architecture, StyleGAN2 Fig. 7).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import EqualLinear, blur, lrelu, upsample_2x


class StyleMapping(nn.Module):
    """Style code w = MLPs(normalize(avg_pool(f))): (B, Cd, Hd, Wd) -> (B, Cd)."""

    def __init__(self, channels: int, n_layers: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *(
                EqualLinear(channels, channels, lr_mul=0.01, activation=True)
                for _ in range(n_layers)
            )
        )

    def forward(self, feature_block: torch.Tensor) -> torch.Tensor:
        pooled = feature_block.mean(dim=(2, 3))
        normalized = pooled * torch.rsqrt(pooled.square().mean(dim=1, keepdim=True) + 1e-8)
        return self.layers(normalized)


class ModulatedConv2d(nn.Module):
    """Style-modulated (and demodulated) convolution, optionally upsampling 2x (StyleGAN2 Sec. 2.2).

    Upsampling is a stride-2 transposed convolution followed by the FIR filter.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        style_dim: int,
        demodulate: bool = True,
        upsample: bool = False,
    ) -> None:
        super().__init__()
        shape = (1, out_channels, in_channels, kernel_size, kernel_size)
        self.weight = nn.Parameter(torch.randn(shape))
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.affine = EqualLinear(style_dim, in_channels, bias_init=1.0)
        self.demodulate = demodulate
        self.upsample = upsample
        self.padding = kernel_size // 2

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        b, c_in, h, w = x.shape
        s = self.affine(style).view(b, 1, c_in, 1, 1)
        weight = self.scale * self.weight * s  # (B, out, in, k, k)
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.square().sum(dim=(2, 3, 4), keepdim=True) + 1e-8)
        c_out, k = weight.shape[1], weight.shape[-1]
        # One grouped convolution over the batch (each sample has its own weights).
        x = x.reshape(1, b * c_in, h, w)
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(b * c_in, c_out, k, k)
            out = F.conv_transpose2d(x, weight, stride=2, groups=b)
            out = out.view(b, c_out, *out.shape[-2:])
            return blur(out, pad=(1, 1), gain=4.0)
        out = F.conv2d(x, weight.reshape(b * c_out, c_in, k, k), padding=self.padding, groups=b)
        return out.view(b, c_out, h, w)


class NoiseInjection(nn.Module):
    """Per-pixel Gaussian noise with a learned per-layer strength.

    Random in training; in evaluation a fixed noise map (a buffer), so decoding is
    deterministic.
    """

    def __init__(self, resolution: int) -> None:
        super().__init__()
        self.strength = nn.Parameter(torch.zeros(()))
        self.register_buffer("fixed", torch.randn(1, 1, resolution, resolution))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            noise = torch.randn(x.shape[0], 1, *x.shape[2:], device=x.device, dtype=x.dtype)
        else:
            noise = self.fixed.to(x.dtype)
        return x + self.strength * noise


class StyledConv(nn.Module):
    """Modulated 3x3 convolution + noise + bias + leaky ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        style_dim: int,
        resolution: int,
        upsample: bool = False,
    ) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, style_dim, upsample=upsample)
        self.noise = NoiseInjection(resolution)
        self.bias = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return lrelu(self.noise(self.conv(x, style)) + self.bias)


class ToRGB(nn.Module):
    """Modulated 1x1 convolution to RGB (no demodulation), added to the upsampled skip image."""

    def __init__(self, in_channels: int, style_dim: int) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(
        self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None
    ) -> torch.Tensor:
        rgb = self.conv(x, style) + self.bias
        return rgb if skip is None else rgb + upsample_2x(skip)


def synthesis_channels(
    decoder_channels: int, tile_size: int, resolution: int, rule: str = "absolute"
) -> int:
    """Channels at ``resolution``. "absolute" (StyleGAN2's rule, the authors'):
    min(32768 / resolution, Cd); "relative": Cd at Hd, halved per doubling (at least 32)."""
    if rule == "absolute":
        return min(32768 // resolution, decoder_channels)
    return max(32, decoder_channels * tile_size // resolution)


class SynthesisDecoder(nn.Module):
    """Feature block (B, Cd, Hd, Wd) -> image (B, 3, H, W), unbounded (trained towards [-1, 1]).

    ``extra_conv``: a third modulated 3x3 conv in every upsampled block (the authors'
    ``--additional_decoder_conv``); ``channel_rule``: see :func:`synthesis_channels`.
    """

    def __init__(
        self,
        decoder_channels: int,
        tile_size: int,
        image_size: int,
        mapping_layers: int,
        channel_rule: str = "absolute",
        extra_conv: bool = True,
    ) -> None:
        super().__init__()
        style_dim = decoder_channels
        self.mapping = StyleMapping(decoder_channels, mapping_layers)
        channels = synthesis_channels(decoder_channels, tile_size, tile_size, channel_rule)
        # First block at Hd: two convolutions on the feature block, then toRGB.
        self.input_convs = nn.ModuleList(
            [
                StyledConv(decoder_channels, channels, style_dim, tile_size),
                StyledConv(channels, channels, style_dim, tile_size),
            ]
        )
        self.input_rgb = ToRGB(channels, style_dim)
        self.blocks = nn.ModuleList()
        self.to_rgb = nn.ModuleList()
        resolution = tile_size
        while resolution < image_size:
            resolution *= 2
            out_channels = synthesis_channels(decoder_channels, tile_size, resolution, channel_rule)
            convs = [
                StyledConv(channels, out_channels, style_dim, resolution, upsample=True),
                StyledConv(out_channels, out_channels, style_dim, resolution),
            ]
            if extra_conv:
                convs.append(StyledConv(out_channels, out_channels, style_dim, resolution))
            self.blocks.append(nn.ModuleList(convs))
            self.to_rgb.append(ToRGB(out_channels, style_dim))
            channels = out_channels

    def forward(self, feature_block: torch.Tensor) -> torch.Tensor:
        style = self.mapping(feature_block)
        x = feature_block
        for conv in self.input_convs:
            x = conv(x, style)
        image = self.input_rgb(x, style, None)
        for convs, to_rgb in zip(self.blocks, self.to_rgb):
            for conv in convs:
                x = conv(x, style)
            image = to_rgb(x, style, image)
        return image
