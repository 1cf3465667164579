"""gridcodes side by side with the CUDA encoders: torch-ngp's gridencoder, tiny-cuda-nn,
TidalPaladin/triton-helpers' Triton hash encoding and nerfstudio's pure-torch HashEncoding.

    python bench/peers/bench_peers.py --peers DIR --out bench/results/peers      # on a GPU
    python bench/peers/bench_peers.py --smoke --out /tmp/peers                   # CPU, seconds

``DIR`` (or ``$GRIDCODES_PEERS``) holds copies fetched outside this repository:
``DIR/torch-ngp`` (its ``gridencoder`` is JIT-built with the machine's nvcc on first use),
``DIR/tiny-cuda-nn`` (``--build-tcnn`` pip-installs its torch bindings; an installed
``tinycudann`` is used as it is), ``DIR/triton-helpers`` and ``DIR/nerfstudio`` (or an
installed ``nerfstudio``). Nothing of theirs is copied here; a peer that is missing or
needs CUDA on a CPU is skipped with the reason.

For each shape, table dtype and point count it times forward, backward and both
(``bench/bench_grid.py``'s timing: ``triton.testing.do_bench`` quantiles on CUDA, alternating
rounds on the CPU), and for the peers with second-order gradients the double backward
(``|dL/dx|**2`` differentiated again) against forward+backward. It checks that
gridcodes' tcnn and torch-ngp conventions give those libraries' features for the same
table. Results (JSON + Markdown) are rewritten under ``--out`` after every measurement.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
from bench_grid import pass_fn
from common import alternate, cuda_quantiles, environment, write_results

from gridcodes import MultiResGrid


@dataclass(frozen=True)
class Shape:
    """One hash-grid problem, in tcnn's terms."""

    name: str
    n_points: tuple[int, ...]
    n_levels: int = 16
    n_features: int = 2
    log2_table_size: int = 19
    base_resolution: int = 16
    max_resolution: int = 2048
    in_dim: int = 3

    @property
    def per_level_scale(self) -> float:
        return math.exp(math.log(self.max_resolution / self.base_resolution) / (self.n_levels - 1))

    def tcnn_config(self) -> dict:
        return {
            "otype": "HashGrid",
            "n_levels": self.n_levels,
            "n_features_per_level": self.n_features,
            "log2_hashmap_size": self.log2_table_size,
            "base_resolution": self.base_resolution,
            "per_level_scale": self.per_level_scale,
        }


# T = 2**19 does not fit the L2 cache; BRICS: its grid as one table for 4 x 49,152 points
# (the peers have no groups), 16 levels 4 -> 64, F = 4, T = 2**18.
SHAPES = (
    Shape("ngp T=2^19", (2**20, 2**22)),
    Shape("brics-like", (4 * 12 * 64 * 64,), 16, 4, 18, 4, 64),
)
SMOKE_SHAPES = (
    Shape("ngp smoke", (1000,), 4, 2, 10, 4, 32),
    Shape("brics smoke", (777,), 3, 4, 8, 4, 16),
)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
MODES = ("forward", "backward", "full")


class Unavailable(Exception):
    """A peer that cannot run here; the message says why."""


@dataclass
class Built:
    lookup: object  # x (N, d) in [0, 1] -> (N, L * F)
    params: torch.Tensor  # the table its gradients go to
    input_grad: bool  # dL/dx supported
    double: bool  # second-order gradients supported


def _needs_cuda(device: str, what: str) -> None:
    if device != "cuda":
        raise Unavailable(f"needs CUDA ({what})")


def build_gridcodes(shape: Shape, dtype, device, peers: Path | None, convention="tcnn") -> Built:
    if convention == "tcnn":
        grid = MultiResGrid.from_tcnn(shape.in_dim, shape.tcnn_config())
    else:
        grid = MultiResGrid(
            shape.in_dim,
            n_levels=shape.n_levels,
            n_features=shape.n_features,
            log2_table_size=shape.log2_table_size,
            base_resolution=shape.base_resolution,
            per_level_scale=shape.per_level_scale,
            convention="torch-ngp",
        )
    grid = grid.to(device, dtype)
    return Built(lambda x: grid(x[:, None, :])[:, 0], grid.params, True, True)


