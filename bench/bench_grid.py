"""Benchmark of MultiResGrid: Triton kernels / the CPU backend vs the eager reference vs
torch.compile(reference).

    python bench/bench_grid.py --all                # everything below, in one GPU command
    python bench/bench_grid.py --shapes brics --providers triton torch
    python bench/bench_grid.py --sweep              # tuning: block, warps, levels per program
    python bench/bench_grid.py --device cpu         # no GPU: CPU backend vs eager reference

Times forward, backward and forward+backward (median and 20/80 % quantiles) with
``triton.testing.do_bench`` on the GPU and, on the CPU, with the providers alternating in
rounds; rotating over several input sets so repeated runs do not just measure the cache;
and reports ms, points/s and the fraction of the roofline bound that
applies (``bench/roofline.py``: HBM and L2 bytes per pass over ceilings measured in the
same run). Providers: ``triton`` (atomic table gradient), ``triton-det`` (deterministic),
``cpu`` (the CPU backend), ``torch`` (eager reference), ``compile`` (``torch.compile`` of
the reference). On the CPU, shapes are capped at ``--max-points`` points. Also
measures the extra device memory of one forward+backward of the BRICS shape at batch 1
(one image). ``--all`` first runs the kernel-equivalence tests compiled on the GPU (more
drawn examples than CI). Writes a JSON of every row (with GPU, versions, date and exact
shapes) and a Markdown table under ``bench/results/``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import roofline
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # train/ is not installed

from common import alternate, cuda_quantiles, environment, result_stem, write_results

from gridcodes import MultiResGrid
from gridcodes.levels import GridConfig
from gridcodes.reference import grid_encode_reference
from train.core.cpu_memory import keep_freed_memory


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
    "small64": Shape(
        "small64",
        "small-64 training step: 8 images x 32x32 tiled cells, 4 groups, d=3, "
        "16 levels 4->32, F=4, T=2^14",
        8 * 32 * 32,
        dict(
            in_dim=3,
            n_groups=4,
            n_levels=16,
            n_features=4,
            log2_table_size=14,
            base_resolution=4,
            max_resolution=32,
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
PROVIDERS = ("triton", "triton-det", "cpu", "torch", "compile")
DEFAULT_PROVIDERS = {"cuda": ("triton", "triton-det", "torch", "compile"), "cpu": ("cpu", "torch")}
N_INPUT_SETS = 4


def build(shape: Shape, provider: str, device: str, n_points: int | None = None):
    """Grid, lookup function and N_INPUT_SETS input sets for one provider."""
    backend = "triton" if provider.startswith("triton") else provider.replace("compile", "torch")
    deterministic = provider == "triton-det"
    grid = MultiResGrid(**shape.grid, backend=backend, deterministic=deterministic).to(device)
    with torch.no_grad():
        grid.params.normal_()
    n = shape.n_points if n_points is None else n_points
    g, d = shape.grid["n_groups"], shape.grid["in_dim"]
    inputs = [torch.rand(n, g, d, device=device, requires_grad=True) for _ in range(N_INPUT_SETS)]
    if provider == "compile":
        # The backward mode re-runs one graph's backward (retain_graph), which donated
        # buffers forbid.
        torch._functorch.config.donated_buffer = False
        config = grid.config
        lookup = torch.compile(lambda x: grid_encode_reference(x, grid.params, config))
    else:
        lookup = grid
    return grid, lookup, inputs


def pass_fn(grid, lookup, inputs, mode: str):
    """One pass of ``mode`` (cycling through the input sets) and the tensors whose
    gradients are reset before each timed pass."""
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

    return fn, [grid.params, *inputs]


def measure(shape: Shape, providers, modes, device: str) -> dict:
    """``{(provider, mode): (median, p20, p80) ms}``.

    CUDA: ``triton.testing.do_bench``, one provider after the other. CPU: a virtual
    machine's speed drifts by 20-70 % within minutes, so the providers alternate in rounds
    (``CPU_ROUNDS`` of ``CPU_REPEATS`` passes each) and every provider sees the same drift.
    """
    out = {}
    if device == "cuda":
        for provider in providers:
            grid, lookup, inputs = build(shape, provider, device)
            for mode in modes:
                out[provider, mode] = cuda_quantiles(*pass_fn(grid, lookup, inputs, mode))
                print(f"{shape.name:8s} {mode:8s} {provider:10s} {out[provider, mode][0]:9.3f} ms")
            del grid, lookup, inputs
        return out
    builds = {provider: build(shape, provider, device) for provider in providers}
    for mode in modes:
        passes = {provider: pass_fn(*builds[provider], mode) for provider in providers}
        quantiles = torch.tensor([0.5, 0.2, 0.8])
        for provider, seconds in alternate(passes, CPU_ROUNDS, CPU_REPEATS).items():
            out[provider, mode] = tuple((torch.tensor(seconds) * 1e3).quantile(quantiles).tolist())
            print(f"{shape.name:8s} {mode:8s} {provider:10s} {out[provider, mode][0]:9.3f} ms")
    return out


CPU_ROUNDS, CPU_REPEATS = 5, 2
TABLE_BYTES = 4  # bytes per table entry: every benchmark grid is float32 (MultiResGrid's default)


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


def _ratio(other: dict | None, row: dict) -> str:
    return f"{other['ms'] / row['ms']:.1f}x" if other else "—"


def markdown(env: dict, rows: list[dict], memory: list[dict], extra: dict) -> str:
    lines = [
        f"# MultiResGrid benchmark — {env['device']}",
        "",
        f"{env['date']}; torch {env['torch']}, triton {env['triton'] or '—'}"
        + (f", CUDA {env['cuda']}" if "cuda" in env else "")
        + (f", {env['threads']} threads" if "threads" in env else ""),
    ]
    if ceilings := extra.get("ceilings"):
        lines += [
            "",
            f"Measured ceilings: HBM {ceilings['hbm']:.0f} GB/s (1 GiB copy), "
            f"L2 {ceilings['l2']:.0f} GB/s of 32-byte sectors (random 16-byte reads). "
            "`bound` is the resource whose bytes take longest at its ceiling "
            "(`bench/roofline.py`); `of bound` = bound time / measured time.",
        ]
    if tests := extra.get("equivalence"):
        lines += ["", f"Kernel-equivalence tests compiled on this GPU: {tests['summary']}"]
    if "cuda" not in env:
        lines += [
            "",
            f"The providers alternate in {CPU_ROUNDS} rounds of {CPU_REPEATS} passes each "
            "(after one warm-up pass), so that they see the same drift of the machine's speed. "
            + (
                "Freed memory is kept for the next pass, as CPU training runs keep it "
                "(`train/core/cpu_memory.py`): the page faults of fresh memory otherwise make "
                "the reference's time swing by 1.5x from run to run."
                if env.get("freed_memory_kept")
                else "Freed memory goes back to the system (not glibc): each pass page-faults "
                "its fresh memory in again."
            ),
        ]
    lines += [
        "",
        "| shape | points | mode | provider | ms (median) | ms p20–p80 | Mpoints/s | bound "
        "| of bound | vs eager | vs compile |",
        "|---|---:|---|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    index = {(r["shape"], r["mode"], r["provider"]): r for r in rows}
    for r in rows:
        eager = index.get((r["shape"], r["mode"], "torch"))
        comp = index.get((r["shape"], r["mode"], "compile"))
        bound = f"{r['bound']} {r['bound_ms'] * 1e3:.0f} µs" if "bound" in r else "—"
        fraction = f"{r['fraction']:.0%}" if "fraction" in r else "—"
        lines.append(
            f"| {r['shape']} | {r['n_points']} | {r['mode']} | {r['provider']} | {r['ms']:.3f} | "
            f"{r['ms_p20']:.3f}–{r['ms_p80']:.3f} | {r['points_per_s'] / 1e6:.1f} | {bound} | "
            f"{fraction} | {_ratio(eager, r)} | {_ratio(comp, r)} |"
        )
    if memory:
        lines += ["", "Extra memory of one forward+backward, BRICS shape at batch 1:", ""]
        lines += [
            f"- {m['provider']}: {m['extra_peak_mb']:.2f} MB ({m['points']} points)" for m in memory
        ]
    if sweep := extra.get("sweep"):
        lines += ["", "Tuning sweep (Triton, median ms; `*` = fastest):", ""]
        lines += [
            "| shape | kernel | block | warps | levels | ms |",
            "|---|---|---:|---:|---:|---:|",
        ]
        best = {}
        for t in sweep:
            key = (t["shape"], t["kernel"])
            if key not in best or t["ms"] < best[key]["ms"]:
                best[key] = t
        for t in sweep:
            star = " *" if best[(t["shape"], t["kernel"])] is t else ""
            lines.append(
                f"| {t['shape']} | {t['kernel']} | {t['block']} | {t['num_warps']} | "
                f"{t['levels']} | {t['ms']:.4f}{star} |"
            )
    lines += ["", "Shapes:", ""] + [f"- `{s.name}`: {s.description}" for s in SHAPES.values()]
    return "\n".join(lines) + "\n"


def write(out: Path | None, env: dict, rows: list, memory: list, extra: dict) -> None:
    shapes = {name: asdict(s) for name, s in SHAPES.items()}
    payload = {"environment": env, "shapes": shapes, "rows": rows, "memory": memory, **extra}
    write_results(result_stem("grid", env, out), payload, markdown(env, rows, memory, extra))


def equivalence_suite(scale: int, timeout: int = 300) -> dict:
    """The kernel-equivalence tests, compiled on this GPU, with ``scale`` times CI's examples."""
    import os
    import subprocess
    import sys

    root = Path(__file__).parents[1]
    env = {**os.environ, "GRIDCODES_EXAMPLES_SCALE": str(scale)}
    env.pop("TRITON_INTERPRET", None)
    tests = ["tests/test_kernels.py", "tests/test_multires_grid.py"]
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
    try:
        import xdist  # noqa: F401  (parallel compilation of the drawn variants)

        command += ["-n", "4"]
    except ImportError:
        pass
    try:
        result = subprocess.run(
            command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else ""
        print(out[-6000:])
        return {"returncode": -1, "summary": f"timed out after {timeout} s", "failed": []}
    lines = result.stdout.strip().splitlines()
    summary = lines[-1] if lines else result.stderr[-500:]
    print(result.stdout[-6000:], result.stderr[-2000:])
    # Only the outcome lines are kept in the results (the full log has local paths).
    failed = [line for line in lines if line.startswith("FAILED")]
    return {"returncode": result.returncode, "summary": summary, "failed": failed}


# (points per program, warps). Levels per program (1, 4, 16) were swept on an H100 too: 4 and
# 16 were slower (bench/results/gpu_notes.md), and the forward now takes one level each.
SWEEP = {
    "forward": [(64, 2), (128, 4), (256, 4), (256, 8)],
    "backward": [(64, 2), (64, 4), (128, 4), (128, 8), (256, 8)],
}


def sweep(shape: Shape) -> list[dict]:
    """Median ms of the Triton forward / backward per launch configuration."""
    from gridcodes import ops

    saved = dict(ops.TUNING)
    out = []
    try:
        grid, lookup, inputs = build(shape, "triton", "cuda")
        for kernel, configs in SWEEP.items():
            for block, warps in configs:
                ops.TUNING[kernel] = ops.LaunchConfig(block, warps)
                mode = "forward" if kernel == "forward" else "backward"
                ms = cuda_quantiles(*pass_fn(grid, lookup, inputs, mode))[0]
                out.append(
                    {
                        "shape": shape.name,
                        "kernel": kernel,
                        "block": block,
                        "num_warps": warps,
                        "ms": ms,
                    }
                )
                print(f"sweep {shape.name:8s} {kernel:8s} {block:4d} {warps} {ms:.4f}")
            ops.TUNING.update(saved)
    finally:
        ops.TUNING.update(saved)
    return out


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
        default=None,
        help="triton kernels (atomic / deterministic table gradient), the CPU backend (cpu), "
        "eager reference (torch), torch.compile(reference); default: "
        + "; ".join(f"{d}: {' '.join(p)}" for d, p in DEFAULT_PROVIDERS.items()),
    )
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="cuda: Triton kernels and the reference; cpu: the CPU backend and the reference",
    )
    parser.add_argument(
        "--max-points",
        type=int,
        default=None,
        help="cap on each shape's points (default: none on cuda, 65536 on cpu)",
    )
    parser.add_argument(
        "--all",
        action="store_true",
        help="GPU: equivalence tests compiled on the GPU, then every shape, mode and provider, "
        "memory and roofline",
    )
    parser.add_argument("--sweep", action="store_true", help="also sweep the Triton launch configs")
    parser.add_argument(
        "--examples-scale",
        type=int,
        default=4,
        help="with --all: drawn examples per property test, as a multiple of CI's",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output stem (default: bench/results/grid_<device name>)",
    )
    args = parser.parse_args()
    args.providers = args.providers or list(DEFAULT_PROVIDERS[args.device])
    if args.max_points is None and args.device == "cpu":
        args.max_points = 2**16
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device; use --device cpu")
    if args.device == "cuda" and "cpu" in args.providers:
        parser.error("the cpu provider needs --device cpu")
    if args.device == "cpu" and any(p.startswith("triton") for p in args.providers):
        parser.error("the triton providers need --device cuda")
    if args.device == "cpu" and (args.all or args.sweep):
        parser.error("--all and --sweep need --device cuda")

    env = environment(args.device)
    if args.device == "cpu":
        env["freed_memory_kept"] = keep_freed_memory()
    extra = {}
    if args.all:
        extra["equivalence"] = equivalence_suite(args.examples_scale)
    if args.device == "cuda":
        extra["ceilings"] = roofline.measure_ceilings()
        print("ceilings GB/s:", extra["ceilings"])
    rows, memory = [], []
    for shape in (SHAPES[s] for s in args.shapes):
        if args.max_points and shape.n_points > args.max_points:
            shape = replace(shape, n_points=args.max_points)
        timed = measure(shape, args.providers, args.modes, args.device)
        config = GridConfig(**shape.grid)
        n_params = config.n_groups * config.n_entries * config.n_features
        for provider in args.providers:
            for mode in args.modes:
                ms, p20, p80 = timed[provider, mode]
                row = {
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
                }
                if "ceilings" in extra:
                    moved = roofline.traffic(
                        shape.grid, shape.n_points, n_params, mode, TABLE_BYTES
                    )
                    bound, name = roofline.bound_ms(moved, extra["ceilings"])
                    row.update(
                        hbm_bytes=moved["hbm"],
                        l2_bytes=moved["l2"],
                        bound=name,
                        bound_ms=bound,
                        fraction=bound / ms,
                    )
                rows.append(row)
        if shape.name == "brics" and args.device == "cuda":
            memory = [retrieval_memory_mb(shape, p) for p in args.providers]
        if args.sweep:
            extra.setdefault("sweep", []).extend(sweep(shape))
        write(args.out, env, rows, memory, extra)  # after each shape: partial runs keep results
    print(markdown(env, rows, memory, extra))
    if args.all and extra["equivalence"]["returncode"] != 0:
        raise SystemExit("the kernel-equivalence tests failed on this GPU (see the log above)")


if __name__ == "__main__":
    main()
