"""Triton kernels of the multi-resolution grid lookup (SPEC §1.2).

Each program handles ``BLOCK`` points of one group. Per-dimension quantities
(coordinate, cell origin, weight factor, index term) are tuples of ``(BLOCK,)``
tensors, one per input dimension, and the 2**d corners of a cell are unrolled at
compile time, so the corner weights and indices are plain element-wise arithmetic.

Nothing per point is stored between forward and backward: the backward and the
deterministic scatter recompute the cell, weights and table rows from ``x``.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Columns of a level-table row; must match gridcodes.levels.level_table.
_RESOLUTION = tl.constexpr(0)
_OFFSET = tl.constexpr(1)
_USE_HASH = tl.constexpr(2)
_MASK = tl.constexpr(3)
_STRIDES = tl.constexpr(4)


@triton.jit
def _load_coords(x_ptr, point_group, live, D: tl.constexpr, COMPUTE: tl.constexpr):
    """Raw coordinates of rows ``point_group`` (= n * G + g) of x (N*G, D): a D-tuple."""
    xs = ()
    for k in tl.static_range(D):
        xs = xs + (tl.load(x_ptr + point_group * D + k, mask=live, other=0.0).to(COMPUTE),)
    return xs


@triton.jit
def _sanitize(xs):
    """SPEC §1.2 step 1 on a D-tuple: NaN -> 0, then clamp to [0, 1] (so ±inf -> 1 / 0)."""
    clean = ()
    for k in tl.static_range(len(xs)):
        x = tl.where(xs[k] != xs[k], 0.0, xs[k])
        clean = clean + (tl.minimum(tl.maximum(x, 0.0), 1.0),)
    return clean


@triton.jit
def _level(meta_ptr, level, D: tl.constexpr):
    """Geometry of one level: resolution r, first row, use_hash, index mask, D-tuple of strides."""
    row = meta_ptr + level * (_STRIDES + D)
    strides = ()
    for k in tl.static_range(D):
        strides = strides + (tl.load(row + _STRIDES + k).to(tl.uint32),)
    r = tl.load(row + _RESOLUTION)
    offset = tl.load(row + _OFFSET).to(tl.int32)
    use_hash = tl.load(row + _USE_HASH) != 0
    mask = tl.load(row + _MASK).to(tl.uint32)
    return r, offset, use_hash, mask, strides


@triton.jit
def _fractions(xs, r, SMOOTH: tl.constexpr):
    """SPEC §1.2 steps 2 and 4 for every dimension of sanitized coordinates ``xs``.

    Returns D-tuples: cell origin ``i`` (int32), weight factor ``s`` of the upper corner,
    its complement ``1 - s`` and ``ds/df``.
    """
    r_minus_1 = (r - 1).to(xs[0].dtype)
    origin = ()
    upper = ()
    lower = ()
    slope = ()
    for k in tl.static_range(len(xs)):
        p = xs[k] * r_minus_1
        i = tl.minimum(tl.floor(p), r_minus_1 - 1.0)
        f = p - i
        if SMOOTH:
            s = f * f * (3.0 - 2.0 * f)
            ds_df = 6.0 * f * (1.0 - f)
        else:
            s = f
            ds_df = tl.full(f.shape, 1.0, f.dtype)
        origin = origin + (i.to(tl.int32),)
        upper = upper + (s,)
        lower = lower + (1.0 - s,)
        slope = slope + (ds_df,)
    return origin, upper, lower, slope


@triton.jit
def _index_terms(origin, strides):
    """D-tuples ``i * stride`` and ``(i + 1) * stride`` (wrapping uint32) of the cell's corners."""
    lo_term = ()
    hi_term = ()
    for k in tl.static_range(len(origin)):
        lo = origin[k].to(tl.uint32) * strides[k]
        lo_term = lo_term + (lo,)
        hi_term = hi_term + (lo + strides[k],)
    return lo_term, hi_term


