"""Static report of the fused MLP's compiled kernels for sm_80 and sm_90, made without a GPU.

    python bench/mlp_kernel_report.py            # table + bench/results/mlp_kernel_report.*
    python bench/mlp_kernel_report.py --json -     # JSON on stdout (used by the tests)

Every launch of a forward + backward (``gridcodes.compiled.record_mlp_launches``) is
compiled as a real launch specializes it, for each width (16..128), dtype (float16; and
bfloat16 at widths 64 and 128), depth and target, and its SASS read: registers, stack and
local memory (spills), tensor-core instructions (HMMA on sm_80; HGMMA, Hopper's warpgroup
MMA, on sm_90), reductions (the weight gradients' atomics) and fences.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, environment, write_results

from gridcodes.compiled import inspect_launch, record_mlp_launches
from gridcodes.mlp_ops import MLPSpec
from gridcodes.mlp_reference import MLPLayout

CAPABILITIES = (80, 90)
N_ROWS = 2**18  # tcnn's sample batch


def variants():
    """(name, MLPSpec): every width and dtype at tcnn's sample depth, then depths and edges."""
    for width in (16, 32, 64, 128):
        for dtype in (torch.float16, torch.bfloat16) if width >= 64 else (torch.float16,):
            name = f"width {width} {str(dtype).removeprefix('torch.')}"
            yield name, MLPSpec(MLPLayout(32, 3, width, 2), dtype=dtype)
    yield "width 64 depth 1", MLPSpec(MLPLayout(32, 3, 64, 1))
    yield "width 128 depth 8", MLPSpec(MLPLayout(32, 3, 128, 8))
    yield "width 64 in 48 out 40", MLPSpec(MLPLayout(48, 40, 64, 2))  # blocks beyond the pads
    yield "width 64 tanh sigmoid", MLPSpec(MLPLayout(16, 4, 64, 2), "Tanh", "Sigmoid")
    yield "width 64 deterministic", MLPSpec(MLPLayout(32, 3, 64, 2), deterministic=True)


def inspect(job) -> list[dict]:
    name, spec, capability = job
    rows = []
    for launch in record_mlp_launches(spec, N_ROWS):
        compiled = inspect_launch(launch, capability)
        summary = compiled.summary()
        opcodes = Counter(line.split()[0].split(".")[0] for line in compiled.sass)
        rows.append(
            {
                "variant": name,
                "capability": capability,
                "width": spec.layout.width,
                "dtype": str(spec.dtype).removeprefix("torch."),
                "n_hidden_layers": spec.layout.n_hidden_layers,
                "rows_per_program": launch.kwargs["BLOCK_M"],
                "num_warps": launch.kwargs["num_warps"],
                "HMMA": opcodes.get("HMMA", 0),
                "HGMMA": opcodes.get("HGMMA", 0),
                **summary,
            }
        )
    return rows


def report(workers: int) -> dict:
    jobs = [(name, spec, cap) for name, spec in variants() for cap in CAPABILITIES]
    with ProcessPoolExecutor(workers) as pool:
        rows = [row for result in pool.map(inspect, jobs) for row in result]
    return {"rows": rows}


def markdown(data: dict) -> str:
    lines = [
        "| variant | sm | kernel | registers | stack | HMMA | HGMMA | reductions |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        reds = sum(r["reductions"].values())
        lines.append(
            f"| {r['variant']} | {r['capability']} | {r['kernel']} | {r['registers']} | "
            f"{r['stack_bytes']} | {r['HMMA']} | {r['HGMMA']} | {reds} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None, help="write the JSON here ('-': stdout)")
    parser.add_argument("--workers", type=int, default=2, help="parallel compiler processes")
    args = parser.parse_args()
    env = environment("cpu")  # compiled here for sm_80 and sm_90; no GPU runs the code
    data = {"environment": env, **report(args.workers)}
    if args.json == "-":
        json.dump(data, sys.stdout)
        return
    stem = RESULTS / "mlp_kernel_report"
    write_results(stem, data, markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
