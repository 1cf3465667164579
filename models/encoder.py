"""Key-code encoder of BRICS (Sec. 3.1, App. A.1): VQGAN's encoder followed by a sigmoid.

The convolutional trunk follows taming-transformers' ``Encoder`` (ResNet blocks with
GroupNorm(32) and SiLU, strided-conv downsampling, a ResBlock-Attention-ResBlock middle),
with unit channel 32, attention at the key-code resolution min(Hz, Wz), and as many
downsamplings as H / Hz needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import precision

# Channel multipliers by number of downsamplings, as the public VQGAN / LDM configs
# (f4: (1, 2, 4), f8: (1, 2, 2, 4), f16: (1, 1, 2, 2, 4)).
CHANNEL_MULTIPLIERS = {
    0: (1,),
    1: (1, 2),
    2: (1, 2, 4),
    3: (1, 2, 2, 4),
    4: (1, 1, 2, 2, 4),
    5: (1, 1, 2, 2, 4, 4),
}


def group_norm(channels: int) -> nn.GroupNorm:
    return GroupNorm(32, channels, eps=1e-6)


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (affine; same parameters and results) as one kernel forward and one
    backward (:class:`_GroupNorm`): PyTorch's own dispatches two more ops each way. Under
    autocast it runs in float32 on every device, as CUDA's autocast runs ``group_norm``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (x, weight, bias), no_autocast = precision.in_float32(x, self.weight, self.bias)
        with no_autocast:
            return _GroupNorm.apply(x, weight, bias, self.num_groups, self.eps)


class _GroupNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, groups: int, eps: float):
        n, c = x.shape[:2]
        sizes = (n, c, x.numel() // (n * c), groups)
        y, mean, rstd = torch.ops.aten.native_group_norm(x, weight, bias, *sizes, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.sizes = sizes
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight, mean, rstd = ctx.saved_tensors
        mask = list(ctx.needs_input_grad[:3])
        grads = torch.ops.aten.native_group_norm_backward(
            grad.to(x.dtype), x, mean, rstd, weight, *ctx.sizes, mask
        )
        return *grads, None, None


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = (
            nn.Conv2d(in_channels, out_channels, 1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions of a feature map."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # Channels last in memory (one copy): the fused attention kernels (CPU flash, CUDA
        # flash / memory-efficient) need unit stride over channels, else PyTorch falls back
        # to the unfused form, which materialises the (h w)^2 attention matrix.
        qkv = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).contiguous()
        q, k, v = qkv.unbind(1)
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3x3 convolution with VQGAN's asymmetric (0, 1) padding."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Encoder(nn.Module):
    """Image (B, 3, H, W) -> (B, out_channels, Hz, Wz) pre-activation key code."""

    def __init__(
        self,
        image_size: int,
        code_size: int,
        out_channels: int,
        channels: int = 32,
        res_blocks: int = 2,
    ) -> None:
        super().__init__()
        n_down = (image_size // code_size).bit_length() - 1
        if n_down not in CHANNEL_MULTIPLIERS:
            raise ValueError(f"image_size / code_size = {image_size // code_size} is not supported")
        mult = CHANNEL_MULTIPLIERS[n_down]
        self.conv_in = nn.Conv2d(3, channels, 3, padding=1)
        layers: list[nn.Module] = []
        block_in = channels
        resolution = image_size
        for level, m in enumerate(mult):
            block_out = channels * m
            for _ in range(res_blocks):
                layers.append(ResnetBlock(block_in, block_out))
                block_in = block_out
                if resolution == code_size:
                    layers.append(AttnBlock(block_in))
            if level != len(mult) - 1:
                layers.append(Downsample(block_in))
                resolution //= 2
        self.down = nn.Sequential(*layers)
        self.mid = nn.Sequential(
            ResnetBlock(block_in, block_in), AttnBlock(block_in), ResnetBlock(block_in, block_in)
        )
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.down(self.conv_in(x)))
        return self.conv_out(F.silu(self.norm_out(h)))
