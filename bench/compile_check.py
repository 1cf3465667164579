"""Compile every recorded kernel launch for sm_80 and sm_90 with the installed Triton.

    python bench/compile_check.py                 # one line per failure, a summary; exit 1 on any
    PYTHONPATH=FOLDER python bench/compile_check.py   # the same with the Triton installed in FOLDER

The launches are those of ``bench/kernel_report.py`` (grid: every shape, dtype, path and
in_dim) and ``bench/mlp_kernel_report.py`` (fused MLP: every width, dtype and depth), each
specialization once. CI runs it with the floor Triton of ``pyproject.toml`` installed aside
(``pip install --no-deps --target``), beside the suite's own Triton; docs/grids.md §8 keeps
the table it gave for each Triton. No GPU needed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's gridcodes
sys.path.insert(0, str(Path(__file__).parent))

CAPABILITIES = (80, 90)


def launches() -> list:
    """Every recorded launch, one per specialization (as Triton's launch cache keys it), in
    a fixed order (each compile process records them again: kernels do not pickle)."""
    import kernel_report
    import mlp_kernel_report

    from gridcodes import MultiResGrid
    from gridcodes.compiled import launch_key, record_launches, record_mlp_launches

    recorded = []
    for _, grid_kwargs, n_points, keywords in kernel_report.variants():
        grid = MultiResGrid(**grid_kwargs, backend="triton")
        recorded += record_launches(grid, n_points, **keywords)
    for _, spec in mlp_kernel_report.variants():
        recorded += record_mlp_launches(spec, mlp_kernel_report.N_ROWS)
    unique = {}
    for launch in recorded:
        unique.setdefault(launch_key(launch), launch)
    return list(unique.values())


_LAUNCHES: list = []


def check(job) -> dict:
    from gridcodes.compiled import inspect_launch

    index, capability = job
    if not _LAUNCHES:
        _LAUNCHES.extend(launches())
    launch = _LAUNCHES[index]
    row = {"kernel": launch.name, "capability": capability}
    try:
        report = inspect_launch(launch, capability)
    except Exception as error:  # every failure is reported; none stops the run
        first = str(error).strip().splitlines()
        return {**row, "error": f"{type(error).__name__}: {first[0] if first else ''}"[:300]}
    spill = report.stack_bytes + report.local_bytes
    return {**row, "registers": report.registers, "spill_bytes": spill}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="PATH", help="also write every row to PATH")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="compile processes")
    args = parser.parse_args()
    import triton

    start = time.perf_counter()
    n_launches = len(launches())
    jobs = [(index, capability) for index in range(n_launches) for capability in CAPABILITIES]
    with ProcessPoolExecutor(args.workers) as pool:
        rows = list(pool.map(check, jobs))
    failed = [row for row in rows if "error" in row]
    spilled = [row for row in rows if row.get("spill_bytes")]
    for row in failed:
        print(f"FAILED {row['kernel']} sm_{row['capability']}: {row['error']}")
    print(
        f"triton {triton.__version__}: {len(rows) - len(failed)} of {len(rows)} compiled "
        f"({n_launches} launches x sm_80, sm_90), "
        f"{len(spilled)} with spills, {time.perf_counter() - start:.0f} s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"triton": triton.__version__, "rows": rows}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