def _import_from(peers: Path | None, folder: str, module: str):
    if peers is not None and (peers / folder).is_dir():
        sys.path.insert(0, str(peers / folder))
    try:
        return importlib.import_module(module)
    except Exception as e:  # a missing copy, or its own missing dependencies
        where = f"{peers / folder}" if peers else "no --peers folder"
        raise Unavailable(f"cannot import {module} ({where}): {type(e).__name__}: {e}") from None


def build_torch_ngp(shape: Shape, dtype, device, peers: Path | None) -> Built:
    _needs_cuda(device, "a CUDA extension built with nvcc")
    if shutil.which("nvcc") is None and not os.environ.get("CUDA_HOME"):
        raise Unavailable("nvcc not found (torch-ngp's gridencoder is JIT-built with it)")
    grid_module = _import_from(peers, "torch-ngp", "gridencoder.grid")
    encoder = grid_module.GridEncoder(
        input_dim=shape.in_dim,
        num_levels=shape.n_levels,
        level_dim=shape.n_features,
        per_level_scale=shape.per_level_scale,
        base_resolution=shape.base_resolution,
        log2_hashmap_size=shape.log2_table_size,
    ).to(device)
    encoder.embeddings.data = encoder.embeddings.data.to(dtype)
    e = encoder

    def lookup(x):  # their kernel on [0, 1] coordinates, without the [-b, b] mapping
        return grid_module.grid_encode(
            x, e.embeddings, e.offsets, e.per_level_scale, e.base_resolution,
            x.requires_grad, e.gridtype_id, e.align_corners, e.interp_id,
        )  # fmt: skip

    lookup.encoder = encoder
    return Built(lookup, encoder.embeddings, True, False)


