"""Triton kernels of the multi-resolution grid lookup (docs/grids.md §2).

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

from . import levels

# Level loops run to the runtime L when compiled. In Triton's interpreter they run to the
# constexpr STATIC_L instead: the interpreter of Triton 3.6 and older cannot take a runtime
# int as a range bound with numpy 2.4 (and the inline conditional, not an assigned bound,
# keeps it a constant there).
# Columns of a level-table row (gridcodes.levels.level_table).
_OFFSET = tl.constexpr(levels.META_OFFSET)
_USE_HASH = tl.constexpr(levels.META_USE_HASH)
_MASK = tl.constexpr(levels.META_MASK)
_SIZE = tl.constexpr(levels.META_SIZE)
_SCALE = tl.constexpr(levels.META_SCALE)
_SHIFT = tl.constexpr(levels.META_SHIFT)
_STRIDES = tl.constexpr(levels.META_STRIDES)


@triton.jit
def _load_coords(x_ptr, point_group, live, D: tl.constexpr, COMPUTE: tl.constexpr):
    """Raw coordinates of rows ``point_group`` (= n * G + g) of x (N*G, D): a D-tuple."""
    xs = ()
    for k in tl.static_range(D):
        xs = xs + (tl.load(x_ptr + point_group * D + k, mask=live, other=0.0).to(COMPUTE),)
    return xs


@triton.jit
def _sanitize(xs):
    """docs/grids.md §2 step 1 on a D-tuple: NaN -> 0, then clamp to [0, 1] (so ±inf -> 1 / 0)."""
    clean = ()
    for k in tl.static_range(len(xs)):
        x = tl.where(xs[k] != xs[k], 0.0, xs[k])
        clean = clean + (tl.minimum(tl.maximum(x, 0.0), 1.0),)
    return clean


@triton.jit
def _level(meta_ptr, level, D: tl.constexpr, COMPUTE: tl.constexpr):
    """Geometry of one level: position scale and shift (COMPUTE), first row, use_hash, index
    mask, size, D-tuple of strides (gridcodes.levels.level_table)."""
    row = meta_ptr + level * (_STRIDES + D)
    strides = ()
    for k in tl.static_range(D):
        strides = strides + (tl.load(row + _STRIDES + k).to(tl.uint32),)
    scale = tl.load(row + _SCALE).to(tl.float64, bitcast=True).to(COMPUTE)
    shift = tl.load(row + _SHIFT).to(tl.float64, bitcast=True).to(COMPUTE)
    offset = tl.load(row + _OFFSET).to(tl.int32)
    use_hash = tl.load(row + _USE_HASH) != 0
    mask = tl.load(row + _MASK).to(tl.uint32)
    size = tl.load(row + _SIZE).to(tl.uint32)
    return scale, shift, offset, use_hash, mask, size, strides


@triton.jit
def _position(x, scale, shift, FUSED: tl.constexpr):
    """Cell origin (float) and fraction of one coordinate (docs/grids.md §2 step 2).

    gridcodes (align-corners): ``p = x scale`` with scale = r - 1, origin clamped to r - 2.
    FUSED (tcnn, torch-ngp; docs/tcnn.md): ``p = x scale + shift`` rounded once, as a fused
    multiply-add: in float64 (exact for float32 operands) and rounded to the compute
    dtype, so the interpreter and every GPU agree bit for bit; the origin is not clamped.
    """
    if FUSED:
        p = (x.to(tl.float64) * scale.to(tl.float64) + shift.to(tl.float64)).to(x.dtype)
        i = tl.floor(p)
    else:
        p = x * scale
        i = tl.minimum(tl.floor(p), scale - 1.0)
    return i, p - i


@triton.jit
def _fractions(xs, scale, shift, SMOOTH: tl.constexpr, FUSED: tl.constexpr):
    """docs/grids.md §2 steps 2 and 4 for every dimension of sanitized coordinates ``xs``.

    Returns D-tuples: cell origin ``i`` (int32), weight factor ``s`` of the upper corner,
    its complement ``1 - s``, ``ds/df`` and ``d2s/df2`` (smoothstep; linear: 0, unused).
    """
    origin = ()
    upper = ()
    lower = ()
    slope = ()
    curve = ()
    for k in tl.static_range(len(xs)):
        i, f = _position(xs[k], scale, shift, FUSED)
        if SMOOTH:
            s = f * f * (3.0 - 2.0 * f)
            ds_df = 6.0 * f * (1.0 - f)
            curve = curve + (6.0 - 12.0 * f,)
        else:
            s = f
            ds_df = tl.full(f.shape, 1.0, f.dtype)
            curve = curve + (f * 0.0,)
        origin = origin + (i.to(tl.int32),)
        upper = upper + (s,)
        lower = lower + (1.0 - s,)
        slope = slope + (ds_df,)
    return origin, upper, lower, slope, curve


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
def _corner(
    c: tl.constexpr,
    upper,
    lower,
    lo_term,
    hi_term,
    offset,
    use_hash,
    mask,
    size,
    REDUCE: tl.constexpr,
):
    """Corner ``c`` (bit k = upper along dimension k): factors (D-tuple), weight, table row.

    docs/grids.md §2 step 3: ``index = combine_k(c_k * stride_k) & mask`` in wrapping uint32,
    combine = XOR (hash) or + (dense / tiled), then brought below ``size`` as REDUCE says
    (0: nothing left to do; 1: subtract size once; 2: modulo size; gridcodes.levels says
    why this is exact for every grid type and convention). Step 4: the weight is the
    product of factors.
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
    if REDUCE == 1:
        index = tl.where(index >= size, index - size, index)
    elif REDUCE == 2:
        index = index % size
    return factors, weight, offset + index.to(tl.int32)


