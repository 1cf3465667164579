"""Feature retrieval of BRICS (Sec. 3.2, eq. 1-4, App. A.1, App. B).

key code z (B, Cz, Hz, Wz) in [0, 1]
  -> relaxed precision        z + eps, eps ~ N(0, (1 / (4 r_max))^2), clipped (training; the
                              authors' placement, one draw per code cell)
  -> interleaved tiling       z_hat (B, Cz, Hd, Wd), each code cell copied to a block
     (the text's placement adds eps to z_hat instead, one draw per tiled cell)
  -> combined key code        q^s_{i,j} = [z_hat^s_{i,j}; (i + 0.5) / Hd; (j + 0.5) / Wd]
  -> F_inp(F_r(q))            one grouped MultiResGrid lookup for all Nh groups
  -> F_mlp                    per-group MLP, Nr*Cv -> 64 -> 64 -> Cd / Nh
  -> feature block f          (B, Cd, Hd, Wd), groups concatenated along channels
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from gridcodes import MultiResGrid

from .config import BRICSConfig


def tile(key_code: torch.Tensor, tile_size: int) -> torch.Tensor:
    """Interleaved tiling: (B, C, Hz, Wz) -> (B, C, Hd, Wd), each cell repeated Hd/Hz times."""
    factor = tile_size // key_code.shape[-1]
    return key_code.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def relax_precision(key_code: torch.Tensor, std: float) -> torch.Tensor:
    """Relaxed data precision: add N(0, std^2) per element (code or tiled cell, channel), clip
    to [0, 1]."""
    return (key_code + std * torch.randn_like(key_code)).clamp(0.0, 1.0)


def combined_key_code(tiled: torch.Tensor, key_length: int) -> torch.Tensor:
    """Eq. 1 without noise: (B, Nh*Ckey, Hd, Wd) -> (B, Hd, Wd, Nh, Ckey + 2) grid queries.

    The slice s of cell (i, j) is followed by its normalized coordinates
    x = (i + 0.5) / Hd (row) and y = (j + 0.5) / Wd (column).
    """
    b, channels, height, width = tiled.shape
    slices = tiled.permute(0, 2, 3, 1).reshape(b, height, width, channels // key_length, key_length)
    rows = (torch.arange(height, device=tiled.device, dtype=tiled.dtype) + 0.5) / height
    cols = (torch.arange(width, device=tiled.device, dtype=tiled.dtype) + 0.5) / width
    coords = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1)  # (Hd, Wd, 2)
    coords = coords[None, :, :, None, :].expand(b, height, width, slices.shape[3], 2)
    return torch.cat([slices, coords], dim=-1)


class GroupedMLP(nn.Module):
    """F_mlp: an independent ReLU MLP per group, applied to (..., Nh, in) -> (..., Nh, out)."""

    def __init__(self, n_groups: int, sizes: tuple[int, ...]) -> None:
        super().__init__()
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in itertools.pairwise(sizes):
            bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default initialisation, per group
            self.weights.append(
                nn.Parameter(torch.empty(n_groups, fan_in, fan_out).uniform_(-bound, bound))
            )
            self.biases.append(nn.Parameter(torch.empty(n_groups, fan_out).uniform_(-bound, bound)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead, groups = x.shape[:-2], x.shape[-2]
        return self.grouped(x).transpose(0, 1).reshape(*lead, groups, -1)

    def grouped(self, x: torch.Tensor) -> torch.Tensor:
        """(..., Nh, in) -> (Nh, N, out), N the product of the leading sizes: one batched
        matrix product per layer over the groups (a transposed view in, no copy)."""
        x = x.reshape(-1, *x.shape[-2:]).transpose(0, 1)
        for layer, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            x = torch.bmm(x, weight) + bias.unsqueeze(1)
            if layer < len(self.weights) - 1:
                x = F.relu(x)
        return x


class FeatureRetrieval(nn.Module):
    """Key code (B, Cz, Hz, Wz) in [0, 1] -> feature block f (B, Cd, Hd, Wd)."""

    def __init__(self, config: BRICSConfig, grid_backend: str = "auto") -> None:
        super().__init__()
        self.config = config
        self.grids = MultiResGrid(
            in_dim=config.key_length + 2,
            n_groups=config.n_groups,
            n_levels=config.n_levels,
            n_features=config.n_features,
            log2_table_size=config.log2_table_size,
            resolutions=config.grid_resolutions,
            grid_type=config.grid_type,
            backend=grid_backend,
        )
        hidden = config.mlp_hidden
        out = config.decoder_channels // config.n_groups
        self.mlp = GroupedMLP(config.n_groups, (self.grids.out_features, hidden, hidden, out))
        self.relaxed_precision = config.key_regularization == "relaxed"

    def queries(self, key_code: torch.Tensor) -> torch.Tensor:
        """Tiling, relaxed precision (training only) and coordinates: (B, Hd, Wd, Nh, d)."""
        c = self.config
        noisy = self.training and self.relaxed_precision
        if noisy and c.noise_placement == "code":
            key_code = relax_precision(key_code, c.relaxed_precision_std)
        tiled = tile(key_code, c.tile_size)
        if noisy and c.noise_placement == "tiled":
            tiled = relax_precision(tiled, c.relaxed_precision_std)
        return combined_key_code(tiled, c.key_length)

    def forward(self, key_code: torch.Tensor) -> torch.Tensor:
        values = self.grids(self.queries(key_code))  # (B, Hd, Wd, Nh, Nr * Cv)
        b, height, width, groups = values.shape[:4]
        features = self.mlp.grouped(values).view(groups, b, height, width, -1)
        # (B, Nh, Cd / Nh, Hd, Wd): the groups concatenated along channels, one copy
        return features.permute(1, 0, 4, 2, 3).reshape(b, -1, height, width)
