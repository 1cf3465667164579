"""CPU backend: the reference's exact cells, evaluated with fused ATen ops.

The reference (``reference.py``) builds one autograd graph per level; here every level of
a chunk of points is handled at once, and autograd is replaced by a hand-written backward:

- forward: corner rows (int32) and weights of all levels, corner last (the reference's
  arithmetic: the same ``x * (r - 1)``, ``floor`` and weight products, so the same cells),
  then ONE ``embedding_bag`` (a fused gather + weighted sum, parallel in ATen) per chunk.
  When a gradient is needed the rows, weights and factor pairs are kept for the backward
  instead of being recomputed;
- dL/dparams: the scatter of ``w(c) * dL/dy`` with ``index_add_``, two features at a time
  as the real and imaginary parts of complex numbers (one complex addition in the time of
  one real one, bit for bit the same sums), chunk after chunk: serial sums in a fixed
  order, so the result is reproducible run to run;
- dL/dx: per axis k, one more ``embedding_bag`` gives the slope
  ``sum_c (dw(c)/ds_k) params[c]``, dotted with dL/dy; then docs/grids.md §2 step 6's mask. On
  dense and tiled levels the bag reads the differences ``params[c + e_k] - params[c]``
  (a table of differences made once per backward) at the corners with b_k = 0, half the rows; hashed
  levels weigh all corners with ``dw(c)/ds_k`` (``±`` the other axes' factors).

ATen runs ``index_add_`` on one thread and releases the GIL inside it, so the backward's
scatters run on worker threads while the calling thread computes the dL/dx bags; only
serial ops go to the workers (see ``cpu_runtime.in_background``).

Elementwise arrays are level-major, ``(L, n, G, ...)``, so that they run over long
contiguous rows; corner-last arrays are written one corner's column at a time (a
broadcast whose innermost axis is the corner is several times slower). Points go in
chunks of ``CHUNK_CONTRIBUTIONS`` corner reads: larger chunks pay the per-op overheads
fewer times, smaller ones bound the temporaries. The large buffers are recycled through
``BUFFERS`` instead of being freed to the system and page-faulted in again next call.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache, partial
from itertools import groupby

import torch
import torch.nn.functional as F

from .cpu_runtime import BUFFERS, in_background
from .levels import META_MASK, META_OFFSET, META_SIZE, META_STRIDES, GridConfig, level_table
from .reference import compute_dtype, sanitize

# Corner contributions (points x groups x levels x corners) handled per chunk: larger chunks
# pay the per-op overheads fewer times, smaller ones bound the temporaries (the measured
# trade-off: bench/results/cpu_notes.md).
CHUNK_CONTRIBUTIONS = 2**23
UINT32 = 0xFFFFFFFF
# How a run of levels computes its rows: sum_k i_k base**k (dense: never reaches the level's
# size; tiled: mod T by the mask; modulo: mod a size that need not be a power of two, as
# tcnn's levels), or the XOR of i_k pi_k mod T (hash).
DENSE, TILED, MODULO, HASHED = "dense", "tiled", "modulo", "hash"


@dataclass(frozen=True)
class Geometry:
    """Per-level constants of one grid on one device, shaped to broadcast against the
    level-major layout ``(L, n, G, ...)`` used below."""

    scale: torch.Tensor  # position scale (r - 1 for gridcodes), compute dtype, (L, 1, 1)
    shift: torch.Tensor  # position shift (0 or 0.5), float64, (L, 1, 1)
    top: torch.Tensor | None  # r - 2 (the clamp of the cell origin), or None (no clamp)
    strides: torch.Tensor  # int64 (d, L, 1, 1): base**k mod 2**32, or the hash primes
    mask: torch.Tensor  # int32 (L, 1, 1): size - 1 where it reduces, -1 (all bits) elsewhere
    sizes: torch.Tensor  # int32 (L, 1, 1): entries of each level
    corner_offsets: torch.Tensor  # int32 (L, 1, 1, C): (sum_k b_k strides_k) & mask
    row_offset: torch.Tensor  # int32 (L, 1, G, 1): g * n_entries + offsets[l]
    runs: tuple[tuple[str, int, int], ...]  # (kind, start, stop): maximal runs of levels
    # (offset, size, shifts) of every dense or tiled level: its rows in a group's table, and
    # per axis k the rows between a corner with b_k = 0 and its neighbour with b_k = 1
    # (r**k mod size: the neighbour is ``offset + (row - offset + shift) % size``).
    segments: tuple[tuple[int, int, tuple[int, ...]], ...]
    smoothstep: bool
    fused: bool  # x * scale + shift rounded once (tcnn, torch-ngp), see reference.fused_position
    hash_sizes: tuple[int | None, ...]  # per level: the size a hash is reduced by, if no mask


def geometry(config: GridConfig, device, dtype: torch.dtype) -> Geometry:
    """The constants of ``config`` for lookups computed in ``dtype`` on ``device``."""
    meta = level_table(config, device)  # the int64 level table
    d = config.in_dim
    scale = torch.tensor([lv.scale for lv in config.levels], dtype=dtype, device=device)
    strides = meta[:, META_STRIDES : META_STRIDES + d]
    mask = meta[:, META_MASK]
    bits = (torch.arange(2**d, device=device)[:, None] >> torch.arange(d, device=device)) & 1
    offsets = ((strides @ bits.T) & mask[:, None]).to(torch.int32)  # (L, C), < 2**32 / size
    group = torch.arange(config.n_groups, device=device) * config.n_entries
    kinds = []
    for level, lv in enumerate(config.levels):
        if lv.hashed:
            kinds.append(HASHED)
        elif config.level_mask(level) != UINT32:
            kinds.append(TILED)
        elif lv.dense_bound(d) < lv.size:
            kinds.append(DENSE)
        else:
            kinds.append(MODULO)
    runs, start = [], 0
    for kind, levels in groupby(kinds):
        stop = start + len(list(levels))
        runs.append((kind, start, stop))
        start = stop
    fused = config.convention != "gridcodes"
    return Geometry(
        scale=scale[:, None, None],
        shift=torch.tensor([lv.shift for lv in config.levels], dtype=torch.float64)[:, None, None],
        top=None if fused else (scale - 1)[:, None, None],
        strides=strides.T[:, :, None, None].contiguous(),
        mask=torch.where(mask == UINT32, -1, mask).to(torch.int32)[:, None, None],
        sizes=meta[:, META_SIZE].to(torch.int32)[:, None, None],
        corner_offsets=offsets[:, None, None, :].contiguous(),
        row_offset=(meta[:, META_OFFSET, None] + group)[:, None, :, None].to(torch.int32),
        runs=tuple(runs),
        segments=tuple(
            (offset, size, tuple(int(k) % size for k in stride))
            for offset, size, stride, kind in zip(
                config.offsets, config.level_sizes, strides.tolist(), kinds
            )
            if kind != HASHED
        ),
        smoothstep=config.interpolation == "smoothstep",
        fused=fused,
        hash_sizes=tuple(
            lv.size if lv.hashed and config.level_mask(level) == UINT32 else None
            for level, lv in enumerate(config.levels)
        ),
    )


def _cells(coords: torch.Tensor, geo: Geometry):
    """Cell origins, factor pairs and ``ds/df`` of every level, level-major.

    ``coords`` (d, n, G) are sanitized. Returns ``i`` int64 (d, L, n, G), ``factors``
    (d, 2, L, n, G) holding ``(1 - s, s)``, and ``ds`` (d, L, n, G) or None (linear).
    """
    d = len(coords)
    i, f = _positions(coords, geo)
    if geo.smoothstep:
        s = f * f * (3.0 - 2.0 * f)
        ds = 6.0 * f * (1.0 - f)
    else:
        s, ds = f, None
    factors = torch.stack((1.0 - s, s), dim=1, out=BUFFERS.empty(d, 2, *s.shape[1:], dtype=s.dtype))
    return i.long(), factors, ds


def _positions(coords: torch.Tensor, geo: Geometry):
    """Cell origins (float) and fractions (d, L, n, G) of sanitized ``coords`` (d, n, G):
    docs/grids.md §2 step 2 with the reference's arithmetic (``reference.cell_position``)."""
    if geo.fused:  # x * scale + shift rounded once (reference.fused_position)
        if coords.dtype == torch.float32:
            p = (coords[:, None].double() * geo.scale.double() + geo.shift).float()
        else:
            p = coords[:, None] * geo.scale + geo.shift
        i = torch.floor(p)
    else:
        p = coords[:, None] * geo.scale
        i = torch.minimum(torch.floor(p), geo.top)
    return i, p - i