@triton.jit
def _directions(hx_ptr, raw, point_group, live, D: tl.constexpr, COMPUTE: tl.constexpr):
    """Upstream gradient h of dL/dx (a D-tuple), 0 where the raw coordinate was outside
    [0, 1] or not finite (dL/dx is 0 there, whatever the table)."""
    hs = ()
    for k in tl.static_range(D):
        h = tl.load(hx_ptr + point_group * D + k, mask=live, other=0.0).to(COMPUTE)
        hs = hs + (tl.where((raw[k] >= 0.0) & (raw[k] <= 1.0), h, 0.0),)
    return hs


@triton.jit
def grid_forward_kernel(
    x_ptr,  # (N, G, D) coordinates, float16/bfloat16/float32/float64
    params_ptr,  # (G, E, F) feature table
    meta_ptr,  # (L, 7 + D) int64 level table
    y_ptr,  # (N, G, L * F) output features, params dtype
    N,  # number of points
    G,  # number of groups
    E,  # table rows per group
    L,  # number of levels
    D: tl.constexpr,  # in_dim
    F: tl.constexpr,  # features per entry
    SMOOTH: tl.constexpr,  # smoothstep instead of linear weights
    FUSED: tl.constexpr,  # tcnn / torch-ngp position x * scale + shift (see _position)
    REDUCE: tl.constexpr,  # how indices are brought below the level size (see _corner)
    COMPUTE: tl.constexpr,  # tl.float32, or tl.float64 for a float64 table
    BLOCK: tl.constexpr,  # points per program
):
    """y[n, g, l*F + j] = sum_c w(c) params[g, offset_l + index(c), j] (docs/grids.md §2 step 5).

    Launch grid (point blocks, L, G): a program looks its points up in one level; programs
    of one level run together, so they share that level's table in the cache. (Levels per
    program 4 and 16 were slower on an H100, bench/results/gpu_notes.md.)
    """
    level = tl.program_id(1)
    g = tl.program_id(2)
    n = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = n < N
    j = tl.arange(0, F)
    xs = _sanitize(_load_coords(x_ptr, n * G + g, live, D, COMPUTE))
    table = params_ptr + g.to(tl.int64) * E * F
    out = y_ptr + (n[:, None] * G + g) * (L * F) + j[None, :]
    scale, shift, offset, use_hash, mask, size, strides = _level(meta_ptr, level, D, COMPUTE)
    origin, upper, lower, _, _ = _fractions(xs, scale, shift, SMOOTH, FUSED)
    lo_term, hi_term = _index_terms(origin, strides)
    acc = tl.zeros((BLOCK, F), COMPUTE)
    for c in tl.static_range(2**D):
        _, w, row = _corner(c, upper, lower, lo_term, hi_term, offset, use_hash, mask, size, REDUCE)
        v = tl.load(table + row[:, None] * F + j[None, :], mask=live[:, None], other=0.0)
        acc += w[:, None] * v.to(COMPUTE)
    tl.store(out + level * F, acc, mask=live[:, None])


