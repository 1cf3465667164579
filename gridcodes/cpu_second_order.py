"""The CPU backend's double backward: the gradient of (dL/dx, dL/dparams) w.r.t. dL/dy, x
and the table, with the cells, rows and bags of ``cpu.py``.

docs/tcnn.md ("Second-order gradients") derives it; the Triton kernel
(``kernels.grid_double_backward_kernel``) computes the same terms. With ``h`` the upstream
gradient of dL/dx (0 outside [0, 1]), per level the scale ``a``, ``t_k = h_k a s'_k`` and
the factors ``fac_k = (1 - s_k, s_k)``:

- the directional weights ``v_c = sum_k h_k dw_c/dx_k`` are the derivative part of the
  product of dual numbers ``prod_k (fac_k + eps (-t_k, +t_k))``;
- d/d(dL/dy) is a bag of the table with weights ``v`` and d/dparams the scatter of
  ``v * dL/dy``;
- d/dx_m is ``a sum_c <P_c, g> sigma_m [s'_m D_m(c) + a s''_m h_m V_m(c)]``, with ``V_m`` and
  ``D_m`` the value and derivative parts of the same dual product over the axes o != m:
  one bag per axis with these signed weights.

The upstream gradient of dL/dparams adds a bag of it with the weights ``w`` (to
d/d(dL/dy)) and the first backward's dL/dx with it as the table (to d/dx).
"""

from __future__ import annotations

import torch

from .cpu import (
    Geometry,
    _bags,
    _Chunk,
    _chunks,
    _coords,
    _differences,
    _dx,
    _gradient_columns,
    _gradient_table,
    _positions,
    _rows,
    _scatter_sources,
    _weights,
)
from .reference import compute_dtype


def _dual_products(values: list, derivatives: list, like: torch.Tensor):
    """Value and derivative parts of ``prod_k (values[k] + eps derivatives[k])`` at every corner
    of the given axes, corner first (2**k, ...), axis 0 the fastest bit. No axes: (1, 0)."""
    if not values:
        return torch.ones_like(like)[None], torch.zeros_like(like)[None]
    value, derivative = values[0], derivatives[0]
    for pv, pd in zip(values[1:], derivatives[1:]):
        derivative = (pd[:, None] * value[None] + pv[:, None] * derivative[None]).flatten(0, 1)
        value = (pv[:, None] * value[None]).flatten(0, 1)
    return value, derivative


def _signed_corners(half: torch.Tensor, axis: int, d: int) -> torch.Tensor:
    """Corner-last (..., 2**d) array ``sigma_axis(c) * half[c without bit axis]`` from ``half``
    (2**(d-1), ...) over the other axes, corner first."""
    out = torch.empty(*half.shape[1:], 2**d, dtype=half.dtype)
    low = (1 << axis) - 1
    for c in range(2**d):
        column = half[(c & low) | (c >> (axis + 1) << axis)]
        out[..., c] = column if c >> axis & 1 else -column
    return out


def _cell_slopes(f: torch.Tensor, smoothstep: bool):
    """``s``, ``ds/df`` and ``d2s/df2`` (None for linear) of fractions ``f``."""
    if smoothstep:
        return f * f * (3.0 - 2.0 * f), 6.0 * f * (1.0 - f), 6.0 - 12.0 * f
    return f, torch.ones_like(f), None


def _present(t: torch.Tensor | None) -> bool:
    return t is not None and t.numel() > 0


def double_backward(hx, hparams, dy, x, params, geo: Geometry, need_ddy, need_dx, need_dparams):
    """Gradients w.r.t. (dL/dy (N, G, L*F), x (N, G, d), params (G, E, F)) of the first
    backward's outputs, given their upstream gradients ``hx`` (N, G, d) and ``hparams``
    (G, E, F), either None. Returns each gradient in its input's dtype, or None."""
    dtype = compute_dtype(params)
    n, groups, d = x.shape
    n_levels, n_features = geo.scale.shape[0], params.shape[-1]
    n_corners = 2**d
    with_h, with_hp = _present(hx), _present(hparams)
    entries = params.detach().to(dtype).reshape(-1, n_features)
    inside = (x >= 0) & (x <= 1)  # False for NaN
    if with_h:
        h = torch.where(inside, hx.detach().to(dtype), 0.0).permute(2, 0, 1)  # (d, N, G)
    if with_hp:
        h_entries = hparams.detach().to(dtype).reshape(-1, n_features)
        h_diffs = _differences(h_entries, geo) if need_dx else []
    ddy = torch.zeros(n_levels, n, groups, n_features, dtype=dtype) if need_ddy else None
    dx = torch.zeros(d, n, groups, dtype=dtype) if need_dx else None
    columns = _gradient_columns(len(entries), n_features, dtype) if need_dparams and with_h else []
    dy_all = dy.detach().reshape(n, groups, n_levels, n_features).to(dtype).permute(2, 0, 1, 3)
    for start, stop in _chunks(n, groups * n_levels * n_corners):
        i, f = _positions(_coords(x[start:stop], dtype), geo)  # (d, L, m, G)
        rows = _rows(i.long(), geo)  # (L, m, G, C)
        s, slope, curve = _cell_slopes(f, geo.smoothstep)
        factors = torch.stack((1.0 - s, s), dim=1)  # (d, 2, L, m, G)
        dy_l = dy_all[:, start:stop].contiguous()  # dL/dy level-major (L, m, G, F)
        flat_dy = dy_l.view(-1, n_features)
        if with_h:
            t = h[:, None, start:stop] * geo.scale * slope  # (d, L, m, G)
            pairs = [torch.stack((-t[k], t[k])) for k in range(d)]
            _, v = _dual_products(list(factors), pairs, s[0])
            v = v.permute(1, 2, 3, 0).contiguous()  # (L, m, G, C)
            if need_ddy:
                ddy[:, start:stop] += _bags(rows.view(-1, n_corners), entries, v).view_as(dy_l)
            if need_dparams:
                for column, source in zip(columns, _scatter_sources(v, dy_l)):
                    column.index_add_(0, rows.view(-1), source)
            if need_dx:
                for m in range(d):
                    others = [k for k in range(d) if k != m]
                    value, derivative = _dual_products(
                        [factors[k] for k in others], [pairs[k] for k in others], s[0]
                    )
                    inner = slope[m] * derivative
                    if curve is not None:
                        inner = inner + geo.scale * curve[m] * h[m, None, start:stop] * value
                    weights = _signed_corners(inner, m, d)  # (L, m, G, C)
                    bag = _bags(rows.view(-1, n_corners), entries, weights)  # (M, F)
                    dots = (bag * flat_dy).sum(-1).view(n_levels, -1, groups)
                    dx[m, start:stop] += (dots * geo.scale).sum(0)
        if with_hp:
            w = _weights(factors)
            if need_ddy:
                ddy[:, start:stop] += _bags(rows.view(-1, n_corners), h_entries, w).view_as(dy_l)
            if need_dx:
                ds_df = slope if geo.smoothstep else None
                chunk = _Chunk(start, stop, rows, w, factors, ds_df)
                dx[:, start:stop] += _dx(chunk, h_entries, h_diffs, dy_l, geo)
    if need_ddy:
        ddy = ddy.permute(1, 2, 0, 3).reshape(dy.shape).to(dy.dtype)
    if need_dx:
        dx = torch.where(inside, dx.permute(1, 2, 0), 0.0).to(x.dtype)
    dparams = None
    if need_dparams:
        if with_h:
            dparams = _gradient_table(columns).view(params.shape).to(params.dtype)
        else:
            dparams = torch.zeros_like(params)
    return ddy, dx, dparams
