"""Reconstruction metrics (paper Table 2): PSNR, SSIM, LPIPS; key-code and grid statistics.

PSNR and SSIM are computed on images mapped from [-1, 1] to [0, 1] with data range 1.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped."""
    return ((images + 1) / 2).clamp(0, 1)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> uint8 in 0..255 (clamped, rounded), as images are saved and measured."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().byte()


def psnr(
    prediction: torch.Tensor, target: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)
) -> torch.Tensor:
    """Per-image PSNR in dB, (B,), of images (B, ...) whose values span ``value_range``
    ([-1, 1] by default): both are clamped to it and evaluated in [0, 1], data range 1."""
    low, high = value_range
    unit = to_unit if (low, high) == (-1, 1) else lambda x: ((x - low) / (high - low)).clamp(0, 1)
    mse = (unit(prediction) - unit(target)).square().flatten(1).mean(dim=1)
    return -10 * torch.log10(mse.clamp_min(1e-12))


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-coords.square() / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004), (B,): 11x11 Gaussian window (sigma 1.5), K1 0.01,
    K2 0.03, data range 1 on [0, 1] images, per channel, averaged over valid positions."""
    x, y = to_unit(prediction).double(), to_unit(target).double()
    channels = x.shape[1]
    window = _gaussian_window(11, 1.5, x.device, x.dtype).expand(channels, 1, 11, 11)
    blur = lambda t: F.conv2d(t, window, groups=channels)
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x.square()
    var_y = blur(y * y) - mu_y.square()
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2)
    )
    return index.flatten(1).mean(dim=1).float()


def try_lpips(net: str = "alex", device="cpu"):
    """An LPIPS module with pretrained weights, or None (logged) when they are not available."""
    from models.losses import LPIPSLoss

    try:
        return LPIPSLoss(net, pretrained=True).to(device)
    except FileNotFoundError as error:
        logger.warning("LPIPS skipped: %s", error)
        return None


def mean_std(values: torch.Tensor) -> dict[str, float]:
    values = values.double()
    std = values.std().item() if values.numel() > 1 else 0.0
    return {"mean": values.mean().item(), "std": 0.0 if math.isnan(std) else std}
