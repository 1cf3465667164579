"""CPU backend: the reference's exact cells, evaluated with fused ATen ops.

The reference (``reference.py``) builds one autograd graph per level; here every level of
a chunk of points is handled at once, and autograd is replaced by a hand-written backward:

- forward: corner rows (int32) and weights of all levels, corner last (the reference's
  arithmetic: the same ``x * (r - 1)``, ``floor`` and weight products, so the same cells),
  then ONE ``embedding_bag`` (a fused gather + weighted sum) per chunk. When a gradient is
  needed the rows, weights and factors are kept for the backward (about 11 bytes per
  corner read) instead of being recomputed;
- dL/dparams: the scatter of ``w(c) * dL/dy`` with ``index_add_``, one feature at a time
  and chunk after chunk (serial sums in a fixed order: the result is reproducible run to
  run);
- dL/dx: per axis k, one more ``embedding_bag`` with the weights' derivative ``dw(c)/ds_k``
  gives ``sum_c (dw(c)/ds_k) params[c]``, dotted with dL/dy; then SPEC §1.2 step 6's mask.

ATen runs ``embedding_bag`` and ``index_add_`` on one thread; it releases the GIL inside
them, so the backward's scatters and bags run side by side on ``torch.get_num_threads()``
Python threads, after the elementwise work of a wave of chunks.

Elementwise arrays are level-major, ``(..., L, n, G)``, so that they run over long
contiguous rows, and points go in chunks of ``CHUNK_CONTRIBUTIONS`` corner reads, which
bounds the temporaries (the largest, the table gradient's F x reads floats, stays under
glibc's 32 MiB mmap threshold: above it every call pays fresh page faults).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .levels import META_MASK, META_OFFSET, META_STRIDES, META_USE_HASH, GridConfig, level_table
from .reference import compute_dtype, sanitize

# Corner contributions (points x groups x levels x corners) handled per chunk.
CHUNK_CONTRIBUTIONS = 2**20
# Chunks whose serial backward ops run together (bounds the backward's temporaries).
WAVE_CHUNKS = 4
UINT32 = 0xFFFFFFFF


@dataclass(frozen=True)
class Geometry:
    """Per-level constants of one grid on one device, shaped to broadcast against the
    level-major layout ``(..., L, n, G)`` used below."""

    scale: torch.Tensor  # r - 1, compute dtype, (L, 1, 1)
    top: torch.Tensor  # r - 2, compute dtype, (L, 1, 1)
    strides: torch.Tensor  # int64 (d, L, 1, 1): r**k mod 2**32, or the hash primes
    corner_offsets: torch.Tensor  # int64 (L, 1, 1, C): sum_k b_k strides_k
    mask: torch.Tensor  # int64 (L, 1, 1, 1): T - 1 on wrapped levels, 2**32 - 1 elsewhere
    row_offset: torch.Tensor  # int64 (L, 1, G, 1): g * n_entries + offsets[l]
    hashed: tuple[int, ...]  # levels whose corners are XOR-combined
    smoothstep: bool
    sign: torch.Tensor  # (-1, +1), compute dtype, (2, 1, 1, 1): dw/ds of a factor pair


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
        corner_offsets=(bits @ strides.T).T[:, None, None, :].contiguous(),
        mask=table[:, META_MASK, None, None, None],
        row_offset=(table[:, META_OFFSET, None] + group)[:, None, :, None],
        hashed=tuple(torch.nonzero(table[:, META_USE_HASH]).flatten().tolist()),
        smoothstep=config.interpolation == "smoothstep",
        sign=torch.tensor([-1.0, 1.0], dtype=dtype, device=device).view(2, 1, 1, 1),
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


def _rows(i: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """Flat rows of ``params.view(-1, F)`` read by every corner, corner last: (L, n, G, C)."""
    base = (i * geo.strides).sum(0)  # sum_k i_k stride_k, (L, n, G)
    rows = base[..., None] + geo.corner_offsets  # dense index of every corner
    rows &= geo.mask  # mod T on wrapped levels; a no-op elsewhere (indices < 2**32)
    rows += geo.row_offset
    for level in geo.hashed:  # XOR over the axes of (c_k * pi_k) mod 2**32
        vertex = torch.stack((i[:, level], i[:, level] + 1), dim=1)  # (d, 2, n, G)
        terms = (vertex * geo.strides[:, level, None]) & UINT32
        hashed = _corner_products(list(terms), torch.bitwise_xor) & geo.mask[level]
        rows[level] = hashed.permute(1, 2, 0) + geo.row_offset[level]
    return rows


def _corners_last(t: torch.Tensor) -> torch.Tensor:
    """(C, ...) -> (M, C) with M the rest flattened, as ``embedding_bag`` reads bags.

    ``torch.stack`` on the last axis is several times faster than a transposing copy.
    """
    return torch.stack(list(t.flatten(1)), dim=-1)


@dataclass
class _Chunk:
    """What the backward needs of one chunk of points, kept from the forward."""

    start: int
    stop: int
    rows: torch.Tensor  # (M, C), M = L * n * G
    weights: torch.Tensor  # (M, C)
    factors: torch.Tensor  # (d, 2, L, n, G): (1 - s, s) per axis
    ds: torch.Tensor | None  # (d, L, n, G): ds/df (smoothstep) or None (linear)


def _axis_weights(factors: torch.Tensor, sign: torch.Tensor) -> list[torch.Tensor]:
    """``dw(c)/ds_k`` for every axis k, corner last (M, C): the corner products with axis
    k's pair replaced by ``sign`` = (-1, +1)."""
    d, n_corners = len(factors), 2 ** len(factors)
    pairs = list(factors)
    return [
        _corners_last(
            _corner_products([*pairs[:k], sign, *pairs[k + 1 :]]).expand(
                n_corners, *factors.shape[2:]
            )
        )
        for k in range(d)
    ]


