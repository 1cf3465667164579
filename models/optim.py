"""Optimizers of the autoencoder stage (App. A.2)."""

from __future__ import annotations

import torch
from torch import nn

AE_BETAS = (0.0, 0.99)
AE_EPS = 1e-15  # tiny eps so rarely hit grid entries still move quickly (Instant-NGP)
DISC_EPS = 1e-8


def build_optimizers(
    autoencoder: nn.Module,
    discriminator: nn.Module | None,
    lr: float = 2e-3,
    disc_reg_interval: int | None = None,
) -> tuple[torch.optim.Adam, torch.optim.Adam | None]:
    """Adam(lr, betas (0, 0.99)) with eps 1e-15 for encoder, decoder and grids, 1e-8 for D.

    Fused (one kernel over all parameters): on the CPU too, faster than the per-tensor loop
    (bench/results/cpu_notes.md, "Measurements behind the code").

    ``disc_reg_interval``: D's lazy regularisation interval k (lazy R1); as StyleGAN2 (and the
    authors' ``training/training_loop.py``), D's lr is then scaled by c = k / (k + 1) and its
    betas raised to the power c, so that k + 1 updates move as far as k would without it.
    """
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    ae = torch.optim.Adam(autoencoder.parameters(), lr=lr, betas=AE_BETAS, eps=AE_EPS, fused=True)
    if discriminator is None:
        return ae, None
    ratio = 1.0 if disc_reg_interval is None else disc_reg_interval / (disc_reg_interval + 1)
    betas = tuple(beta**ratio for beta in AE_BETAS)
    disc = torch.optim.Adam(
        discriminator.parameters(), lr=lr * ratio, betas=betas, eps=DISC_EPS, fused=True
    )
    return ae, disc
