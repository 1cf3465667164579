"""Static report of the compiled kernels for sm_90 (Hopper), made without a GPU.

    python bench/kernel_report.py               # table + bench/results/kernel_report.{json,md}
    python bench/kernel_report.py --json -      # JSON on stdout (used by the tests)

Every launch of a forward + backward is compiled exactly as it would be specialized
(``gridcodes/compiled.py``) for each variant below, and its SASS is read: registers,
stack / local memory (spills), instruction count, loads, stores, reductions and atomics by
kind and width, fences. Also the critical path of the deterministic table gradient on the
BRICS training shape, from the rows real BRICS queries hit (tile-cell positions of a
64x64 tile and uniform key codes): the longest chain of dependent additions, against the
per-level serial segment walk this design replaced.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # models/ of this checkout
sys.path.insert(0, str(Path(__file__).parent))
from bench_grid import SHAPES
from common import RESULTS, environment, write_results

from gridcodes import MultiResGrid, ops
from gridcodes.compiled import inspect_launch, launch_key, record_launches

BRICS = SHAPES["brics"]
NGP = SHAPES["ngp"]
SMALL = dict(n_groups=2, n_levels=4, log2_table_size=10, base_resolution=4, max_resolution=40)
F64 = {"table_dtype": torch.float64}
TCNN_HASH = dict(
    in_dim=3,
    n_levels=16,
    n_features=2,
    log2_table_size=19,
    base_resolution=16,
    per_level_scale=1.3819,
    convention="tcnn",
)
TCNN_TILED = dict(TCNN_HASH, grid_type="tiled", n_levels=4, per_level_scale=2.0)


def variants():
    """(name, grid kwargs, n_points, record_launches keywords)."""
    for shape in SHAPES.values():
        yield shape.name, shape.grid, shape.n_points, {}
        yield f"{shape.name} det", shape.grid, shape.n_points, {"deterministic": True}
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        name = f"brics table {str(dtype).removeprefix('torch.')}"
        yield name, BRICS.grid, BRICS.n_points, {"table_dtype": dtype}
    for dtype in (torch.float16, torch.bfloat16):
        name = f"brics x {str(dtype).removeprefix('torch.')}"
        yield name, BRICS.grid, BRICS.n_points, {"x_dtype": dtype}
    yield "brics frozen x", BRICS.grid, BRICS.n_points, {"need_dx": False}
    yield "brics frozen table", BRICS.grid, BRICS.n_points, {"need_dparams": False}
    # Sizes of 1 arrive as compile-time constants, not tensors (a case the interpreter hides).
    ones = dict(SMALL, in_dim=3, n_features=4, n_groups=1, n_levels=1, grid_type="hash")
    yield "1 point, 1 group, 1 level", ones, 1, {}
    yield "1 point, 1 group, 1 level det", ones, 1, {"deterministic": True}
    for d, f in ((1, 1), (2, 8), (4, 2)):
        grid = dict(SMALL, in_dim=d, n_features=f, grid_type="hash", interpolation="smoothstep")
        yield f"d={d} F={f} smoothstep", grid, 1000, {}
        yield f"d={d} F={f} smoothstep det", grid, 1000, {"deterministic": True}
        yield f"d={d} F={f} smoothstep double", grid, 1000, {"double_backward": True}
    # Second-order gradients (the double backward's kernel after a forward + backward).
    double = {"double_backward": True}
    yield "brics double", BRICS.grid, BRICS.n_points, double
    yield "ngp double", NGP.grid, NGP.n_points, double
    yield "ngp double det", NGP.grid, NGP.n_points, {**double, "deterministic": True}
    yield "brics double table float64", BRICS.grid, BRICS.n_points, {**double, **F64}
    # tcnn's convention: fused positions; one conditional subtraction (hash) or a modulo (tiled).
    yield "ngp tcnn", TCNN_HASH, NGP.n_points, double
    yield "tiled tcnn", TCNN_TILED, NGP.n_points, double


def report() -> dict:
    rows = []
    summaries = {}  # launch_key -> summary: variants share many specializations
    for name, grid_kwargs, n_points, keywords in variants():
        grid = MultiResGrid(**grid_kwargs, backend="triton")
        table_dtype = keywords.get("table_dtype", torch.float32)
        for launch in record_launches(grid, n_points, **keywords):
            key = launch_key(launch)
            if key not in summaries:
                summaries[key] = inspect_launch(launch).summary()
            summary = summaries[key]
            features = grid_kwargs["n_features"]
            row = {"variant": name, "in_dim": grid_kwargs["in_dim"], "n_features": features}
            row.update(
                table=str(table_dtype).removeprefix("torch."),
                atomic_scatter=bool(launch.kwargs.get("PARAM_GRAD", False)),
                fused=bool(launch.kwargs.get("FUSED", False)),
                reduce=int(launch.kwargs.get("REDUCE", 0)),
                num_warps=launch.kwargs["num_warps"],
                **summary,
            )
            row["no_contraction"] = not summary["fma"]
            rows.append(row)
    return {"rows": rows, "critical_path": critical_path()}


def brics_rows() -> tuple[MultiResGrid, torch.Tensor]:
    """Flat table rows (per level) that one BRICS training batch reads: (L, N * G * 2**d)."""
    from models.retrieval import combined_key_code

    c = BRICS.grid
    grid = MultiResGrid(**c, backend="torch")
    images = BRICS.n_points // (64 * 64)
    torch.manual_seed(0)
    tiled = torch.rand(images, c["n_groups"], 64, 64)  # key codes, one per group and cell
    queries = combined_key_code(tiled, 1).reshape(-1, c["n_groups"], c["in_dim"])
    from gridcodes.reference import corner_rows

    rows = corner_rows(queries, grid.config)  # (N, G, L, C) within a group
    group = torch.arange(c["n_groups"])[None, :, None, None] * grid.config.n_entries
    return grid, (rows + group).permute(2, 0, 1, 3).reshape(c["n_levels"], -1)


def critical_path() -> dict:
    """Dependent additions of the deterministic table gradient on the BRICS shape."""
    _, rows = brics_rows()
    # Before: per level, one program walked a row's contributions one by one, and the
    # levels ran one after another.
    per_level = [int(torch.unique(r, return_counts=True)[1].max()) for r in rows]
    before = sum(per_level)
    # Now: one sort of all levels; a chunk's segmented scan is log2(CHUNK) steps, then the
    # chunk-combine walks the chunks a row spans after its first.
    chunk = ops.CHUNK  # this script runs the compiled kernels' value (never the interpreter's)
    ordered = torch.sort(rows.flatten()).values
    position = torch.arange(ordered.numel())
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[1:] = ordered[1:] != ordered[:-1]
    last = torch.ones_like(first)
    last[:-1] = first[1:]
    spans = position[last] // chunk - position[first] // chunk  # chunks after the first
    after = int(math.log2(chunk)) + int(spans.max())
    return {
        "contributions": ordered.numel(),
        "longest_row": int(torch.unique(ordered, return_counts=True)[1].max()),
        "before_steps": before,
        "before_per_level": per_level,
        "after_steps": after,
        "after_scan_steps": int(math.log2(chunk)),
        "after_combine_steps": int(spans.max()),
        "chunk": chunk,
        "ratio": before / after,
    }


def markdown(data: dict) -> str:
    env = data["environment"]
    lines = [
        "# Compiled kernels for sm_90 (static report, no GPU)",
        "",
        f"{env['date']}; torch {env['torch']}, triton {env['triton']}; "
        "`python bench/kernel_report.py`. Registers and spills from `cuobjdump -res-usage`, "
        "instructions from `cuobjdump -sass` of each launch compiled as it specializes.",
        "",
        "| variant | kernel | regs | stack+local B | SASS instr. | loads | reductions / atomics "
        "| fences | no FMA contraction |",
        "|---|---|---:|---:|---:|---|---|---|---|",
    ]
    fmt = lambda d: ", ".join(f"{k}×{v}" for k, v in sorted(d.items())) or "—"
    for r in data["rows"]:
        lines.append(
            f"| {r['variant']} | {r['kernel'].removeprefix('grid_').removesuffix('_kernel')} | "
            f"{r['registers']} | {r['stack_bytes'] + r['local_bytes']} | {r['instructions']} | "
            f"{fmt(r['loads'])} | {fmt({**r['reductions'], **r['atomics']})} | "
            f"{fmt(r['fences'])} | {'yes' if r['no_contraction'] else 'NO'} |"
        )
    cp = data["critical_path"]
    lines += [
        "",
        "Deterministic table gradient, BRICS training shape "
        f"({cp['contributions']:,} contributions, longest row {cp['longest_row']:,}): critical "
        f"path {cp['before_steps']:,} dependent additions before (per-level serial segment walk, "
        f"summed over the 16 levels) -> {cp['after_steps']} now ({cp['after_scan_steps']} scan "
        f"steps in a chunk of {cp['chunk']} + {cp['after_combine_steps']} chunk combines), "
        f"{cp['ratio']:.0f}x shorter.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--json", default=None, help="write the JSON here instead ('-': stdout, no files)"
    )
    args = parser.parse_args()
    if ops.INTERPRET:
        parser.error("unset TRITON_INTERPRET: the report compiles the real kernels")

    env = environment("cpu")  # compiled here for sm_90; no GPU runs the code
    data = {
        "environment": {k: env[k] for k in ("date", "torch", "triton")} | {"target": "sm_90"},
        **report(),
    }
    if args.json == "-":
        json.dump(data, sys.stdout)
        return
    stem = Path(args.json).with_suffix("") if args.json else RESULTS / "kernel_report"
    write_results(stem, data, markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