def build_tcnn(shape: Shape, dtype, device, peers: Path | None, build: bool = False) -> Built:
    _needs_cuda(device, "tiny-cuda-nn's kernels")
    try:
        tcnn = importlib.import_module("tinycudann")
    except ImportError:
        if not build:
            raise Unavailable("tinycudann is not installed (--build-tcnn builds it)") from None
        bindings = (peers or Path("-")) / "tiny-cuda-nn" / "bindings" / "torch"
        if not bindings.is_dir():
            raise Unavailable(f"no tiny-cuda-nn copy at {bindings}") from None
        command = [sys.executable, "-m", "pip", "install", "--no-build-isolation", str(bindings)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        if result.returncode != 0:
            raise Unavailable(f"tcnn did not build: {result.stderr[-300:]}") from None
        tcnn = importlib.import_module("tinycudann")
    encoding = tcnn.Encoding(shape.in_dim, shape.tcnn_config(), dtype=dtype).to(device)
    return Built(encoding, encoding.params, True, True)


def build_triton_helpers(shape: Shape, dtype, device, peers: Path | None) -> Built:
    _needs_cuda(device, "its Triton kernels")
    module = _import_from(peers, "triton-helpers", "triton_helpers.layers.hash_encoding.module")
    encoding = module.HashEncoding(
        max_entries_per_level=2**shape.log2_table_size,
        num_levels=shape.n_levels,
        d_in=shape.in_dim,
        d_embed=shape.n_features,
        min_res=shape.base_resolution,
        max_res=shape.max_resolution,
    ).to(device, dtype)
    return Built(encoding, encoding.embeddings, False, False)


def build_nerfstudio(shape: Shape, dtype, device, peers: Path | None) -> Built:
    module = _import_from(peers, "nerfstudio", "nerfstudio.field_components.encodings")
    encoding = module.HashEncoding(
        num_levels=shape.n_levels,
        min_res=shape.base_resolution,
        max_res=shape.max_resolution,
        log2_hashmap_size=shape.log2_table_size,
        features_per_level=shape.n_features,
        implementation="torch",
    ).to(device, dtype)
    return Built(encoding, encoding.hash_table, True, True)


PEERS = {
    "gridcodes": build_gridcodes,
    "torch-ngp": build_torch_ngp,
    "tcnn": build_tcnn,
    "triton-helpers": build_triton_helpers,
    "nerfstudio": build_nerfstudio,
}


def double_pass(built: Built, inputs, dys):
    """Forward, dL/dx with create_graph, then the gradient of |dL/dx|**2 (an eikonal term)."""
    state = {"i": 0}

    def fn():
        state["i"] = (state["i"] + 1) % len(inputs)
        x = inputs[state["i"]]
        (dx,) = torch.autograd.grad(built.lookup(x), x, dys[state["i"]], create_graph=True)
        dx.square().sum().backward()

    return fn, [built.params, *inputs]


def time_peer(built: Built, shape: Shape, n_points: int, device: str, smoke: bool) -> dict:
    """Median (p20, p80) ms per mode of one peer."""
    x_grad = built.input_grad
    inputs = [
        torch.rand(n_points, shape.in_dim, device=device, requires_grad=x_grad) for _ in range(3)
    ]
    holder = SimpleNamespace(params=built.params)
    passes = {mode: pass_fn(holder, built.lookup, inputs, mode) for mode in MODES}
    if built.double:
        dys = [torch.randn_like(built.lookup(x)) for x in inputs]
        passes["double"] = double_pass(built, inputs, dys)
    out = {}
    for mode, (fn, grads) in passes.items():
        if device == "cuda":
            out[mode] = cuda_quantiles(fn, grads)
        else:
            rounds, repeats = (1, 1) if smoke else (3, 2)
            seconds = alternate({mode: (fn, grads)}, rounds, repeats)[mode]
            q = torch.tensor(seconds).quantile(torch.tensor([0.5, 0.2, 0.8])) * 1e3
            out[mode] = tuple(q.tolist())
    return out


def equivalence(shape: Shape, device: str, peers: Path | None, build_tcnn_flag: bool) -> list:
    """Max |ours - theirs| of the features for the same table, per level, and the tolerance:
    their GPU scale can differ from ours by a few float32 ulps (docs/tcnn.md), which moves
    a point by x * ulps(scale) at most."""
    results = []
    for name, convention in (("torch-ngp", "torch-ngp"), ("tcnn", "tcnn")):
        try:
            build = build_tcnn if name == "tcnn" else PEERS[name]
            extra = {"build": build_tcnn_flag} if name == "tcnn" else {}
            theirs = build(shape, torch.float32, device, peers, **extra)
        except Unavailable as e:
            results.append({"peer": name, "shape": shape.name, "skipped": str(e)})
            print(f"equivalence {name}: skipped, {e}")
            continue
        ours = build_gridcodes(shape, torch.float32, device, peers, convention)
        grid_params = ours.params
        if grid_params.shape[1] * grid_params.shape[2] != theirs.params.numel():
            results.append(
                {"peer": name, "shape": shape.name, "ok": False, "error": "table sizes differ"}
            )
            continue
        with torch.no_grad():
            grid_params.uniform_(-1, 1)
            theirs.params.copy_(grid_params.reshape(theirs.params.shape))
            x = torch.rand(2**16, shape.in_dim, device=device)
            error = (ours.lookup(x) - theirs.lookup(x).float()).abs()
        error = error.reshape(-1, shape.n_levels, shape.n_features).amax(dim=(0, 2))
        grid = MultiResGrid.from_tcnn(shape.in_dim, shape.tcnn_config())
        ulps = [4 * math.ulp(lv.scale) * 2 ** (shape.in_dim + 1) for lv in grid.config.levels]
        tolerance = [u + 1e-6 for u in ulps]
        ok = all(e <= t for e, t in zip(error.tolist(), tolerance))
        results.append(
            {
                "peer": name,
                "shape": shape.name,
                "ok": ok,
                "max_error_per_level": error.tolist(),
                "tolerance_per_level": tolerance,
            }
        )
        print(f"equivalence {name}: {'ok' if ok else 'DIFFERS'}, max {error.max().item():.3g}")
    return results


def markdown(env: dict, rows: list, checks: list, skipped: dict) -> str:
    lines = [
        f"# gridcodes vs CUDA encoders — {env['device']}",
        "",
        f"{env['date']}; torch {env['torch']}, triton {env['triton']}"
        + (f", CUDA {env['cuda']}" if "cuda" in env else "")
        + ". Median ms (p20-p80); `vs gridcodes` = their time / ours (above 1: ours faster).",
        "",
        "| shape | points | table | mode | peer | ms | p20-p80 | vs gridcodes |",
        "|---|---:|---|---|---|---:|---:|---:|",
    ]
    index = {(r["shape"], r["n_points"], r["dtype"], r["mode"], r["peer"]): r for r in rows}
    for r in rows:
        ours = index.get((r["shape"], r["n_points"], r["dtype"], r["mode"], "gridcodes"))
        ratio = f"{r['ms'] / ours['ms']:.2f}" if ours and r["peer"] != "gridcodes" else "—"
        lines.append(
            f"| {r['shape']} | {r['n_points']} | {r['dtype']} | {r['mode']} | {r['peer']} | "
            f"{r['ms']:.3f} | {r['p20']:.3f}-{r['p80']:.3f} | {ratio} |"
        )
    doubles = [r for r in rows if r["mode"] == "double"]
    if doubles:
        lines += ["", "Double backward / (forward + backward):", ""]
        for r in doubles:
            full = index.get((r["shape"], r["n_points"], r["dtype"], "full", r["peer"]))
            if full:
                lines.append(
                    f"- {r['peer']} {r['shape']} {r['n_points']} {r['dtype']}: "
                    f"{r['ms'] / full['ms']:.2f}x"
                )
    lines += ["", "Equivalence (same table, 65,536 points in [0, 1]):", ""]
    for c in checks:
        if "skipped" in c:
            lines.append(f"- {c['peer']} ({c['shape']}): skipped, {c['skipped']}")
        else:
            worst = max(c.get("max_error_per_level", [math.nan]))
            lines.append(f"- {c['peer']} ({c['shape']}): {'equal' if c['ok'] else 'DIFFERS'}, "
                         f"max |error| {worst:.3g}")  # fmt: skip
    if skipped:
        lines += ["", "Skipped peers:", ""] + [f"- {p}: {why}" for p, why in skipped.items()]
    return "\n".join(lines) + "\n"


def write(out: Path, env: dict, rows: list, checks: list, skipped: dict) -> None:
    payload = {"environment": env, "rows": rows, "equivalence": checks, "skipped": skipped}
    write_results(out / "peers", payload, markdown(env, rows, checks, skipped))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--peers",
        type=Path,
        default=os.environ.get("GRIDCODES_PEERS"),
        help="folder of the fetched peers (default: $GRIDCODES_PEERS)",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for peers.json / .md")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, one pass each, CPU ok")
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where to run (CUDA peers are skipped on cpu)",
    )
    parser.add_argument(
        "--peer", nargs="+", choices=PEERS, default=list(PEERS), help="peers to run"
    )
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES), help="tables")
    parser.add_argument("--build-tcnn", action="store_true", help="pip-install tcnn from --peers")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device; use --device cpu (with --smoke)")
    if args.device == "cpu" and not args.smoke:
        parser.error("on the CPU only --smoke runs (the comparison is a GPU one)")
    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    env = environment(args.device)
    rows, checks, skipped = [], [], {}
    for shape in shapes:
        checks += equivalence(shape, args.device, args.peers, args.build_tcnn)
        write(args.out, env, rows, checks, skipped)
        for dtype_name in args.dtypes:
            for n_points in shape.n_points:
                for peer in args.peer:
                    try:
                        extra = {"build": args.build_tcnn} if peer == "tcnn" else {}
                        built = PEERS[peer](shape, DTYPES[dtype_name], args.device, args.peers,
                                            **extra)  # fmt: skip
                        timed = time_peer(built, shape, n_points, args.device, args.smoke)
                    except Unavailable as e:
                        if peer not in skipped:
                            print(f"{peer}: skipped, {e}")
                        skipped[peer] = str(e)
                        continue
                    for mode, (ms, p20, p80) in timed.items():
                        row = dict(shape=shape.name, n_points=n_points, dtype=dtype_name)
                        row.update(mode=mode, peer=peer, ms=ms, p20=p20, p80=p80)
                        row.update(grid=replace(shape, n_points=(n_points,)).__dict__)
                        row["input_grad"] = built.input_grad
                        rows.append(row)
                        print(
                            f"{shape.name} {n_points} {dtype_name} {mode:8s} {peer:15s} {ms:9.3f}"
                        )
                    write(args.out, env, rows, checks, skipped)
    print(markdown(env, rows, checks, skipped))


if __name__ == "__main__":
    main()
