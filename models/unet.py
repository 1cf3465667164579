"""The key-code denoiser: an Imagen/LDM-style UNet predicting epsilon (App. A.5).

Residual blocks (GroupNorm, SiLU, 3x3 convolutions, the time embedding added in between),
self-attention at chosen feature-map sizes, strided-conv downsampling, nearest + conv
upsampling, skip connections concatenated on the way up.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .persistence import ConfigMixin, PretrainedMixin


@dataclass(frozen=True)
class UNetConfig(ConfigMixin):
    """UNet hyper-parameters; the default is the paper's for 64x64x4 key codes."""

    code_channels: int = 4
    code_size: int = 64
    base_channels: int = 256
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    res_blocks: int = 2
    attention_sizes: tuple[int, ...] = (32, 16, 8)  # feature-map sizes with self-attention
    head_channels: int = 64
    dropout: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        object.__setattr__(self, "attention_sizes", tuple(self.attention_sizes))
        if self.code_size % 2 ** (len(self.channel_mult) - 1):
            raise ValueError(
                f"code_size={self.code_size} must be divisible by 2**{len(self.channel_mult) - 1} "
                f"for channel_mult={self.channel_mult}"
            )
        if self.base_channels % 32:
            raise ValueError(f"base_channels must be a multiple of 32, got {self.base_channels}")


UNET_PRESETS = {
    "paper": UNetConfig(),
    "small": UNetConfig(code_size=16, base_channels=64, channel_mult=(1, 2), attention_sizes=(8,)),
    "tiny": UNetConfig(
        code_size=8,
        base_channels=32,
        channel_mult=(1, 2),
        res_blocks=1,
        attention_sizes=(4,),
        head_channels=32,
    ),
}


def get_unet_preset(name: str, **overrides) -> UNetConfig:
    if name not in UNET_PRESETS:
        raise ValueError(f"unknown UNet preset {name!r}; valid: {', '.join(UNET_PRESETS)}")
    return dataclasses.replace(UNET_PRESETS[name], **overrides)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of continuous t in [0, 1] (scaled by 1000 as discrete DDPM steps)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    angles = 1000.0 * t.float()[:, None] * freqs[None, :]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels)


class ResBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, time_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time = nn.Linear(time_dim, out_channels)
        self.norm2 = norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)
        self.skip = (
            nn.Conv2d(in_channels, out_channels, 1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, channels: int, head_channels: int) -> None:
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = (t.transpose(-1, -2) for t in qkv.unbind(1))  # (b, heads, hw, c/heads)
        out = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class UNet(PretrainedMixin, nn.Module):
    """epsilon_theta(x_t, t): noisy codes (B, Cz, Hz, Wz) and times (B,) in [0, 1] -> epsilon."""

    config_class = UNetConfig

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = c = config
        time_dim = 4 * c.base_channels
        self.time_mlp = nn.Sequential(
            nn.Linear(c.base_channels, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim)
        )
        self.conv_in = nn.Conv2d(c.code_channels, c.base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        skips = [c.base_channels]
        channels, size = c.base_channels, c.code_size
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.res_blocks):
                block = nn.ModuleList(
                    [ResBlock(channels, c.base_channels * mult, time_dim, c.dropout)]
                )
                channels = c.base_channels * mult
                if size in c.attention_sizes:
                    block.append(Attention(channels, c.head_channels))
                self.down.append(block)
                skips.append(channels)
            if level != len(c.channel_mult) - 1:
                self.down.append(
                    nn.ModuleList([nn.Conv2d(channels, channels, 3, stride=2, padding=1)])
                )
                skips.append(channels)
                size //= 2
        self.mid = nn.ModuleList(
            [
                ResBlock(channels, channels, time_dim, c.dropout),
                Attention(channels, c.head_channels),
                ResBlock(channels, channels, time_dim, c.dropout),
            ]
        )
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for index in range(c.res_blocks + 1):
                out_channels = c.base_channels * mult
                block = nn.ModuleList(
                    [ResBlock(channels + skips.pop(), out_channels, time_dim, c.dropout)]
                )
                channels = out_channels
                if size in c.attention_sizes:
                    block.append(Attention(channels, c.head_channels))
                if level != 0 and index == c.res_blocks:
                    block.append(nn.Upsample(scale_factor=2, mode="nearest"))
                    block.append(nn.Conv2d(channels, channels, 3, padding=1))
                    size *= 2
                self.up.append(block)
        self.norm_out = norm(channels)
        self.conv_out = nn.Conv2d(channels, c.code_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @staticmethod
    def _run(block: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in block:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c = self.config
        if x.dim() != 4 or tuple(x.shape[1:]) != (c.code_channels, c.code_size, c.code_size):
            raise ValueError(
                f"x must have shape (B, {c.code_channels}, {c.code_size}, {c.code_size}), "
                f"got {tuple(x.shape)}"
            )
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape ({x.shape[0]},), got {tuple(t.shape)}")
        emb = self.time_mlp(timestep_embedding(t, c.base_channels).to(x.dtype))
        h = self.conv_in(x)
        hs = [h]
        for block in self.down:
            h = self._run(block, h, emb)
            hs.append(h)
        h = self._run(self.mid, h, emb)
        for block in self.up:
            h = self._run(block, torch.cat([h, hs.pop()], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(h)))


def unet_config_for_codes(name: str, code_channels: int, code_size: int) -> UNetConfig:
    """The UNet preset ``name`` for key codes (Cz, Hz, Hz): channels and size from the codes,
    attention only at feature-map sizes the codes have."""
    attention = tuple(s for s in get_unet_preset(name).attention_sizes if s <= code_size)
    return get_unet_preset(
        name, code_channels=code_channels, code_size=code_size, attention_sizes=attention
    )