def _fold(pairs: list, combine=torch.mul) -> torch.Tensor:
    """``out[c] = combine_k pairs[k][b_k(c)]`` for the corners c of the given axes: (2**k, ...)
    from pairs (2, ...), corner first (long contiguous rows: corner-last products are
    several times slower).

    Folded in axis order k = 0, 1, ..., so products round as the reference's ``prod``.
    """
    out = pairs[0]
    for pair in pairs[1:]:
        out = combine(pair[:, None], out[None]).flatten(0, 1)
    return out


def _weights(factors: torch.Tensor) -> torch.Tensor:
    """Corner weights ``w(c) = prod_k factors[k, b_k(c)]``, corner last: (L, n, G, C)."""
    return _products(list(factors))


def _products(pairs: list) -> torch.Tensor:
    """``prod_k pairs[k][b_k(c)]`` for the corners c of the given axes, corner last:
    (..., 2**k) from pairs (2, ...).

    The products of all axes but the last are formed corner first (long contiguous rows);
    the last product writes each corner's column of the result directly.
    """
    n = len(pairs)
    out = BUFFERS.empty(*pairs[0].shape[1:], 2**n, dtype=pairs[0].dtype)
    low = _fold(pairs[:-1]) if n > 1 else torch.ones_like(pairs[0][:1])
    for c in range(2**n):
        torch.mul(pairs[-1][c >> (n - 1)], low[c & (2 ** (n - 1) - 1)], out=out[..., c])
    return out


