"""CPU backend: the reference's exact cells, evaluated with fused ATen ops.

The reference (``reference.py``) builds one autograd graph per level; here every level of
a chunk of points is handled at once, and autograd is replaced by a hand-written backward:

- forward: corner rows and weights of all levels (the reference's arithmetic: the same
  ``x * (r - 1)``, ``floor`` and weight products, so the same cells), then ONE
  ``embedding_bag`` (a fused, multi-threaded gather + weighted sum) per chunk;
- dL/dparams: the scatter of ``w(c) * dL/dy`` with ``index_add_``, one feature at a time
  (a serial sum: the result is reproducible run to run);
- dL/dx: per axis k, one more ``embedding_bag`` with the weights' derivative ``dw(c)/ds_k``
  gives ``sum_c (dw(c)/ds_k) params[c]``, dotted with dL/dy; then SPEC §1.2 step 6's mask.

Arrays are level-major, ``(..., L, n, G)``, so that every elementwise op runs over long
contiguous rows (ATen's broadcasting over short inner axes is several times slower), and
points go in chunks of ``CHUNK_CONTRIBUTIONS`` corner reads, which bounds the temporaries
(about 60 bytes per read) while keeping the per-op overhead small.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .levels import META_MASK, META_OFFSET, META_STRIDES, META_USE_HASH, GridConfig, level_table
from .reference import compute_dtype, sanitize

# Corner contributions (points x groups x levels x corners) handled per chunk.
CHUNK_CONTRIBUTIONS = 2**21
UINT32 = 0xFFFFFFFF


@dataclass(frozen=True)
class Geometry:
    """Per-level constants of one grid on one device, shaped to broadcast against the
    level-major layout ``(..., L, n, G)`` used below."""

    scale: torch.Tensor  # r - 1, compute dtype, (L, 1, 1)
    top: torch.Tensor  # r - 2, compute dtype, (L, 1, 1)
    strides: torch.Tensor  # int64 (d, L, 1, 1): r**k mod 2**32, or the hash primes
    corner_offsets: torch.Tensor  # int64 (C, L, 1, 1): sum_k b_k strides_k
    mask: torch.Tensor  # int64 (L, 1, 1)
    row_offset: torch.Tensor  # int64 (L, 1, G): g * n_entries + offsets[l]
    wrapped: tuple[int, ...]  # levels whose dense index is reduced mod T (tiled)
    hashed: tuple[int, ...]  # levels whose corners are XOR-combined
    smoothstep: bool


def geometry(config: GridConfig, device, dtype: torch.dtype) -> Geometry:
    """The constants of ``config`` for lookups computed in ``dtype`` on ``device``."""
    table = level_table(config, device)
    r = table[:, 0].to(dtype)[:, None, None]
    d = config.in_dim
    strides = table[:, META_STRIDES : META_STRIDES + d]
    bits = (torch.arange(2**d, device=device)[:, None] >> torch.arange(d, device=device)) & 1
    group = torch.arange(config.n_groups, device=device) * config.n_entries
    return Geometry(
        scale=r - 1,
        top=r - 2,
        strides=strides.T[:, :, None, None].contiguous(),
        corner_offsets=(bits @ strides.T)[:, :, None, None].contiguous(),
        mask=table[:, META_MASK, None, None],
        row_offset=(table[:, META_OFFSET, None] + group)[:, None, :],
        wrapped=tuple(
            level
            for level in range(config.n_levels)
            if config.is_wrapped(level) and config.grid_type != "hash"
        ),
        hashed=tuple(torch.nonzero(table[:, META_USE_HASH]).flatten().tolist()),
        smoothstep=config.interpolation == "smoothstep",
    )


def _cells(coords: torch.Tensor, geo: Geometry):
    """Cell origins, factor pairs and ``ds/df`` of every level, level-major.

    ``coords`` (d, n, G) are sanitized. Returns ``i`` int64 (d, L, n, G), ``factors``
    (d, 2, L, n, G) holding ``(1 - s, s)``, and ``ds`` (d, L, n, G) or None (linear).
    """
    p = coords[:, None] * geo.scale  # SPEC §1.2 step 2, the reference's arithmetic
    i = torch.minimum(torch.floor(p), geo.top)
    f = p - i
    if geo.smoothstep:
        s = f * f * (3.0 - 2.0 * f)
        ds = 6.0 * f * (1.0 - f)
    else:
        s, ds = f, None
    return i.long(), torch.stack((1.0 - s, s), dim=1), ds


def _corner_products(pairs, combine=torch.mul) -> torch.Tensor:
    """``out[c] = combine_k pairs[k][b_k(c)]`` for the 2**d corners: (C, ...) from d pairs (2, ...).

    Folded in axis order k = 0, 1, ..., so products round as the reference's ``prod``.
    """
    out = pairs[0]
    for pair in pairs[1:]:
        out = combine(pair[:, None], out[None]).flatten(0, 1)
    return out


def _base_rows(i: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """``sum_k i_k stride_k`` of every level: int64 (L, n, G)."""
    return (i * geo.strides).sum(0)


def _rows(i: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """Flat rows of ``params.view(-1, F)`` read by every corner: int64 (C, L, n, G)."""
    rows = (_base_rows(i, geo) + geo.row_offset) + geo.corner_offsets
    for level in geo.wrapped:  # (dense index) mod T, with the level's own row offset
        offset = geo.row_offset[level]
        rows[:, level] = ((rows[:, level] - offset) & geo.mask[level]) + offset
    for level in geo.hashed:  # XOR over the axes of (c_k * pi_k) mod 2**32
        vertex = torch.stack((i[:, level], i[:, level] + 1), dim=1)  # (d, 2, n, G)
        terms = (vertex * geo.strides[:, level, None]) & UINT32
        hashed = _corner_products(list(terms), torch.bitwise_xor) & geo.mask[level]
        rows[:, level] = hashed + geo.row_offset[level]
    return rows


def _corners_last(t: torch.Tensor) -> torch.Tensor:
    """(C, ...) -> (M, C) with M the rest flattened, as ``embedding_bag`` reads bags.

    ``torch.stack`` on the last axis is several times faster than a transposing copy.
    """
    return torch.stack(list(t.flatten(1)), dim=-1)


def _coordinate_gradient(rows, factors, ds, dy, table, geo: Geometry) -> torch.Tensor:
    """dL/dx (d, n, G) of one chunk, before SPEC §1.2 step 6's mask.

    ``dL/ds_k = <dL/dy, sum_c (dw(c)/ds_k) params[c]>``: one weighted bag per axis, whose
    weights are the corner products with axis k's pair replaced by (-1, +1).
    """
    d, n_corners, n_features = len(factors), 2 ** len(factors), table.shape[-1]
    g = dy.permute(2, 0, 1, 3).to(table.dtype).reshape(-1, n_features)  # (L, n, G) x F
    sign = torch.tensor([-1.0, 1.0], dtype=table.dtype, device=table.device)
    sign = sign.view(2, *[1] * (factors.dim() - 2))
    pairs = list(factors)
    dsk = torch.empty(d, *factors.shape[2:], dtype=table.dtype, device=table.device)
    for k in range(d):
        dw_ds = _corner_products([*pairs[:k], sign, *pairs[k + 1 :]])
        dw_ds = _corners_last(dw_ds.expand(n_corners, *factors.shape[2:]))
        bag = F.embedding_bag(rows, table, per_sample_weights=dw_ds, mode="sum")
        torch.sum(bag * g, dim=-1, out=dsk[k].view(-1))
    if ds is not None:
        dsk *= ds
    return (dsk * geo.scale).sum(1)


def _scatter_features(dtable, rows, w, g) -> None:
    """``dtable[j, rows] += w * g[j]`` for every feature j (serial sums: reproducible)."""
    rows = rows.flatten()
    for j in range(len(g)):
        dtable[j].index_add_(0, rows, (w * g[j]).flatten())


class _GridEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, params, geo: Geometry):
        dtype = compute_dtype(params)
        n, groups, d = x.shape
        n_features = params.shape[-1]
        n_levels = geo.scale.shape[0]
        table = params.to(dtype).reshape(-1, n_features)
        out = torch.empty(n, groups, n_levels, n_features, dtype=dtype, device=x.device)
        for start, stop in _chunks(n, groups * n_levels * 2**d):
            i, factors, _ = _cells(_coords(x[start:stop], dtype), geo)
            rows = _corners_last(_rows(i, geo))
            w = _corners_last(_corner_products(list(factors)))
            bags = F.embedding_bag(rows, table, per_sample_weights=w, mode="sum")
            out[start:stop] = bags.view(n_levels, stop - start, groups, n_features).permute(
                1, 2, 0, 3
            )
        ctx.save_for_backward(x, params)
        ctx.geo = geo
        return out.view(n, groups, n_levels * n_features).to(params.dtype)

    @staticmethod
    @once_differentiable  # double backward raises instead of returning wrong values
    def backward(ctx, dy):
        x, params = ctx.saved_tensors
        geo = ctx.geo
        need_dx, need_dparams = ctx.needs_input_grad[:2]
        dtype = compute_dtype(params)
        n, groups, d = x.shape
        n_features = params.shape[-1]
        n_levels = geo.scale.shape[0]
        table = params.to(dtype).reshape(-1, n_features)
        dtable = (
            torch.zeros(n_features, len(table), dtype=dtype, device=table.device)
            if need_dparams
            else None
        )
        dx = torch.zeros(d, n, groups, dtype=dtype, device=x.device) if need_dx else None
        dy = dy.view(n, groups, n_levels, n_features)
        for start, stop in _chunks(n, groups * n_levels * 2**d):
            i, factors, ds = _cells(_coords(x[start:stop], dtype), geo)
            rows = _rows(i, geo)
            if need_dparams:
                g = dy[start:stop].permute(3, 2, 0, 1).to(dtype).contiguous()  # (F, L, n, G)
                _scatter_features(dtable, rows, _corner_products(list(factors)), g)
            if need_dx:
                dx[:, start:stop] = _coordinate_gradient(
                    _corners_last(rows), factors, ds, dy[start:stop], table, geo
                )
        if need_dx:
            inside = (x >= 0) & (x <= 1)
            dx = torch.where(inside, dx.permute(1, 2, 0), 0.0).to(x.dtype)
        if need_dparams:
            dtable = dtable.T.reshape(params.shape).to(params.dtype)
        return dx, dtable, None


def _coords(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Sanitized coordinates in the computation dtype, axis first: (d, n, G)."""
    return sanitize(x.to(dtype)).permute(2, 0, 1).contiguous()


def _chunks(n: int, contributions_per_point: int):
    step = max(1, CHUNK_CONTRIBUTIONS // contributions_per_point)
    for start in range(0, n, step):
        yield start, min(n, start + step)


@torch.compiler.disable  # a graph break: chunk loops and embedding_bag stay eager
def grid_encode_cpu(x: torch.Tensor, params: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """Lookup of ``x`` (N, G, d) in ``params`` (G, n_entries, F): (N, G, L * F), params' dtype."""
    return _GridEncode.apply(x, params, geo)