_POOL: tuple[int, int, ThreadPoolExecutor] | None = None


def _pool() -> ThreadPoolExecutor:
    """``torch.get_num_threads()`` threads for serial ATen ops, made anew when that number
    changes or in a forked child (where the parent's threads do not exist)."""
    global _POOL
    key = (os.getpid(), torch.get_num_threads())
    if _POOL is None or _POOL[:2] != key:
        if _POOL is not None and _POOL[0] == key[0]:
            _POOL[2].shutdown(wait=False)
        _POOL = (*key, ThreadPoolExecutor(key[1], "gridcodes-cpu"))
    return _POOL[2]


def _in_threads(tasks: list) -> list:
    """Run ``tasks`` (callables) on ``torch.get_num_threads()`` threads; their results.

    For the ops ATen runs on one thread (``embedding_bag``, ``index_add_``): it releases the
    GIL inside them, so independent ones run side by side. Longest first is the caller's
    job (``map`` hands tasks out in order).
    """
    if torch.get_num_threads() <= 1 or len(tasks) <= 1:
        return [task() for task in tasks]
    return list(_pool().map(lambda task: task(), tasks))


def _scatter_feature(column: torch.Tensor, pieces: list):
    """``column[rows] += src`` for every (rows, src) in order: one feature's table gradient,
    a serial sum in a fixed order (reproducible run to run)."""

    def run():
        for rows, src in pieces:
            column.index_add_(0, rows, src)

    return run


def _bag(rows: torch.Tensor, table: torch.Tensor, weights: torch.Tensor):
    return lambda: F.embedding_bag(rows, table, per_sample_weights=weights, mode="sum")


def _waves(chunks: list, size: int) -> list:
    return [chunks[i : i + size] for i in range(0, len(chunks), size)]