@triton.jit
def _corner(c: tl.constexpr, upper, lower, lo_term, hi_term, offset, use_hash, mask):
    """Corner ``c`` (bit k = upper along dimension k): factors (D-tuple), weight, table row.

    SPEC §1.2 step 3: ``index = combine_k(c_k * stride_k) & mask`` in wrapping uint32,
    combine = XOR (hash) or + (dense / tiled); gridcodes.levels.level_table says why
    this is exact for every grid type. Step 4: the weight is the product of factors.
    """
    factors = ()
    for k in tl.static_range(len(upper)):
        if (c >> k) & 1:
            factors = factors + (upper[k],)
        else:
            factors = factors + (lower[k],)
    term = hi_term[0] if c & 1 else lo_term[0]
    weight = factors[0]
    summed = term
    hashed = term
    for k in tl.static_range(1, len(upper)):
        term = hi_term[k] if (c >> k) & 1 else lo_term[k]
        weight = weight * factors[k]
        summed = summed + term
        hashed = hashed ^ term
    index = tl.where(use_hash, hashed, summed) & mask
    return factors, weight, offset + index.to(tl.int32)


@triton.jit
def grid_forward_kernel(
    x_ptr,  # (N, G, D) coordinates, float16/bfloat16/float32/float64
    params_ptr,  # (G, E, F) feature table
    meta_ptr,  # (L, 4 + D) int64 level table
    y_ptr,  # (N, G, L * F) output features, params dtype
    N,  # number of points
    G,  # number of groups
    E,  # table rows per group
    L,  # number of levels
    D: tl.constexpr,  # in_dim
    F: tl.constexpr,  # features per entry
    SMOOTH: tl.constexpr,  # smoothstep instead of linear weights
    COMPUTE: tl.constexpr,  # tl.float32, or tl.float64 for a float64 table
    BLOCK: tl.constexpr,  # points per program
):
    """y[n, g, l*F + j] = sum_c w(c) params[g, offset_l + index(c), j] (SPEC §1.2 step 5).

    Launch grid (point blocks, L, G): blocks of one level run together, so that
    level's table is what sits in cache.
    """
    level = tl.program_id(1)
    g = tl.program_id(2)
    n = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = n < N
    j = tl.arange(0, F)
    xs = _sanitize(_load_coords(x_ptr, n * G + g, live, D, COMPUTE))
    r, offset, use_hash, mask, strides = _level(meta_ptr, level, D)
    origin, upper, lower, _ = _fractions(xs, r, SMOOTH)
    lo_term, hi_term = _index_terms(origin, strides)
    table = params_ptr + g.to(tl.int64) * E * F
    acc = tl.zeros((BLOCK, F), COMPUTE)
    for c in tl.static_range(2**D):
        _, w, row = _corner(c, upper, lower, lo_term, hi_term, offset, use_hash, mask)
        v = tl.load(table + row[:, None] * F + j[None, :], mask=live[:, None], other=0.0)
        acc += w[:, None] * v.to(COMPUTE)
    out = y_ptr + (n[:, None] * G + g) * (L * F) + level * F + j[None, :]
    tl.store(out, acc, mask=live[:, None])