def _rows(i: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """Rows of ``params.view(-1, F)`` read by every corner, int32, corner last: (L, n, G, C).

    Each corner's column is written directly (a broadcast add whose innermost axis is the
    corner is several times slower).
    """
    n_corners = geo.corner_offsets.shape[-1]
    rows = BUFFERS.empty(*i.shape[1:], n_corners, dtype=torch.int32)
    for kind, a, b in geo.runs:
        if kind == HASHED:  # XOR over the axes of (c_k * pi_k) mod 2**32, mod T
            for level in range(a, b):
                vertex = torch.stack((i[:, level], i[:, level] + 1), dim=1)  # (d, 2, n, G)
                terms = (vertex * geo.strides[:, level, None]) & UINT32
                hashed = _fold(list(terms), torch.bitwise_xor) & geo.mask[level]  # (C, n, G)
                if geo.hash_sizes[level] is not None:  # a size that is not a power of two
                    hashed = torch.remainder(hashed, geo.hash_sizes[level])
                rows[level] = hashed.permute(1, 2, 0) + geo.row_offset[level]
            continue
        base = (i[:, a:b] * geo.strides[:, a:b]).sum(0)  # sum_k i_k stride_k, (l, n, G)
        if kind == MODULO:  # D(c) < 2**32 (GridConfig checks it), mod the level's size
            sizes = geo.sizes[a:b, ..., None]
            corner = base[..., None] + geo.corner_offsets[a:b]
            rows[a:b] = torch.remainder(corner, sizes).to(torch.int32) + geo.row_offset[a:b]
            continue
        offsets, mask, row_offset = (
            geo.corner_offsets[a:b],
            geo.mask[a:b],
            geo.row_offset[a:b, ..., 0],
        )
        # Dense: base + offset < r**d, no reduction, and the group offset folds in; tiled:
        # mod T (which divides 2**32) before and after adding the corner's offset.
        dense = kind == DENSE
        base = base.to(torch.int32) + row_offset if dense else (base & mask).to(torch.int32)
        for c in range(n_corners):
            column = rows[a:b, ..., c]
            torch.add(base, offsets[..., c], out=column)
            if not dense:
                column &= mask
                column += row_offset
    return rows


@dataclass
class _Chunk:
    """What the backward needs of one chunk of points, kept from the forward."""

    start: int
    stop: int
    rows: torch.Tensor  # int32 (L, n, G, C)
    weights: torch.Tensor  # (L, n, G, C)
    factors: torch.Tensor  # (d, 2, L, n, G): (1 - s, s) per axis
    ds_df: torch.Tensor | None  # (d, L, n, G): ds/df (smoothstep) or None (linear)


def _axis_weights(factors: torch.Tensor) -> list[torch.Tensor]:
    """``dw(c)/ds_k`` for every axis k, corner last (M, C): ``±`` (b_k = 1 / 0) the product
    of the other axes' factors, so each product is formed once and only negated."""
    d, n_corners = len(factors), 2 ** len(factors)
    pairs, weights = list(factors), []
    for k in range(d):
        others = pairs[:k] + pairs[k + 1 :]
        if others:
            plus = _fold(others).flatten(1)
        else:  # in_dim 1: dw/ds = -1, +1
            plus = torch.ones(1, factors[0, 0].numel(), dtype=factors.dtype)
        low = (1 << k) - 1  # corner c without bit k: its low bits, then the rest shifted down
        out = BUFFERS.empty(plus.shape[1], n_corners, dtype=plus.dtype)
        for c in range(n_corners):
            column = plus[(c & low) | (c >> (k + 1) << k)]
            if c >> k & 1:
                out[:, c] = column
            else:
                torch.neg(column, out=out[:, c])
        weights.append(out)
    return weights


def _differences(entries: torch.Tensor, geo: Geometry) -> list[torch.Tensor]:
    """Per axis k, ``entries[neighbour across k] - entries[row]`` for the rows of dense and tiled
    levels (rows of hashed levels are left unset): (rows, F) each.

    On these levels the corner with b_k = 1 lies a fixed number of rows (``r**k``, modulo
    the level's size) after its neighbour with b_k = 0, so ``dw/ds_k`` weighs one
    difference per pair of corners: half the rows of a bag over all corners.
    """
    groups, d = geo.row_offset.shape[2], geo.strides.shape[0]
    t = entries.view(groups, -1, entries.shape[-1])
    out = []
    for k in range(d):
        diff = BUFFERS.empty(*entries.shape, dtype=entries.dtype)
        v = diff.view_as(t)
        for offset, size, shifts in geo.segments:
            s = shifts[k]
            seg, dst = t[:, offset : offset + size], v[:, offset : offset + size]
            torch.sub(seg[:, s:], seg[:, : size - s], out=dst[:, : size - s])
            # Tiled levels wrap around; on dense ones these last rows are never read.
            torch.sub(seg[:, :s], seg[:, size - s :], out=dst[:, size - s :])
        out.append(diff)
    return out


def _bags(rows: torch.Tensor, entries: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_j weights[b, j] * entries[rows[b, j]]`` for every bag b of ``rows`` (B, K): one
    ``embedding_bag`` (fbgemm's fused gather and weighted sum, parallel in ATen), with the
    bags' offsets made once per shape instead of every call."""
    n_bags, size = rows.shape
    offsets = _offsets(n_bags, size, rows.dtype)
    return F.embedding_bag(
        rows.reshape(-1), entries, offsets, per_sample_weights=weights.reshape(-1), mode="sum"
    )


@lru_cache(maxsize=8)
def _offsets(n_bags: int, size: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.arange(0, n_bags * size, size, dtype=dtype)


def _slopes(rows, factors, entries, diffs, hashed: bool) -> list[torch.Tensor]:
    """``sum_c (dw(c)/ds_k) params[c]`` of a run of levels, per axis k: (M, F) each.

    Hashed levels: one bag over all corners with the signed weights of
    :func:`_axis_weights`; dense and tiled ones: one bag over the corners with b_k = 0
    of the differences across axis k (:func:`_differences`), half the rows.
    """
    d, n_corners = len(factors), rows.shape[-1]
    if hashed:
        weights = _axis_weights(factors)
        out = [_bags(rows.reshape(-1, n_corners), entries, w) for w in weights]
        BUFFERS.give(weights)
        return out
    half, m, pairs = n_corners // 2, rows.numel() // n_corners, list(factors)
    out = []
    for k in range(d):
        others, low = pairs[:k] + pairs[k + 1 :], 2**k
        # The product of the other axes' factors: dw(c)/ds_k for b_k = 1, corner last.
        weights = (
            _products(others).view(m, half) if others else torch.ones(m, 1, dtype=factors.dtype)
        )
        # The corners with b_k = 0: runs of 2**k rows, copied as one element where 8 or 16
        # bytes (4-9x faster than row by row).
        near = BUFFERS.empty(m, half // low, low, dtype=rows.dtype)
        _copy_rows(near, rows.reshape(m, half // low, 2, low)[:, :, 0])
        out.append(_bags(near.view(m, half), diffs[k], weights))
        BUFFERS.give((weights, near))
    return out


def _dx(chunk: _Chunk, entries, diffs, dy: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """dL/dx of one chunk's points before docs/grids.md §2 step 6's mask: (d, n, G), from dL/dy
    level-major ``dy`` (L, n, G, F).

    ``dL/ds_k`` is the slope of each lookup along axis k (:func:`_slopes`) dotted with
    dL/dy; then ``ds/df`` (smoothstep) and ``r - 1``.
    """
    n_features, d = entries.shape[-1], len(chunk.factors)
    ones = torch.ones(n_features, dtype=entries.dtype)
    dl_ds = torch.empty(d, *chunk.factors.shape[2:], dtype=entries.dtype)  # (d, L, n, G)
    for kind, a, b in geo.runs:
        slopes = _slopes(chunk.rows[a:b], chunk.factors[:, :, a:b], entries, diffs, kind == HASHED)
        for k, slope in enumerate(slopes):  # the row dots as a matrix-vector product: ~3x
            torch.mv(slope.mul_(dy[a:b].view(-1, n_features)), ones, out=dl_ds[k, a:b].view(-1))
    if chunk.ds_df is not None:
        dl_ds *= chunk.ds_df
    return (dl_ds * geo.scale).sum(1)


COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def _gradient_columns(n_rows: int, n_features: int, dtype: torch.dtype) -> list:
    """Zeroed table-gradient columns for ``index_add_``: features paired as complex numbers
    (one complex addition adds two features in the time of one real one, bit for bit the
    same sums), and a real column for an odd last feature."""
    columns = [BUFFERS.empty(n_rows, dtype=COMPLEX[dtype]) for _ in range(n_features // 2)]
    if n_features % 2:
        columns.append(BUFFERS.empty(n_rows, dtype=dtype))
    return [column.zero_() for column in columns]


def _gradient_table(columns: list) -> torch.Tensor:
    """The (rows, F) table gradient from ``_gradient_columns``' columns."""
    parts = [torch.view_as_real(c) if c.is_complex() else c[:, None] for c in columns]
    return torch.cat(parts, dim=1)


def _scatter_sources(weights: torch.Tensor, dy: torch.Tensor) -> list:
    """``w(c) * dL/dy_j`` of every corner read, one source per gradient column (feature pairs
    as complex numbers): (M * C,) each. ``weights`` (L, n, G, C), ``dy`` dL/dy level-major
    (L, n, G, F)."""
    n_features, n_corners = dy.shape[-1], weights.shape[-1]
    dy = dy.view(-1, n_features, 1)  # (M, F, 1)
    w = weights.view(-1, n_corners)
    sources = []
    for p in range(n_features // 2):  # two products, interleaved; one buffer per column
        pair = BUFFERS.empty(w.numel(), dtype=COMPLEX[w.dtype])
        parts = torch.view_as_real(pair).view(*w.shape, 2)
        torch.mul(w, dy[:, 2 * p], out=parts[..., 0])
        torch.mul(w, dy[:, 2 * p + 1], out=parts[..., 1])
        sources.append(pair)
    if n_features % 2:
        sources.append((w * dy[:, -1]).flatten())
    return sources


def lookup(x, params, geo: Geometry, keep: bool):
    """Features (N, G, L * F) in params' dtype of ``x`` (N, G, d), and, with ``keep``, the
    chunks (rows, weights, factor pairs) the backward reuses; their buffers go back to
    ``BUFFERS`` when the caller is done with them."""
    dtype = compute_dtype(params)
    n, groups, _ = x.shape
    n_features = params.shape[-1]
    n_levels, n_corners = geo.corner_offsets.shape[0], geo.corner_offsets.shape[-1]
    entries = params.detach().to(dtype).reshape(-1, n_features)  # the forward-only bags
    out = torch.empty(n, groups, n_levels, n_features, dtype=dtype, device=x.device)
    chunks = []
    for start, stop in _chunks(n, groups * n_levels * n_corners):
        rows, factors, ds_df = _corners(x[start:stop], dtype, geo)
        w = _weights(factors)
        bags = _bags(rows.view(-1, n_corners), entries, w)
        _copy_rows(out[start:stop], bags.view(n_levels, -1, groups, n_features).permute(1, 2, 0, 3))
        if keep:
            chunks.append(_Chunk(start, stop, rows, w, factors, ds_df))
        else:
            BUFFERS.give((rows, w, factors))
    return out.view(n, groups, n_levels * n_features).to(params.dtype), chunks


def first_backward(dy, x, params, geo: Geometry, chunks: list, need_dx: bool, need_dparams: bool):
    """dL/dx (N, G, d) in x's dtype and dL/dparams in params' dtype (or None) from dL/dy
    (N, G, L * F), using the chunks the forward kept."""
    dtype = compute_dtype(params)
    n, groups, d = x.shape
    n_features = params.shape[-1]
    entries = params.detach().to(dtype).reshape(-1, n_features)
    columns = _gradient_columns(len(entries), n_features, dtype) if need_dparams else []
    diffs = _differences(entries, geo) if need_dx else []
    dx = torch.zeros(d, n, groups, dtype=dtype) if need_dx else None
    dy = dy.view(n, groups, geo.scale.shape[0], n_features)
    # Chunk by chunk: the table-gradient scatters (serial in ATen; one per column of two
    # features) run on worker threads while this thread computes dL/dx (parallel ATen ops).
    for chunk in chunks:
        dy_l = BUFFERS.empty(*chunk.rows.shape[:-1], n_features, dtype=dtype)  # level-major
        _copy_rows(dy_l, dy[chunk.start : chunk.stop].to(dtype).permute(2, 0, 1, 3))
        sources = _scatter_sources(chunk.weights, dy_l) if need_dparams else []
        rows = chunk.rows.view(-1)  # dL/dparams[j, rows] += w * dL/dy_j, in chunk order
        scattered = in_background(
            [partial(column.index_add_, 0, rows, src) for column, src in zip(columns, sources)]
        )
        try:
            if need_dx:
                dx[:, chunk.start : chunk.stop] = _dx(chunk, entries, diffs, dy_l, geo)
        finally:
            scattered()  # the sources are in use until the scatters end
        BUFFERS.give((*sources, dy_l))
    if need_dx:
        inside = (x >= 0) & (x <= 1)
        dx = torch.where(inside, dx.permute(1, 2, 0), 0.0).to(x.dtype)
    dtable = None
    if need_dparams:
        dtable = _gradient_table(columns).view(params.shape).to(params.dtype)
        BUFFERS.give(columns)
    BUFFERS.give(diffs)
    return dx, dtable


FEATURE_ROW = {8: torch.float64, 16: torch.complex128}  # bytes per row -> one element


def _feature_rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` (..., F) viewed with each row of F features as one 8- or 16-byte element
    (..., 1) where its size and strides allow, else ``t``: a permuting copy then moves whole
    rows, several times faster than F separate values (bench/results/cpu_notes.md)."""
    n_features, wide = t.shape[-1], FEATURE_ROW.get(t.shape[-1] * t.element_size())
    aligned = t.stride(-1) == 1 and t.storage_offset() % n_features == 0
    if wide is None or not aligned or any(s % n_features for s in t.stride()[:-1]):
        return t
    return t.view(wide)


def _copy_rows(dst: torch.Tensor, src: torch.Tensor) -> None:
    """``dst.copy_(src)`` for (..., K) tensors of one shape: whole rows of the last axis (a
    lookup's features, a run of corner rows) at a time where both layouts allow it and
    nothing is converted."""
    wide_dst, wide_src = _feature_rows(dst), _feature_rows(src)
    if wide_dst.shape == wide_src.shape and dst.dtype == src.dtype:
        wide_dst.copy_(wide_src)
    else:
        dst.copy_(src)


def _coords(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Sanitized coordinates in the computation dtype, axis first: (d, n, G)."""
    return sanitize(x.to(dtype)).permute(2, 0, 1).contiguous()


def _corners(x: torch.Tensor, dtype: torch.dtype, geo: Geometry):
    """Rows read by the corners of points ``x`` (n, G, d), their factor pairs and ``ds``
    (see :func:`_rows`, :func:`_cells`)."""
    i, factors, ds = _cells(_coords(x, dtype), geo)
    return _rows(i, geo), factors, ds


def _chunks(n: int, contributions_per_point: int):
    step = max(1, CHUNK_CONTRIBUTIONS // contributions_per_point)
    for start in range(0, n, step):
        yield start, min(n, start + step)


@torch.no_grad()
def hit_counts(x: torch.Tensor, counts: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """Add the corner hits of ``x`` (N, G, d) to ``counts`` (G, n_entries), int64: the
    reference's ``usage.hit_counts`` from the rows the lookup reads, counted with bincount."""
    n, groups, _ = x.shape
    n_levels, n_corners = geo.corner_offsets.shape[0], geo.corner_offsets.shape[-1]
    flat = counts.view(-1)
    for start, stop in _chunks(n, groups * n_levels * n_corners):
        rows, factors, _ = _corners(x[start:stop], geo.scale.dtype, geo)
        flat += torch.bincount(rows.view(-1), minlength=len(flat))
        BUFFERS.give((rows, factors))
    return counts
