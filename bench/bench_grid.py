"""Benchmark of MultiResGrid: Triton kernels vs the eager reference vs torch.compile(reference).

    python bench/bench_grid.py                      # all shapes, modes, providers; CUDA
    python bench/bench_grid.py --shapes brics --providers triton torch
    python bench/bench_grid.py --device cpu --providers torch compile   # no GPU

Times forward, backward and forward+backward with ``triton.testing.do_bench`` (median
and 20/80 % quantiles), rotating over several input sets so repeated runs do not just
measure the cache, and reports ms, points/s and effective GB/s. Also measures the
extra device memory of one forward+backward of the BRICS shape at batch 1 (one image).
Writes a JSON of every row (with GPU, versions, date and exact shapes) and a Markdown
table under ``bench/results/``.

Effective bytes (the fewest bytes each pass must move, every table read counted as a
separate access, i.e. no cache reuse; T_b = bytes of a table element):
    forward  = N G (4 d + L 2**d F T_b + L F T_b)                  x, gathers, y
    backward = N G (4 d + L F T_b + L 2**d F T_b + 2 L 2**d F 4 + 4 d)
                                          x, dy, gathers for dx, atomic read+write, dx
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from gridcodes import MultiResGrid
from gridcodes.reference import grid_encode_reference

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Shape:
    name: str
    description: str
    n_points: int
    grid: dict


SHAPES = {
    "brics": Shape(
        "brics",
        "BRICS training: 12 images x 64x64 tiled cells, 4 groups, d=3, "
        "16 levels 4->64, F=4, T=2^18",
        12 * 64 * 64,
        dict(
            in_dim=3,
            n_groups=4,
            n_levels=16,
            n_features=4,
            log2_table_size=18,
            base_resolution=4,
            max_resolution=64,
            grid_type="tiled",
        ),
    ),
    "ngp": Shape(
        "ngp",
        "Instant-NGP: 2^20 points, 1 group, d=3, 16 levels 16->2048, F=2, hashed, T=2^19",
        2**20,
        dict(
            in_dim=3,
            n_groups=1,
            n_levels=16,
            n_features=2,
            log2_table_size=19,
            base_resolution=16,
            max_resolution=2048,
            grid_type="hash",
        ),
    ),
    "image2d": Shape(
        "image2d",
        "2-D image fitting: 2^18 points, 1 group, d=2, 16 levels 16->1024, F=2, hashed, T=2^16",
        2**18,
        dict(
            in_dim=2,
            n_groups=1,
            n_levels=16,
            n_features=2,
            log2_table_size=16,
            base_resolution=16,
            max_resolution=1024,
            grid_type="hash",
        ),
    ),
}
MODES = ("forward", "backward", "full")
PROVIDERS = ("triton", "torch", "compile")
N_INPUT_SETS = 4


def effective_bytes(shape: Shape, mode: str, table_bytes: int) -> int:
    g = shape.grid
    d, levels, features = g["in_dim"], g["n_levels"], g["n_features"]
    per_point = {
        "forward": 4 * d + levels * 2**d * features * table_bytes + levels * features * table_bytes,
        "backward": 4 * d
        + levels * features * table_bytes
        + levels * 2**d * features * table_bytes
        + 2 * levels * 2**d * features * 4
        + 4 * d,
    }
    per_point["full"] = per_point["forward"] + per_point["backward"]
    return shape.n_points * g["n_groups"] * per_point[mode]


def build(shape: Shape, provider: str, device: str, n_points: int | None = None):
    """Grid, lookup function and N_INPUT_SETS input sets for one provider."""
    backend = "triton" if provider == "triton" else "torch"
    grid = MultiResGrid(**shape.grid, backend=backend).to(device)
    with torch.no_grad():
        grid.params.normal_()
    n = shape.n_points if n_points is None else n_points
    g, d = shape.grid["n_groups"], shape.grid["in_dim"]
    inputs = [torch.rand(n, g, d, device=device, requires_grad=True) for _ in range(N_INPUT_SETS)]
    if provider == "compile":
        config = grid.config
        lookup = torch.compile(lambda x: grid_encode_reference(x, grid.params, config))
    else:
        lookup = grid
    return grid, lookup, inputs


def time_mode(grid, lookup, inputs, mode: str, device: str) -> tuple[float, float, float]:
    """(median, p20, p80) milliseconds of one pass, cycling through the input sets."""
    state = {"i": 0}
    dys = [torch.randn_like(lookup(x)) for x in inputs]

    def next_index():
        state["i"] = (state["i"] + 1) % len(inputs)
        return state["i"]

    if mode == "forward":

        def fn():
            with torch.no_grad():
                lookup(inputs[next_index()])

    elif mode == "full":

        def fn():
            i = next_index()
            lookup(inputs[i]).backward(dys[i])

    else:
        outputs = [lookup(x) for x in inputs]

        def fn():
            i = next_index()
            outputs[i].backward(dys[i], retain_graph=True)

    grad_to_none = [grid.params, *inputs]
    if device == "cuda":
        import triton.testing

        return tuple(
            triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8], grad_to_none=grad_to_none)
        )
    return _cpu_bench(fn, grad_to_none)


def _cpu_bench(fn, grad_to_none, repeats: int = 10) -> tuple[float, float, float]:
    import time

    fn()
    times = []
    for _ in range(repeats):
        for t in grad_to_none:
            t.grad = None
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    q = torch.tensor(times).quantile(torch.tensor([0.5, 0.2, 0.8])).tolist()
    return tuple(q)


def retrieval_memory_mb(shape: Shape, provider: str) -> dict:
    """Extra CUDA memory of one forward+backward at batch 1 (one image).

    Counts everything beyond the table and its gradient: x, y, dy, dx, workspaces.
    """
    images = 12 if shape.name == "brics" else 1
    grid, lookup, inputs = build(shape, provider, "cuda", n_points=shape.n_points // images)
    x = inputs[0]
    lookup(x).sum().backward()  # warm-up: compilation, autotuning
    grid.params.grad = None  # as after optimizer.zero_grad()
    x.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    y = lookup(x)
    y.backward(torch.ones_like(y))
    torch.cuda.synchronize()
    grad_bytes = grid.params.grad.numel() * grid.params.grad.element_size()
    peak = torch.cuda.max_memory_allocated() - base - grad_bytes
    return {"provider": provider, "points": x.shape[0], "extra_peak_mb": peak / 2**20}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str) -> dict:
    import triton

    env = {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name() if device == "cuda" else cpu_name(),
    }
    if device == "cuda":
        env["cuda"] = torch.version.cuda
    return env


def _ratio(other: dict | None, row: dict) -> str:
    return f"{other['ms'] / row['ms']:.1f}x" if other else "—"


def markdown(env: dict, rows: list[dict], memory: list[dict]) -> str:
    lines = [
        f"# MultiResGrid benchmark — {env['device']}",
        "",
        f"{env['date']}; torch {env['torch']}, triton {env['triton']}"
        + (f", CUDA {env['cuda']}" if "cuda" in env else ""),
        "",
        "| shape | mode | provider | ms (median) | ms p20–p80 | Mpoints/s | eff. GB/s "
        "| vs eager | vs compile |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    index = {(r["shape"], r["mode"], r["provider"]): r for r in rows}
    for r in rows:
        eager = index.get((r["shape"], r["mode"], "torch"))
        comp = index.get((r["shape"], r["mode"], "compile"))
        lines.append(
            f"| {r['shape']} | {r['mode']} | {r['provider']} | {r['ms']:.3f} | "
            f"{r['ms_p20']:.3f}–{r['ms_p80']:.3f} | {r['points_per_s'] / 1e6:.1f} | "
            f"{r['gb_per_s']:.0f} | {_ratio(eager, r)} | {_ratio(comp, r)} |"
        )
    if memory:
        lines += ["", "Extra memory of one forward+backward, BRICS shape at batch 1:", ""]
        lines += [
            f"- {m['provider']}: {m['extra_peak_mb']:.2f} MB ({m['points']} points)" for m in memory
        ]
    lines += ["", "Shapes:", ""] + [f"- `{s.name}`: {s.description}" for s in SHAPES.values()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shapes", nargs="+", choices=SHAPES, default=list(SHAPES), help="benchmark shapes to run"
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=MODES,
        default=list(MODES),
        help="passes to time: forward, backward, forward+backward (full)",
    )
    parser.add_argument(
        "--providers",
        nargs="+",
        choices=PROVIDERS,
        default=list(PROVIDERS),
        help="triton kernels, eager reference (torch), torch.compile(reference)",
    )
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="cpu runs only the reference providers",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output stem (default: bench/results/grid_<device name>)",
    )
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device; use --device cpu --providers torch compile")
    if args.device == "cpu" and "triton" in args.providers:
        parser.error("the triton provider needs --device cuda")

    env = environment(args.device)
    rows, memory = [], []
    for shape in (SHAPES[s] for s in args.shapes):
        for provider in args.providers:
            grid, lookup, inputs = build(shape, provider, args.device)
            for mode in args.modes:
                ms, p20, p80 = time_mode(grid, lookup, inputs, mode, args.device)
                table_bytes = grid.params.element_size()
                rows.append(
                    {
                        **env,
                        "shape": shape.name,
                        "grid": shape.grid,
                        "n_points": shape.n_points,
                        "mode": mode,
                        "provider": provider,
                        "ms": ms,
                        "ms_p20": p20,
                        "ms_p80": p80,
                        "points_per_s": shape.n_points / (ms * 1e-3),
                        "gb_per_s": effective_bytes(shape, mode, table_bytes) / (ms * 1e-3) / 1e9,
                    }
                )
                print(f"{shape.name:8s} {mode:8s} {provider:8s} {ms:9.3f} ms")
            del grid, lookup, inputs
        if shape.name == "brics" and args.device == "cuda":
            memory = [retrieval_memory_mb(shape, p) for p in args.providers]
    stem = args.out or RESULTS / f"grid_{env['device'].replace(' ', '_')}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    shapes = {name: asdict(s) for name, s in SHAPES.items()}
    payload = {"environment": env, "shapes": shapes, "rows": rows, "memory": memory}
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=1))
    stem.with_suffix(".md").write_text(markdown(env, rows, memory))
    print(markdown(env, rows, memory))


if __name__ == "__main__":
    main()
