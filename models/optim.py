"""Optimizers of the autoencoder stage (App. A.2)."""

from __future__ import annotations

import torch
from torch import nn

AE_BETAS = (0.0, 0.99)
AE_EPS = 1e-15  # tiny eps so rarely hit grid entries still move quickly (Instant-NGP)
DISC_EPS = 1e-8


def build_optimizers(
    autoencoder: nn.Module, discriminator: nn.Module | None, lr: float = 2e-3
) -> tuple[torch.optim.Adam, torch.optim.Adam | None]:
    """Adam(lr, betas (0, 0.99)) with eps 1e-15 for encoder, decoder and grids, 1e-8 for D."""
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    ae = torch.optim.Adam(autoencoder.parameters(), lr=lr, betas=AE_BETAS, eps=AE_EPS)
    if discriminator is None:
        return ae, None
    disc = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=AE_BETAS, eps=DISC_EPS)
    return ae, disc