# Backward (SPEC §1.2 step 6). With g_l = dL/dy[n, g, l*F:(l+1)*F] and P_c the entry of
# corner c, the lookup y_l = sum_c w_c P_c with w_c = prod_k (b_k ? s_k : 1 - s_k) gives
#   dL/dP_c  += w_c g_l                                               (scatter)
#   dL/ds_k   = sum_c (b_k ? +1 : -1) prod_{m != k} (b_m ? s_m : 1 - s_m) <P_c, g_l>
#   dL/dx_k   = sum_l (r_l - 1) (ds_k/df_k) dL/ds_k,   since f = x (r - 1) - i
# and dL/dx_k is set to 0 where x_k was outside [0, 1] or not finite. The cell is the
# one the forward chose, so at x = 0 and x = 1 the gradient is that inside the
# boundary cell. Levels are looped inside the program so dL/dx is summed in
# registers (deterministic) and written once.
@triton.jit
def grid_backward_kernel(
    x_ptr,  # (N, G, D) coordinates
    params_ptr,  # (G, E, F) feature table
    meta_ptr,  # (L, 4 + D) int64 level table
    dy_ptr,  # (N, G, L * F) upstream gradient
    dparams_ptr,  # (G, E, F) float32/float64 accumulator, atomically added (PARAM_GRAD)
    dx_ptr,  # (N, G, D) input gradient, x dtype, overwritten (INPUT_GRAD)
    N,  # number of points
    G,  # number of groups
    E,  # table rows per group
    L,  # number of levels
    D: tl.constexpr,  # in_dim
    F: tl.constexpr,  # features per entry
    SMOOTH: tl.constexpr,  # smoothstep instead of linear weights
    COMPUTE: tl.constexpr,  # tl.float32, or tl.float64 for a float64 table
    PARAM_GRAD: tl.constexpr,  # scatter w * dy into dparams with atomics
    INPUT_GRAD: tl.constexpr,  # compute dL/dx
    BLOCK: tl.constexpr,  # points per program
):
    g = tl.program_id(1)
    n = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = n < N
    j = tl.arange(0, F)
    raw = _load_coords(x_ptr, n * G + g, live, D, COMPUTE)
    xs = _sanitize(raw)
    dx = ()
    for k in tl.static_range(D):
        dx = dx + (tl.zeros((BLOCK,), COMPUTE),)
    table = params_ptr + g.to(tl.int64) * E * F
    grad_table = dparams_ptr + g.to(tl.int64) * E * F
    for level in range(L):
        r, offset, use_hash, mask, strides = _level(meta_ptr, level, D)
        origin, upper, lower, slope = _fractions(xs, r, SMOOTH)
        lo_term, hi_term = _index_terms(origin, strides)
        dy_ptrs = dy_ptr + (n[:, None] * G + g) * (L * F) + level * F + j[None, :]
        dy = tl.load(dy_ptrs, mask=live[:, None], other=0.0).to(COMPUTE)
        dl_ds = ()
        for k in tl.static_range(D):
            dl_ds = dl_ds + (tl.zeros((BLOCK,), COMPUTE),)
        for c in tl.static_range(2**D):
            factors, w, row = _corner(c, upper, lower, lo_term, hi_term, offset, use_hash, mask)
            if PARAM_GRAD:
                grad_ptrs = grad_table + row[:, None] * F + j[None, :]
                tl.atomic_add(grad_ptrs, w[:, None] * dy, mask=live[:, None])
            if INPUT_GRAD:
                v = tl.load(table + row[:, None] * F + j[None, :], mask=live[:, None], other=0.0)
                dot = tl.sum(v.to(COMPUTE) * dy, 1)
                updated = ()
                for k in tl.static_range(D):
                    others = dot  # <P_c, g_l> times the factors of the other dimensions
                    for m in tl.static_range(D):
                        if m != k:
                            others = others * factors[m]
                    if (c >> k) & 1:
                        updated = updated + (dl_ds[k] + others,)
                    else:
                        updated = updated + (dl_ds[k] - others,)
                dl_ds = updated
        if INPUT_GRAD:
            scale = (r - 1).to(COMPUTE)
            updated = ()
            for k in tl.static_range(D):
                updated = updated + (dx[k] + scale * slope[k] * dl_ds[k],)
            dx = updated
    if INPUT_GRAD:
        for k in tl.static_range(D):
            inside = (raw[k] >= 0.0) & (raw[k] <= 1.0)  # False for NaN
            tl.store(dx_ptr + (n * G + g) * D + k, tl.where(inside, dx[k], 0.0), mask=live)


