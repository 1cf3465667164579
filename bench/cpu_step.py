"""One small-64 training step on the CPU: the CPU grid backend against the PyTorch reference.

    python bench/cpu_step.py                    # batch 8, 7 rounds of 3 steps per backend

The step is the README main job's before the GAN starts: BRICS small-64 (64x64 patches,
16x16x4 key codes) reconstructs a batch, L2 loss, backward, Adam (fused, as the job's), with
freed memory kept for the next step as the job keeps it (``train.core.cpu_memory``). Both
backends train their own copy of the same initial weights on the same random batch;
wall-clock VMs drift by up to 2x within minutes, so the backends alternate in rounds within
one process and the figure is the median over rounds of each round's mean step time. Writes
``bench/results/cpu_step_<cpu>.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # models/ is not installed

from common import alternate, environment, result_stem, write_results

from models import BRICSAutoencoder, get_preset
from train.core.cpu_memory import keep_freed_memory

BACKENDS = ("cpu", "torch")


def make_step(model: torch.nn.Module):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)

    def step(images: torch.Tensor) -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = (model(images).reconstruction - images).square().mean()
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=8, help="patches per step")
    parser.add_argument("--preset", default="small-64", help="BRICS preset")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per backend and round")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="output stem")
    args = parser.parse_args()
    for name in ("batch_size", "rounds", "steps", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()
    torch.manual_seed(0)
    config = get_preset(args.preset)
    base = BRICSAutoencoder(config)
    images = torch.rand(args.batch_size, 3, config.image_size, config.image_size) * 2 - 1
    passes = {}
    for backend in BACKENDS:
        model = BRICSAutoencoder(config, grid_backend=backend)
        model.load_state_dict(copy.deepcopy(base.state_dict()))
        step = make_step(model.train())
        passes[backend] = (lambda step=step: step(images), [])
    seconds = alternate(passes, args.rounds, args.steps)
    means = {  # each round's mean step time
        backend: [statistics.mean(t[i : i + args.steps]) for i in range(0, len(t), args.steps)]
        for backend, t in seconds.items()
    }
    env = environment("cpu")
    rows = {
        backend: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t)}
        for backend, t in means.items()
    }
    speedup = rows["torch"]["median_s"] / rows["cpu"]["median_s"]
    payload = {"environment": env, "args": {k: str(v) for k, v in vars(args).items()}}
    payload |= {"rows": rows, "speedup": speedup}
    lines = [
        f"# {args.preset} training step on the CPU — {env['device']}",
        "",
        f"{env['date']}; torch {env['torch']}, {env['threads']} threads; batch "
        f"{args.batch_size}, L2 + Adam, {args.rounds} alternating rounds of {args.steps} steps",
        "",
        "| grid backend | s per step (median of rounds) | fastest round | slowest round |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {b} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['max_s']:.3f} |"
        for b, r in rows.items()
    ]
    lines += ["", f"CPU backend speed-up: **{speedup:.2f}x**", ""]
    write_results(result_stem("cpu_step", env, args.out), payload, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
