"""The fused MLP and NetworkWithInputEncoding against PyTorch and tiny-cuda-nn.

    python bench/bench_mlp.py                    # CUDA: tcnn's sample shape, every provider
    python bench/bench_mlp.py --smoke            # seconds on the CPU (the tests run it)

Shape: tcnn's sample (samples/mlp_learning_an_image_pytorch.py with data/config_hash.json):
2**18 rows; a 16-level HashGrid with 2 features (32 inputs to the network); a FullyFusedMLP
of width 64 with 2 hidden layers and 3 outputs; float16. Cases: ``mlp`` (the network on
32 features) and ``nwie`` (encoding + network on 2-D points). Providers: ``gridcodes``
(``FusedMLP`` / ``gridcodes.tcnn``), ``eager`` (``torch.nn.Sequential`` of bias-free
``Linear`` and ``ReLU``, after gridcodes' grid for ``nwie``), ``compile``
(``torch.compile`` of that Sequential) and ``tcnn`` (tinycudann, when it is installed).
Modes: ``forward`` and ``train`` (forward + backward). CUDA times are
``triton.testing.do_bench`` medians (20 %/80 % quantiles beside them); CPU times alternate
the providers in rounds (bench/common.py).
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import alternate, cuda_quantiles, environment, result_stem, write_results

import gridcodes.tcnn as gtcnn
from gridcodes import FusedMLP

ENCODING = {  # tcnn's data/config_hash.json
    "otype": "HashGrid",
    "n_levels": 16,
    "n_features_per_level": 2,
    "log2_hashmap_size": 15,
    "base_resolution": 16,
    "per_level_scale": 1.5,
}
NETWORK = {
    "otype": "FullyFusedMLP",
    "activation": "ReLU",
    "output_activation": "None",
    "n_neurons": 64,
    "n_hidden_layers": 2,
}
N_OUT = 3
PROVIDERS = ("gridcodes", "eager", "compile", "tcnn")


def sequential(n_in: int, dtype, device) -> torch.nn.Sequential:
    """The same network in PyTorch: bias-free Linear layers and ReLU (what eager runs)."""
    width, hidden = NETWORK["n_neurons"], NETWORK["n_hidden_layers"]
    layers, k = [], n_in
    for _ in range(hidden):
        layers += [torch.nn.Linear(k, width, bias=False), torch.nn.ReLU()]
        k = width
    layers.append(torch.nn.Linear(k, N_OUT, bias=False))
    return torch.nn.Sequential(*layers).to(device=device, dtype=dtype)


def build(case: str, provider: str, device: str, dtype):
    """(module, its input) for one case and provider; raises Unavailable when it cannot run."""
    backend = "triton" if device == "cuda" else "cpu"
    features = ENCODING["n_levels"] * ENCODING["n_features_per_level"]
    if provider == "tcnn":
        if device != "cuda":
            raise Unavailable("tcnn runs on CUDA only")
        try:
            tcnn = importlib.import_module("tinycudann")
        except ImportError:
            raise Unavailable("tinycudann is not installed") from None
        if case == "mlp":
            return tcnn.Network(features, N_OUT, NETWORK), features
        return tcnn.NetworkWithInputEncoding(2, N_OUT, ENCODING, NETWORK), 2
    if provider == "gridcodes":
        if case == "mlp":
            width, hidden = NETWORK["n_neurons"], NETWORK["n_hidden_layers"]
            mlp = FusedMLP(features, N_OUT, width, hidden, dtype=dtype, backend=backend)
            return mlp.to(device), features
        model = gtcnn.NetworkWithInputEncoding(
            2, N_OUT, ENCODING, NETWORK, dtype=dtype, backend=backend
        )
        return model.to(device), 2
    net = sequential(features, dtype, device)
    if provider == "compile":
        net = torch.compile(net)
    if case == "mlp":
        return net, features
    grid = gtcnn.Encoding(2, ENCODING, backend=backend).to(device)
    return torch.nn.Sequential(grid, _Cast(dtype), net), 2


class _Cast(torch.nn.Module):
    def __init__(self, dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def forward(self, x):
        return x.to(self.dtype)


class Unavailable(Exception):
    pass


def pass_fn(module, x: torch.Tensor, mode: str):
    params = [p for p in module.parameters() if p.requires_grad]

    def forward():
        with torch.no_grad():
            module(x)

    def train():
        module(x).float().square().mean().backward()

    return (forward if mode == "forward" else train), params


def measure(cases, providers, modes, device: str, n_rows: int, rounds: int) -> list[dict]:
    dtype = torch.float16 if device == "cuda" else torch.float32
    rows = []
    for case in cases:
        built = {}
        for provider in providers:
            try:
                built[provider] = build(case, provider, device, dtype)
            except Unavailable as why:
                print(f"{case}/{provider}: skipped ({why})")
        for mode in modes:
            passes = {}
            for provider, (module, n_in) in built.items():
                generator = torch.Generator().manual_seed(0)
                x = torch.rand(n_rows, n_in, generator=generator).to(device)
                x = x.to(dtype) if case == "mlp" else x
                passes[provider] = pass_fn(module, x, mode)
            if device == "cuda":
                times = {p: cuda_quantiles(fn, grads) for p, (fn, grads) in passes.items()}
            else:
                seconds = alternate(passes, rounds=rounds, repeats=3)
                times = {
                    p: (1e3 * statistics.median(t), 1e3 * min(t), 1e3 * max(t))
                    for p, t in seconds.items()
                }
            for provider, (median, low, high) in times.items():
                rows.append(
                    {
                        "case": case,
                        "mode": mode,
                        "provider": provider,
                        "rows": n_rows,
                        "dtype": str(dtype).removeprefix("torch."),
                        "ms": median,
                        "ms_low": low,
                        "ms_high": high,
                        "rows_per_s": n_rows / (median / 1e3),
                    }
                )
    return rows


def markdown(env: dict, rows: list[dict]) -> str:
    lines = [
        f"# Fused MLP and NetworkWithInputEncoding ({env['device']}, {env['date']})",
        "",
        f"torch {env['torch']}, triton {env['triton']}. Shape: tcnn's sample, "
        f"{rows[0]['rows'] if rows else 0} rows, {rows[0]['dtype'] if rows else ''}.",
        "",
        "| case | mode | provider | ms (median) | ms (20-80 %) | rows/s | vs eager |",
        "|---|---|---|---|---|---|---|",
    ]
    eager = {(r["case"], r["mode"]): r["ms"] for r in rows if r["provider"] == "eager"}
    for r in rows:
        base = eager.get((r["case"], r["mode"]))
        ratio = f"{base / r['ms']:.2f}x" if base else "-"
        lines.append(
            f"| {r['case']} | {r['mode']} | {r['provider']} | {r['ms']:.3f} | "
            f"{r['ms_low']:.3f}-{r['ms_high']:.3f} | {r['rows_per_s']:.3g} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    parser.add_argument("--cases", nargs="+", default=["mlp", "nwie"], help="mlp and/or nwie")
    parser.add_argument("--providers", nargs="+", default=list(PROVIDERS), help="who runs")
    parser.add_argument("--modes", nargs="+", default=["forward", "train"], help="forward/train")
    parser.add_argument("--rows", type=int, default=2**18, help="rows per pass (tcnn: 2**18)")
    parser.add_argument("--rounds", type=int, default=3, help="CPU: alternating rounds")
    parser.add_argument("--smoke", action="store_true", help="CPU, 2**12 rows, no compile")
    parser.add_argument("--out", type=Path, default=None, help="result stem (default: results/)")
    args = parser.parse_args()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    providers, n_rows, rounds = args.providers, args.rows, args.rounds
    if args.smoke:
        device, n_rows, rounds = "cpu", 2**12, 1
        providers = [p for p in providers if p != "compile"]
    env = environment(device)
    rows = measure(args.cases, providers, args.modes, device, n_rows, rounds)
    text = markdown(env, rows)
    write_results(result_stem("mlp", env, args.out), {"environment": env, "rows": rows}, text)
    print(text)


if __name__ == "__main__":
    main()