# Backward (docs/grids.md §2 step 6). With g_l = dL/dy[n, g, l*F:(l+1)*F] and P_c the entry of
# corner c, the lookup y_l = sum_c w_c P_c with w_c = prod_k (b_k ? s_k : 1 - s_k) gives
#   dL/dP_c  += w_c g_l                                               (scatter)
#   dL/ds_k   = sum_c (b_k ? +1 : -1) prod_{m != k} (b_m ? s_m : 1 - s_m) <P_c, g_l>
#   dL/dx_k   = sum_l a_l (ds_k/df_k) dL/ds_k,   since f = x a_l + shift - i
# with a_l the level's position scale (r_l - 1 in the gridcodes convention)
# and dL/dx_k is set to 0 where x_k was outside [0, 1] or not finite. The cell is the
# one the forward chose, so at x = 0 and x = 1 the gradient is that inside the
# boundary cell. Levels are looped inside the program so dL/dx is summed in
# registers (deterministic) and written once.
@triton.jit
def grid_backward_kernel(
    x_ptr,  # (N, G, D) coordinates
    params_ptr,  # (G, E, F) feature table
    meta_ptr,  # (L, 7 + D) int64 level table
    dy_ptr,  # (N, G, L * F) upstream gradient
    dparams_ptr,  # (G, E, F) float32/float64 accumulator, atomically added (PARAM_GRAD)
    replicas_ptr,  # (REPLICAS, G, COARSE, F) accumulators of rows < COARSE (REPLICAS > 1)
    dx_ptr,  # (N, G, D) input gradient, x dtype, overwritten (INPUT_GRAD)
    N,  # number of points
    G,  # number of groups
    E,  # table rows per group
    L,  # number of levels
    COARSE,  # rows [0, COARSE) of each group: the small coarse levels
    D: tl.constexpr,  # in_dim
    F: tl.constexpr,  # features per entry
    SMOOTH: tl.constexpr,  # smoothstep instead of linear weights
    FUSED: tl.constexpr,  # tcnn / torch-ngp position x * scale + shift (see _position)
    REDUCE: tl.constexpr,  # how indices are brought below the level size (see _corner)
    COMPUTE: tl.constexpr,  # tl.float32, or tl.float64 for a float64 table
    PARAM_GRAD: tl.constexpr,  # scatter w * dy into dparams with atomics
    INPUT_GRAD: tl.constexpr,  # compute dL/dx
    REPLICAS: tl.constexpr,  # copies of the coarse rows' accumulator (1: none)
    BLOCK: tl.constexpr,  # points per program
    STATIC_L: tl.constexpr,  # L in the interpreter, else 0 (the level loop's bound)
):
    g = tl.program_id(1)
    n = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = n < N
    j = tl.arange(0, F)
    xs = _sanitize(_load_coords(x_ptr, n * G + g, live, D, COMPUTE))
    dx = ()
    for k in tl.static_range(D):
        dx = dx + (tl.zeros((BLOCK,), COMPUTE),)
    table = params_ptr + g.to(tl.int64) * E * F
    grad_table = dparams_ptr + g.to(tl.int64) * E * F
    # Every point adds into the few rows of the coarse levels (a 4**3 level: thousands of
    # reductions per row and step), and reductions to one address serialise in L2.
    # Program p adds those rows into copy p % REPLICAS instead; the launcher sums the copies.
    replica = (tl.program_id(0) % REPLICAS).to(tl.int64) * G + g
    grad_coarse = replicas_ptr + replica * COARSE * F
    for level in range(STATIC_L if STATIC_L > 0 else L):  # see STATIC_L
        scale, shift, offset, use_hash, mask, size, strides = _level(meta_ptr, level, D, COMPUTE)
        origin, upper, lower, slope, _ = _fractions(xs, scale, shift, SMOOTH, FUSED)
        lo_term, hi_term = _index_terms(origin, strides)
        dy_ptrs = dy_ptr + (n[:, None] * G + g) * (L * F) + level * F + j[None, :]
        dy = tl.load(dy_ptrs, mask=live[:, None], other=0.0).to(COMPUTE)
        dl_ds = ()
        for k in tl.static_range(D):
            dl_ds = dl_ds + (tl.zeros((BLOCK,), COMPUTE),)
        for c in tl.static_range(2**D):
            factors, w, row = _corner(
                c, upper, lower, lo_term, hi_term, offset, use_hash, mask, size, REDUCE
            )
            if PARAM_GRAD:
                # Relaxed: the sum needs atomicity, not ordering. The default (acq_rel)
                # fences every add and invalidates L1, which also evicts the rows the
                # dx path re-reads; relaxed with an unused result compiles to RED.
                # Two masked adds rather than one through a selected pointer: a select
                # hides the rows' alignment and turns each F-wide RED into F scalar ones.
                offsets = row[:, None] * F + j[None, :]
                fine = live
                if REPLICAS > 1:
                    coarse = live & (row < COARSE)
                    fine = live & (row >= COARSE)
                    tl.atomic_add(
                        grad_coarse + offsets, w[:, None] * dy, mask=coarse[:, None], sem="relaxed"
                    )
                tl.atomic_add(
                    grad_table + offsets, w[:, None] * dy, mask=fine[:, None], sem="relaxed"
                )
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
            updated = ()
            for k in tl.static_range(D):
                updated = updated + (dx[k] + scale * slope[k] * dl_ds[k],)
            dx = updated
    if INPUT_GRAD:
        # Reloaded (a cache hit) rather than kept live through the level loop: keeping
        # the raw coordinates in registers made ptxas spill them for d = 2, F = 8.
        raw = _load_coords(x_ptr, n * G + g, live, D, COMPUTE)
        for k in tl.static_range(D):
            inside = (raw[k] >= 0.0) & (raw[k] <= 1.0)  # False for NaN
            tl.store(dx_ptr + (n * G + g) * D + k, tl.where(inside, dx[k], 0.0), mask=live)


