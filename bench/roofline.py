"""Traffic model and measured ceilings of the grid lookup: which bound applies, and how close.

A lookup moves two kinds of bytes (per pass, N points, G groups, d dims, L levels, F
features, T_b bytes per table element, C = 2**d corners):

- **HBM** (compulsory, each byte once): coordinates x (N G d 4, read as float32), the output
  y or the upstream gradient dy (N G L F T_b), dx (N G d 4), every table once (its
  ``params.numel() T_b``), and in the backward the float32 gradient table written twice
  (zero-filled, then written back after the atomics).
- **L2** (what the gathers and atomics cannot avoid even with every table resident): the
  2**d corners of a cell come in pairs adjacent along x (rows next to each other), so a
  pair is one contiguous read of 2 F T_b bytes, i.e. ``ceil(2 F T_b / 32)`` 32-byte
  sectors at best; the backward reads the same pairs for dx and sends one F x 4-byte
  reduction per corner. All HBM traffic crosses L2 too.

Each byte count is divided by a ceiling measured on the same GPU in the same run — a large
device-to-device copy for HBM, a random 16-byte gather from an L2-resident buffer for L2 —
and the larger time is the bound that applies. ``fraction = bound / measured``.
"""

from __future__ import annotations

import math

import torch


def traffic(grid: dict, n_points: int, n_params: int, mode: str, table_bytes: int) -> dict:
    """{"hbm": bytes, "l2": bytes} a pass must move (see the module docstring)."""
    d, levels, features = grid["in_dim"], grid["n_levels"], grid["n_features"]
    points = n_points * grid["n_groups"]
    lookups = points * levels
    pairs = lookups * 2 ** (d - 1)
    pair_bytes = 32 * math.ceil(2 * features * table_bytes / 32)
    x = points * d * 4
    features_bytes = lookups * features * table_bytes
    table = n_params * table_bytes
    forward = {"hbm": x + features_bytes + table, "l2": pairs * pair_bytes}
    reductions = lookups * 2**d * features * 4
    backward = {
        "hbm": x + features_bytes + x + table + 2 * n_params * 4,
        "l2": pairs * pair_bytes + reductions,
    }
    if mode == "forward":
        out = forward
    elif mode == "backward":
        out = backward
    else:
        out = {k: forward[k] + backward[k] for k in forward}
    out["l2"] += out["hbm"]
    return out


def bound_ms(bytes_: dict, ceilings: dict) -> tuple[float, str]:
    """(time of the binding resource in ms, its name)."""
    times = {k: bytes_[k] / (ceilings[k] * 1e9) * 1e3 for k in ("hbm", "l2")}
    name = max(times, key=times.get)
    return times[name], name


def measure_ceilings() -> dict:
    """GB/s of HBM (1 GiB copy, read + write) and of L2 sectors (random 16-byte reads, 16 MiB)."""
    import triton
    import triton.testing

    hbm = _copy_gb_per_s(2**28)  # 1 GiB of float32
    table = torch.randn(2**20, 4, device="cuda")  # 16 MiB: resident in L2
    n = 2**24
    out = torch.empty(triton.cdiv(n, 256), device="cuda")
    run = lambda: _gather_kernel[(triton.cdiv(n, 256),)](table, out, n, table.shape[0], BLOCK=256)
    ms = triton.testing.do_bench(run, quantiles=[0.5])
    l2 = n * 32 / (ms * 1e-3) / 1e9  # each 16-byte read moves one 32-byte sector
    return {"hbm": hbm, "l2": l2}


def _copy_gb_per_s(n: int) -> float:
    import triton.testing

    src = torch.randn(n, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), quantiles=[0.5])
    return 2 * n * 4 / (ms * 1e-3) / 1e9


try:
    import triton
    import triton.language as tl

    @triton.jit
    def _gather_kernel(table_ptr, out_ptr, n, rows, BLOCK: tl.constexpr):
        """Each lane reads one pseudo-random 16-byte row; the program writes one sum."""
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        h = (i.to(tl.uint32) * 2654435761) ^ (i.to(tl.uint32) >> 7)
        row = (h % tl.cast(rows, tl.uint32)).to(tl.int64)
        j = tl.arange(0, 4)
        v = tl.load(table_ptr + row[:, None] * 4 + j[None, :], mask=(i < n)[:, None], other=0.0)
        tl.store(out_ptr + tl.program_id(0), tl.sum(tl.sum(v, 1), 0))

except ImportError:  # pragma: no cover
    pass
