"""StyleGAN2 discriminator (Karras et al. 2020, residual architecture with minibatch stddev)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .layers import EqualConv2d, EqualLinear, equalized


class DiscriminatorBlock(nn.Module):
    """Two 3x3 convolutions (the second downsampling) + a 1x1 downsampling skip, over sqrt(2)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = EqualConv2d(in_channels, in_channels, 3, activation=True)
        # The residual sum's 1 / sqrt(2) folds into both branches' output factors.
        half = 1 / math.sqrt(2.0)
        c_in, c_out = in_channels, out_channels
        self.conv2 = EqualConv2d(c_in, c_out, 3, downsample=True, activation=True, gain=half)
        self.skip = EqualConv2d(c_in, c_out, 1, downsample=True, bias=False, gain=half)

    def layers(self) -> list[EqualConv2d]:
        return [self.conv1, self.conv2, self.skip]

    def forward(self, x: torch.Tensor, params=None) -> torch.Tensor:
        """``params``: the layers' scaled parameters from :func:`equalized`, in
        :meth:`layers` order (default: scaled here)."""
        conv1, conv2, skip = params or equalized(self.layers())
        return self.conv2(self.conv1(x, *conv1), *conv2) + self.skip(x, *skip)


def minibatch_stddev(x: torch.Tensor, group_size: int = 4, parts: int = 1) -> torch.Tensor:
    """Append the mean per-group feature standard deviation as one extra channel.

    ``parts``: the batch is that many batches side by side (real and fake images in one
    pass), each grouped on its own, so that D of the concatenation equals D of each part.
    Within a part of b samples, sample g * (b / group) + j belongs to group j.
    """
    n, c, h, w = x.shape
    b = n // parts
    group = min(group_size, b)
    if b % group:
        group = 1
    if group == 1:
        # A group of one has no spread: the channel is sqrt(1e-8) whatever x is. Built as a
        # constant, so no gradient (exactly zero) flows back through D from it: a gradient
        # penalty's double backward would otherwise run D's whole backward on zeros.
        std = torch.full((), 1e-8, dtype=x.dtype, device=x.device).sqrt()
        return torch.cat([x, std.expand(n, 1, h, w)], dim=1)
    y = x.reshape(parts, group, b // group, c, h, w)
    std = torch.sqrt(y.var(dim=1, unbiased=False) + 1e-8).mean(dim=(2, 3, 4))  # (parts, b/group)
    std = std[:, None].expand(parts, group, b // group).reshape(n, 1, 1, 1)
    return torch.cat([x, std.expand(n, 1, h, w)], dim=1)


class Discriminator(nn.Module):
    """Images (B, 3, H, W) -> realness logits (B,).

    Channels start at ``channels`` at full resolution and double at every halving, up to
    ``max_channels``; blocks downsample to 4x4.
    """

    def __init__(self, image_size: int, channels: int = 128, max_channels: int = 512) -> None:
        super().__init__()
        if image_size < 8 or image_size & (image_size - 1):
            raise ValueError(f"image_size must be a power of two >= 8, got {image_size}")
        self.from_rgb = EqualConv2d(3, channels, 1, activation=True)
        blocks = []
        resolution, c_in = image_size, channels
        while resolution > 4:
            c_out = min(max_channels, c_in * 2)
            blocks.append(DiscriminatorBlock(c_in, c_out))
            resolution //= 2
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.final_conv = EqualConv2d(c_in + 1, c_in, 3, activation=True)
        self.final_linear = nn.Sequential(
            EqualLinear(c_in * 4 * 4, c_in, activation=True), EqualLinear(c_in, 1)
        )

    def forward(self, images: torch.Tensor, parts: int = 1) -> torch.Tensor:
        """Logits (B,) of images (B, 3, H, W); ``parts``: see :func:`minibatch_stddev`."""
        if images.shape[0] % parts:
            raise ValueError(f"batch {images.shape[0]} does not split into parts={parts}")
        # Every layer's equalized-lr scales in one pass, made afresh per call (after each
        # optimizer step the parameters differ)
        params = iter(equalized(self.layers()))
        x = self.from_rgb(images, *next(params))
        for block in self.blocks:
            x = block(x, [next(params) for _ in block.layers()])
        x = self.final_conv(minibatch_stddev(x, parts=parts), *next(params))
        x = x.flatten(1)
        for layer in self.final_linear:
            x = layer(x, *next(params))
        return x.squeeze(1)

    def layers(self) -> list[nn.Module]:
        """Every equalized layer, in the order :meth:`forward` runs them."""
        blocks = [layer for block in self.blocks for layer in block.layers()]
        return [self.from_rgb, *blocks, self.final_conv, *self.final_linear]