# Double backward (docs/tcnn.md, "Second-order gradients"). The backward above maps
# (g, x, P) to dL/dx and dL/dP. Let h_k be the upstream gradient of dL/dx_k, set to 0 where
# x_k was outside [0, 1] (dL/dx_k is 0 there). Per level, with a the position scale,
# s'_k = ds_k/df_k, s''_k = d2s_k/df_k2 (0 for linear), fac_k(c) = (b_k ? s_k : 1 - s_k)
# and sigma_k(c) = (b_k ? +1 : -1):
#   dw_c/dx_k   = a s'_k sigma_k prod_{o != k} fac_o
#   v_c         = sum_k h_k dw_c/dx_k = sum_k sigma_k t_k prod_{o != k} fac_o,  t_k = h_k a s'_k
#   d/dg_l      = sum_c v_c P_c                                  (a lookup with weights v)
#   d/dP_c     += v_c g_l                                         (scatter)
#   d/dx_m      = sum_l sum_c <P_c, g_l> sum_k h_k d2w_c/(dx_m dx_k)
#               = sum_l a sum_c <P_c, g_l> sigma_m [a s''_m h_m prod_{o != m} fac_o
#                                 + s'_m sum_{k != m} sigma_k t_k prod_{o != m, k} fac_o]
# since w is linear in each s_k: the diagonal k = m keeps only the s'' term (none for
# linear interpolation), the cross terms k != m do not vanish. d/dx_m is 0 where x_m was
# outside [0, 1]. The upstream gradient H of dL/dP adds a lookup of H (to d/dg) and the
# backward's dL/dx with H as the table (to d/dx): the kernels above, ops.double_backward.
@triton.jit
def grid_double_backward_kernel(
    x_ptr,  # (N, G, D) coordinates
    params_ptr,  # (G, E, F) feature table
    meta_ptr,  # (L, 7 + D) int64 level table
    dy_ptr,  # (N, G, L * F) the first backward's upstream gradient g
    hx_ptr,  # (N, G, D) upstream gradient h of the first backward's dL/dx
    ddy_ptr,  # (N, G, L * F) d/dg, dy dtype, overwritten (DY_GRAD)
    dparams_ptr,  # (G, E, F) float32/float64 accumulator, atomically added (PARAM_GRAD)
    replicas_ptr,  # (REPLICAS, G, COARSE, F) accumulators of rows < COARSE (REPLICAS > 1)
    dx_ptr,  # (N, G, D) d/dx, x dtype, overwritten (INPUT_GRAD)
    N,  # number of points
    G,  # number of groups
    E,  # table rows per group
    L,  # number of levels
    COARSE,  # rows [0, COARSE) of each group: the small coarse levels
    D: tl.constexpr,  # in_dim
    F: tl.constexpr,  # features per entry
    SMOOTH: tl.constexpr,  # smoothstep instead of linear weights
    FUSED: tl.constexpr,  # tcnn / torch-ngp position x * scale + shift (see _position)
    REDUCE: tl.constexpr,  # how indices are brought below the level size (see _corner)
    COMPUTE: tl.constexpr,  # tl.float32, or tl.float64 for a float64 table
    DY_GRAD: tl.constexpr,  # compute d/dg
    PARAM_GRAD: tl.constexpr,  # scatter v * g into dparams with atomics
    INPUT_GRAD: tl.constexpr,  # compute d/dx
    REPLICAS: tl.constexpr,  # copies of the coarse rows' accumulator (1: none)
    BLOCK: tl.constexpr,  # points per program
    STATIC_L: tl.constexpr,  # L in the interpreter, else 0 (the level loop's bound)
):
    g = tl.program_id(1)
    n = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = n < N
    j = tl.arange(0, F)
    point_group = n * G + g
    raw = _load_coords(x_ptr, point_group, live, D, COMPUTE)
    xs = _sanitize(raw)
    hs = _directions(hx_ptr, raw, point_group, live, D, COMPUTE)
    dx = ()
    for k in tl.static_range(D):
        dx = dx + (tl.zeros((BLOCK,), COMPUTE),)
    table = params_ptr + g.to(tl.int64) * E * F
    grad_table = dparams_ptr + g.to(tl.int64) * E * F
    replica = (tl.program_id(0) % REPLICAS).to(tl.int64) * G + g
    grad_coarse = replicas_ptr + replica * COARSE * F
    for level in range(STATIC_L if STATIC_L > 0 else L):  # see STATIC_L
        scale, shift, offset, use_hash, mask, size, strides = _level(meta_ptr, level, D, COMPUTE)
        origin, upper, lower, slope, curve = _fractions(xs, scale, shift, SMOOTH, FUSED)
        lo_term, hi_term = _index_terms(origin, strides)
        t = ()
        for k in tl.static_range(D):
            t = t + (hs[k] * scale * slope[k],)
        level_ptrs = point_group[:, None] * (L * F) + level * F + j[None, :]
        dy = tl.load(dy_ptr + level_ptrs, mask=live[:, None], other=0.0).to(COMPUTE)
        acc = tl.zeros((BLOCK, F), COMPUTE)
        updated = dx
        for c in tl.static_range(2**D):
            factors, _, row = _corner(
                c, upper, lower, lo_term, hi_term, offset, use_hash, mask, size, REDUCE
            )
            v = tl.zeros((BLOCK,), COMPUTE)
            for k in tl.static_range(D):
                term = t[k]
                for o in tl.static_range(D):
                    if o != k:
                        term = term * factors[o]
                v = v + term if (c >> k) & 1 else v - term
            if DY_GRAD or INPUT_GRAD:
                p = tl.load(table + row[:, None] * F + j[None, :], mask=live[:, None], other=0.0)
                p = p.to(COMPUTE)
            if DY_GRAD:
                acc += v[:, None] * p
            if PARAM_GRAD:
                # As the backward's scatter: relaxed reductions, two masked adds.
                offsets = row[:, None] * F + j[None, :]
                fine = live
                if REPLICAS > 1:
                    coarse = live & (row < COARSE)
                    fine = live & (row >= COARSE)
                    tl.atomic_add(
                        grad_coarse + offsets, v[:, None] * dy, mask=coarse[:, None], sem="relaxed"
                    )
                tl.atomic_add(
                    grad_table + offsets, v[:, None] * dy, mask=fine[:, None], sem="relaxed"
                )
            if INPUT_GRAD:
                dot = tl.sum(p * dy, 1) * scale
                summed = ()
                for m in tl.static_range(D):
                    cross = tl.zeros((BLOCK,), COMPUTE)
                    for k in tl.static_range(D):
                        if k != m:
                            term = t[k]
                            for o in tl.static_range(D):
                                if o != m and o != k:
                                    term = term * factors[o]
                            cross = cross + term if (c >> k) & 1 else cross - term
                    inner = slope[m] * cross
                    if SMOOTH:
                        diagonal = scale * curve[m] * hs[m]
                        for o in tl.static_range(D):
                            if o != m:
                                diagonal = diagonal * factors[o]
                        inner = inner + diagonal
                    if (c >> m) & 1:
                        summed = summed + (updated[m] + dot * inner,)
                    else:
                        summed = summed + (updated[m] - dot * inner,)
                updated = summed
        dx = updated
        if DY_GRAD:
            tl.store(ddy_ptr + level_ptrs, acc, mask=live[:, None])
    if INPUT_GRAD:
        raw = _load_coords(x_ptr, point_group, live, D, COMPUTE)  # reloaded, as the backward
        for k in tl.static_range(D):
            inside = (raw[k] >= 0.0) & (raw[k] <= 1.0)  # False for NaN
            tl.store(dx_ptr + point_group * D + k, tl.where(inside, dx[k], 0.0), mask=live)


