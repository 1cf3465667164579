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

from .layers import LRELU_GAIN, EqualLinear
from .resample import blur, upsample_2x


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

    Each sample's weight is ``w' = w * s`` (styles s over input channels), demodulated by
    ``d = rsqrt(sum w'^2 + 1e-8)`` over input channels and taps. Two equal forms (as
    StyleGAN2-ADA's ``modulated_conv2d``):

    - unfused, in training: ``conv(x * s, w) * d`` -- ONE dense convolution with the shared
      weight for the whole batch, and d from ``s^2 @ sum_taps w^2``;
    - fused, for one sample in evaluation: the modulated weight built and convolved directly
      (one dense convolution too, since a batch of one needs no groups).

    Upsampling is a stride-2 transposed convolution followed by the FIR filter (gain 4).
    The styles s = ``affine(w)`` are computed by the decoder for all layers at once
    (:meth:`SynthesisDecoder.styles`).
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

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, H, W), styles s (B, C_in) -> (B, C_out, H', W'), H' = 2H if upsampling."""
        y, d = self.modulated(x, s)
        return y if d is None else y * d.view(*d.shape, 1, 1)

    def modulated(self, x: torch.Tensor, s: torch.Tensor):
        """``(y, d)``: the convolution y of x with the modulated weight and the demodulation
        d (B, C_out) still to multiply it by (None: none, or already in the weight), so that
        the caller can fold d into its next elementwise pass."""
        weight = self.weight[0] * self.scale  # (C_out, C_in, k, k)
        if not self.training and x.shape[0] == 1:
            return self._fused(x, weight, s), None
        y = self._conv(x * s.view(*s.shape, 1, 1), weight)
        return y, self._demodulation(weight, s) if self.demodulate else None

    def _conv(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if not self.upsample:
            return F.conv2d(x, weight, padding=self.padding)
        return blur(F.conv_transpose2d(x, weight.transpose(0, 1), stride=2), padding=1, gain=4.0)

    @staticmethod
    def _demodulation(weight: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """d (B, C_out): rsqrt of sum_{i, taps} (w[o, i] s[b, i])^2 + 1e-8."""
        return torch.rsqrt(s.square() @ weight.square().sum(dim=(2, 3)).T + 1e-8)

    def _fused(self, x: torch.Tensor, weight: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        weight = weight * s[0][None, :, None, None]
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.square().sum(dim=(1, 2, 3), keepdim=True) + 1e-8)
        return self._conv(x, weight)


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
        return x + self.term(x)

    def term(self, x: torch.Tensor) -> torch.Tensor:
        """The noise to add to x (B, C, H, W): strength * noise, (B or 1, 1, H, W)."""
        if self.training:
            noise = torch.randn(x.shape[0], 1, *x.shape[2:], device=x.device, dtype=x.dtype)
        else:
            noise = self.fixed.to(x.dtype)
        return self.strength * noise


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

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """lrelu(conv * d + noise + bias) in three passes over the feature map: leaky ReLU is
        positively homogeneous, so its gain g folds in, lrelu(z) g = leaky_relu(z g)."""
        y, d = self.conv.modulated(x, s)
        scale = (y.new_ones(y.shape[:2]) if d is None else d) * LRELU_GAIN
        z = torch.addcmul(self.bias * LRELU_GAIN, y, scale.view(*scale.shape, 1, 1))
        return F.leaky_relu(z + self.noise.term(y) * LRELU_GAIN, 0.2)


class ToRGB(nn.Module):
    """Modulated 1x1 convolution to RGB (no demodulation), added to the upsampled skip image."""

    def __init__(self, in_channels: int, style_dim: int) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, s: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        rgb = self.conv(x, s) + self.bias
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

    def modulated_convs(self) -> list[ModulatedConv2d]:
        """Every modulated convolution, in the order :meth:`forward` runs them."""
        layers = [*self.input_convs, self.input_rgb]
        for convs, to_rgb in zip(self.blocks, self.to_rgb):
            layers += [*convs, to_rgb]
        return [layer.conv for layer in layers]

    def styles(self, style: torch.Tensor) -> list[torch.Tensor]:
        """The styles ``affine(w)`` of every modulated convolution, (B, C_in) each, from the
        style code w (B, style_dim): one matrix product over all the layers' affine maps
        (they all read the same w, with the same equalized-lr scale)."""
        affines = [conv.affine for conv in self.modulated_convs()]
        weight = torch.cat([a.weight for a in affines]) * affines[0].scale
        bias = torch.cat([a.bias for a in affines])  # lr_mul 1: no bias scale
        return list(F.linear(style, weight, bias).split([a.bias.numel() for a in affines], 1))

    def forward(self, feature_block: torch.Tensor) -> torch.Tensor:
        styles = iter(self.styles(self.mapping(feature_block)))
        x = feature_block
        for conv in self.input_convs:
            x = conv(x, next(styles))
        image = self.input_rgb(x, next(styles), None)
        for convs, to_rgb in zip(self.blocks, self.to_rgb):
            for conv in convs:
                x = conv(x, next(styles))
            image = to_rgb(x, next(styles), image)
        return image