# Deterministic parameter gradient: atomics add in a run-dependent order, so instead
# (per level) every (point, group, corner) writes its table row, the triples are
# stably sorted by row, and each row's contributions are summed in that fixed order.
@triton.jit
def grid_corner_rows_kernel(
    x_ptr,  # (N, G, D) coordinates
    meta_ptr,  # (L, 4 + D) int64 level table
    rows_ptr,  # (N, G, 2**D) int32 output: flat row g * E + offset_l + index(c)
    N,  # number of points
    G,  # number of groups
    E,  # table rows per group
    level,  # the level whose rows are written
    D: tl.constexpr,  # in_dim
    COMPUTE: tl.constexpr,  # tl.float32, or tl.float64 for a float64 table
    BLOCK: tl.constexpr,  # points per program
):
    g = tl.program_id(1)
    n = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = n < N
    xs = _sanitize(_load_coords(x_ptr, n * G + g, live, D, COMPUTE))
    r, offset, use_hash, mask, strides = _level(meta_ptr, level, D)
    origin, upper, lower, _ = _fractions(xs, r, False)
    lo_term, hi_term = _index_terms(origin, strides)
    for c in tl.static_range(2**D):
        _, _, row = _corner(c, upper, lower, lo_term, hi_term, offset, use_hash, mask)
        tl.store(rows_ptr + (n * G + g) * (2**D) + c, g * E + row, mask=live)


@triton.jit
def grid_segment_sum_kernel(
    x_ptr,  # (N, G, D) coordinates
    meta_ptr,  # (L, 4 + D) int64 level table
    dy_ptr,  # (N, G, L * F) upstream gradient
    order_ptr,  # (N * G * 2**D,) int64 flat (point, group, corner) ids, stably sorted by row
    seg_row_ptr,  # (S,) int32 flat table row of each segment
    seg_start_ptr,  # (S,) int64 first position of each segment in order
    seg_len_ptr,  # (S,) int64 contributions of each segment
    dparams_ptr,  # (G * E, F) float32/float64, rows of this level overwritten
    S,  # number of segments (distinct rows hit at this level)
    L,  # number of levels
    level,  # the level being reduced
    D: tl.constexpr,  # in_dim
    F: tl.constexpr,  # features per entry
    SMOOTH: tl.constexpr,  # smoothstep instead of linear weights
    COMPUTE: tl.constexpr,  # tl.float32, or tl.float64 for a float64 table
    BLOCK: tl.constexpr,  # segments per program
):
    """dparams[row] = sum over the row's contributions, in sorted order, of w * dy."""
    seg = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    seg_live = seg < S
    start = tl.load(seg_start_ptr + seg, mask=seg_live, other=0)
    length = tl.load(seg_len_ptr + seg, mask=seg_live, other=0)
    j = tl.arange(0, F)
    r = tl.load(meta_ptr + level * (_STRIDES + D) + _RESOLUTION)
    acc = tl.zeros((BLOCK, F), COMPUTE)
    for step in range(0, tl.max(length, 0)):
        live = seg_live & (step < length)
        entry = tl.load(order_ptr + start + step, mask=live, other=0)
        point_group = entry // (2**D)
        corner = entry % (2**D)
        xs = _sanitize(_load_coords(x_ptr, point_group, live, D, COMPUTE))
        _, upper, lower, _ = _fractions(xs, r, SMOOTH)
        w = tl.full((BLOCK,), 1.0, COMPUTE)
        for k in tl.static_range(D):
            w = w * tl.where((corner >> k) & 1 == 1, upper[k], lower[k])
        dy_ptrs = dy_ptr + point_group[:, None] * (L * F) + level * F + j[None, :]
        acc += w[:, None] * tl.load(dy_ptrs, mask=live[:, None], other=0.0).to(COMPUTE)
    row = tl.load(seg_row_ptr + seg, mask=seg_live, other=0)
    tl.store(dparams_ptr + row[:, None] * F + j[None, :], acc, mask=seg_live[:, None])