# Deterministic parameter gradient (docs/grids.md §5). Atomics add in a run-dependent order, so
# instead every contribution (point, group, level, corner) writes its flat table row, ONE
# stable sort over all levels orders them by row, and fixed chunks of CHUNK consecutive
# contributions are summed by a segmented scan (a fixed tree per chunk). A row that spans
# chunks is finished by one more kernel that adds its per-chunk partial sums in chunk
# order. The summation order depends only on the data and CHUNK (a constant of the
# algorithm, not a tuning knob), never on timing or launch sizes, so the result is bitwise
# reproducible. Critical path: log2(CHUNK) scan steps plus the chunks of the longest row,
# instead of the longest row's length. Nothing is synchronised with the host.
@triton.jit
def grid_contribution_rows_kernel(
    x_ptr,  # (N, G, D) coordinates
    meta_ptr,  # (L, 7 + D) int64 level table
    rows_ptr,  # (L * 2**D * N * G,) int32 output, see below
    N,  # number of points
    G,  # number of groups
    E,  # table rows per group
    L,  # number of levels
    D: tl.constexpr,  # in_dim
    FUSED: tl.constexpr,  # tcnn / torch-ngp position x * scale + shift (see _position)
    REDUCE: tl.constexpr,  # how indices are brought below the level size (see _corner)
    COMPUTE: tl.constexpr,  # tl.float32, or tl.float64 for a float64 table
    BLOCK: tl.constexpr,  # points per program
    STATIC_L: tl.constexpr,  # L in the interpreter, else 0 (the level loop's bound)
):
    """rows[(l * 2**D + c) * N * G + n * G + g] = g * E + row of corner c of level l.

    Contribution ids run over points fastest, so the stores are coalesced.
    """
    g = tl.program_id(1)
    n = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = n < N
    point_group = n * G + g
    xs = _sanitize(_load_coords(x_ptr, point_group, live, D, COMPUTE))
    n_points = tl.cast(N, tl.int64) * G  # tl.cast: N == 1 arrives as a constant, not a tensor
    for level in range(STATIC_L if STATIC_L > 0 else L):  # see STATIC_L
        scale, shift, offset, use_hash, mask, size, strides = _level(meta_ptr, level, D, COMPUTE)
        origin, upper, lower, _, _ = _fractions(xs, scale, shift, False, FUSED)
        lo_term, hi_term = _index_terms(origin, strides)
        for c in tl.static_range(2**D):
            _, _, row = _corner(
                c, upper, lower, lo_term, hi_term, offset, use_hash, mask, size, REDUCE
            )
            contribution = (level * (2**D) + c) * n_points + point_group
            tl.store(rows_ptr + contribution, g * E + row, mask=live)