class _GridEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, params, geo: Geometry):
        dtype = compute_dtype(params)
        n, groups, d = x.shape
        n_features = params.shape[-1]
        n_levels = geo.scale.shape[0]
        table = params.to(dtype).reshape(-1, n_features)
        out = torch.empty(n, groups, n_levels, n_features, dtype=dtype, device=x.device)
        keep = any(ctx.needs_input_grad[:2])
        chunks = []
        for start, stop in _chunks(n, groups * n_levels * 2**d):
            i, factors, ds = _cells(_coords(x[start:stop], dtype), geo)
            rows = _rows(i, geo).flatten(0, -2).to(torch.int32)  # halves the bags' reads
            w = _corners_last(_corner_products(list(factors)))
            bags = F.embedding_bag(rows, table, per_sample_weights=w, mode="sum")
            out[start:stop] = bags.view(n_levels, stop - start, groups, n_features).permute(
                1, 2, 0, 3
            )
            if keep:
                chunks.append(_Chunk(start, stop, rows, w, factors, ds))
        ctx.save_for_backward(x, params)
        ctx.geo, ctx.chunks = geo, chunks
        return out.view(n, groups, n_levels * n_features).to(params.dtype)

    @staticmethod
    @once_differentiable  # double backward raises instead of returning wrong values
    def backward(ctx, dy):
        x, params = ctx.saved_tensors
        geo, chunks = ctx.geo, ctx.chunks
        need_dx, need_dparams = ctx.needs_input_grad[:2]
        dtype = compute_dtype(params)
        n, groups, d = x.shape
        n_features = params.shape[-1]
        table = params.to(dtype).reshape(-1, n_features)
        dtable = (
            torch.zeros(n_features, len(table), dtype=dtype, device=table.device)
            if need_dparams
            else None
        )
        dx = torch.zeros(d, n, groups, dtype=dtype, device=x.device) if need_dx else None
        dy = dy.view(n, groups, geo.scale.shape[0], n_features)
        # The table gradient is a serial scatter (index_add_); with more than one thread it
        # runs on a second thread (ATen releases the GIL) while this one computes dL/dx.
        # One thread, in submission order: the sums stay reproducible.
        # Per wave of chunks: the elementwise work here (ATen's threads), then the serial
        # ops -- one table-gradient scatter per feature, one bag per chunk and axis for
        # dL/ds_k = <dL/dy, sum_c (dw(c)/ds_k) params[c]> -- side by side on threads.
        for wave in _waves(chunks, WAVE_CHUNKS):
            dy_wave = [dy[c.start : c.stop].to(dtype) for c in wave]
            tasks = []
            if need_dparams:  # dL/dparams[j, rows] += w * dL/dy_j
                pieces = []
                for chunk, dy_chunk in zip(wave, dy_wave):
                    g = dy_chunk.permute(3, 2, 0, 1).reshape(n_features, -1, 1)  # (F, M, 1)
                    pieces.append((chunk.rows.flatten(), (chunk.weights[None] * g).flatten(1)))
                tasks += [
                    _scatter_feature(dtable[j], [(rows, src[j]) for rows, src in pieces])
                    for j in range(n_features)
                ]
            if need_dx:
                tasks += [
                    _bag(chunk.rows, table, w)
                    for chunk in wave
                    for w in _axis_weights(chunk.factors, geo.sign)
                ]
            bags = iter(_in_threads(tasks)[n_features if need_dparams else 0 :])
            if not need_dx:
                continue
            for chunk, dy_chunk in zip(wave, dy_wave):
                g = dy_chunk.permute(2, 0, 1, 3).reshape(-1, n_features)  # (M, F)
                dsk = torch.stack([torch.linalg.vecdot(next(bags), g) for _ in range(d)])
                dsk = dsk.view(d, *chunk.factors.shape[2:])  # (d, L, n, G)
                if chunk.ds is not None:
                    dsk *= chunk.ds
                dx[:, chunk.start : chunk.stop] = (dsk * geo.scale).sum(1)
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
