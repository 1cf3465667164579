"""How much of a grid a batch uses: per-entry hit counts and usage rate (paper Fig. 3b, App. E).

An entry is *hit* by a lookup when it is one of the 2**d corners of the cell that
encloses the point (the set the paper's retrieval function F_r returns), whatever
its interpolation weight.
"""

from __future__ import annotations

import torch

from .levels import GridConfig
from .reference import corner_rows

# Points per chunk times lookups per point stays near this, to bound memory.
_CHUNK_LOOKUPS = 2**22


@torch.no_grad()
def hit_counts(
    x: torch.Tensor,
    config: GridConfig,
    counts: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Add the hits of points ``x`` (N, n_groups, in_dim) to ``counts`` (n_groups, n_entries).

    Returns ``counts`` (a new int64 zero tensor on x's device when None), so statistics
    can be accumulated over many batches. ``dtype`` is the lookup's computation dtype.
    """
    if counts is None:
        counts = torch.zeros(config.n_groups, config.n_entries, dtype=torch.int64, device=x.device)
    lookups_per_point = config.n_groups * config.n_levels * config.n_corners
    chunk = max(1, _CHUNK_LOOKUPS // lookups_per_point)
    for start in range(0, x.shape[0], chunk):
        rows = corner_rows(x[start : start + chunk], config, dtype)  # (n, G, L, C)
        rows = rows.transpose(0, 1).reshape(config.n_groups, -1)
        counts.scatter_add_(1, rows, torch.ones_like(rows))
    return counts


def usage_rate(counts: torch.Tensor, config: GridConfig) -> torch.Tensor:
    """Fraction of each level's entries hit at least once.

    Returns ``(n_groups, n_levels)`` float32 in [0, 1].
    """
    used = (counts > 0).float()
    rates = [
        used[:, config.offsets[level] : config.offsets[level + 1]].mean(dim=1)
        for level in range(config.n_levels)
    ]
    return torch.stack(rates, dim=1)