@triton.jit
def _segmented_scan(value, start, CHUNK: tl.constexpr, STEPS: tl.constexpr):
    """Inclusive segmented sum along axis 0 of ``value`` (CHUNK, F); ``start`` marks segment starts.

    Hillis-Steele: STEPS = log2(CHUNK) steps, each combining element i with element i - 2**s.
    The tree is written out here, so its order depends on CHUNK alone (not on warps,
    layout or the interpreter).
    """
    i = tl.arange(0, CHUNK)[:, None] + tl.zeros_like(value).to(tl.int32)
    begun = start
    for s in tl.static_range(STEPS):
        source = tl.maximum(i - (1 << s), 0)
        earlier = tl.gather(value, source, 0)
        earlier_begun = tl.gather(begun, source, 0)
        add = (i >= (1 << s)) & (begun == 0)
        value = tl.where(add, value + earlier, value)
        begun = begun | ((i >= (1 << s)) & earlier_begun)
    return value


@triton.jit
def grid_chunk_sum_kernel(
    x_ptr,  # (N, G, D) coordinates
    meta_ptr,  # (L, 7 + D) int64 level table
    dy_ptr,  # (N, G, L * F) upstream gradient
    hx_ptr,  # (N, G, D) upstream gradient of dL/dx (DIRECTIONAL), else unused
    rows_ptr,  # (M,) int32 flat table rows of the contributions, sorted
    order_ptr,  # (M,) int64 contribution ids in sorted order (ids as in the rows kernel)
    dparams_ptr,  # (G * E, F) float32/float64: rows whose contributions all lie in one chunk
    head_ptr,  # (n_chunks, F) partial sum of the chunk's first row, begun in an earlier chunk
    tail_ptr,  # (n_chunks, F) partial sum of the chunk's last row, continued in the next chunk
    tail_row_ptr,  # (n_chunks,) int32 that last row
    flags_ptr,  # (n_chunks,) int32: bit 0 the first row runs on into the next chunk, bit 1 a tail
    M,  # number of contributions, N * G * L * 2**D
    NG,  # N * G
    L,  # number of levels
    D: tl.constexpr,  # in_dim
    F: tl.constexpr,  # features per entry
    SMOOTH: tl.constexpr,  # smoothstep instead of linear weights
    FUSED: tl.constexpr,  # tcnn / torch-ngp position x * scale + shift (see _position)
    COMPUTE: tl.constexpr,  # tl.float32, or tl.float64 for a float64 table
    CHUNK: tl.constexpr,  # contributions per program; fixes the summation order
    STEPS: tl.constexpr,  # log2(CHUNK), the scan's steps
    DIRECTIONAL: tl.constexpr,  # weights v_c of the double backward instead of w_c
):
    """Segmented sums of w * dy (or v * dy) over one chunk of the sorted contributions."""
    chunk = tl.program_id(0)
    pos = chunk.to(tl.int64) * CHUNK + tl.arange(0, CHUNK)
    live = pos < M
    row = tl.load(rows_ptr + pos, mask=live, other=-1)
    before = tl.load(rows_ptr + pos - 1, mask=live & (pos > 0), other=-1)
    after = tl.load(rows_ptr + pos + 1, mask=pos + 1 < M, other=-1)
    starts = row != before  # a row's first contribution (over the whole array)
    ends = row != after  # a row's last contribution
    contribution = tl.load(order_ptr + pos, mask=live, other=0)
    point_group = contribution % NG
    level = contribution // NG // (2**D)
    corner = (contribution // NG) % (2**D)
    row_ptr = meta_ptr + level * (_STRIDES + D)
    scale = tl.load(row_ptr + _SCALE, mask=live, other=0).to(tl.float64, bitcast=True).to(COMPUTE)
    shift = tl.load(row_ptr + _SHIFT, mask=live, other=0).to(tl.float64, bitcast=True).to(COMPUTE)
    raw = _load_coords(x_ptr, point_group, live, D, COMPUTE)
    _, upper, lower, slope, _ = _fractions(_sanitize(raw), scale, shift, SMOOTH, FUSED)
    factors = ()
    for k in tl.static_range(D):
        factors = factors + (tl.where((corner >> k) & 1 == 1, upper[k], lower[k]),)
    if DIRECTIONAL:  # v_c = sum_k h_k dw_c/dx_k (see grid_double_backward_kernel)
        hs = _directions(hx_ptr, raw, point_group, live, D, COMPUTE)
        w = tl.zeros((CHUNK,), COMPUTE)
        for k in tl.static_range(D):
            term = hs[k] * scale * slope[k]
            for o in tl.static_range(D):
                if o != k:
                    term = term * factors[o]
            w = tl.where((corner >> k) & 1 == 1, w + term, w - term)
    else:
        w = factors[0]
        for k in tl.static_range(1, D):
            w = w * factors[k]
    j = tl.arange(0, F)
    dy_ptrs = dy_ptr + point_group[:, None] * (L * F) + level[:, None] * F + j[None, :]
    value = w[:, None] * tl.load(dy_ptrs, mask=live[:, None], other=0.0).to(COMPUTE)
    start_2d = tl.broadcast_to(starts[:, None], (CHUNK, F))
    sums = _segmented_scan(value, start_2d, CHUNK, STEPS)
    # begun[i]: the row at i started inside this chunk (at or before i).
    begun = tl.cumsum(starts.to(tl.int32), 0) > 0
    last = (tl.arange(0, CHUNK) == CHUNK - 1) | (pos == M - 1)
    whole = live & ends & begun  # the row lies in this chunk: its sum is final
    tl.store(dparams_ptr + row[:, None] * F + j[None, :], sums, mask=whole[:, None])
    head = live & (begun == 0) & (ends | last)
    tl.store(head_ptr + chunk * F + j[None, :] + 0 * pos[:, None], sums, mask=head[:, None])
    tail = live & last & begun & (ends == 0)
    tl.store(tail_ptr + chunk * F + j[None, :] + 0 * pos[:, None], sums, mask=tail[:, None])
    tl.store(tail_row_ptr + chunk + 0 * pos, row, mask=tail)
    runs_on = live & last & (begun == 0) & (ends == 0)
    flags = tl.max(runs_on.to(tl.int32), 0) | (tl.max(tail.to(tl.int32), 0) << 1)
    tl.store(flags_ptr + chunk, flags)


@triton.jit
def grid_chunk_combine_kernel(
    head_ptr,  # (n_chunks, F) from grid_chunk_sum_kernel
    tail_ptr,  # (n_chunks, F)
    tail_row_ptr,  # (n_chunks,) int32
    flags_ptr,  # (n_chunks,) int32
    dparams_ptr,  # (G * E, F) float32/float64: rows that span chunks
    n_chunks,  # number of chunks
    F: tl.constexpr,  # features per entry
    COMPUTE: tl.constexpr,  # tl.float32, or tl.float64 for a float64 table
    BLOCK: tl.constexpr,  # chunks per program
):
    """A row that leaves chunk o: its tail in o, plus the heads of the chunks it runs into."""
    o = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    j = tl.arange(0, F)
    flags = tl.load(flags_ptr + o, mask=o < n_chunks, other=0)
    owner = (flags & 2) != 0
    acc = tl.load(tail_ptr + o[:, None] * F + j[None, :], mask=owner[:, None], other=0.0)
    acc = acc.to(COMPUTE)
    k = o + 1
    active = owner
    while tl.max(active.to(tl.int32), 0) > 0:
        head = tl.load(head_ptr + k[:, None] * F + j[None, :], mask=active[:, None], other=0.0)
        acc = tl.where(active[:, None], acc + head, acc)
        runs_on = (tl.load(flags_ptr + k, mask=active, other=0) & 1) != 0
        active = active & runs_on
        k = k + 1
    row = tl.load(tail_row_ptr + o, mask=owner, other=0)
    tl.store(dparams_ptr + row[:, None] * F + j[None, :], acc, mask=owner[:, None])
