"""Claim (d): the ablations of Tables 6-8 and App. K at small scale.

    python bench/claims/ablations.py            # ~13 min on 2 cores
    python bench/claims/ablations.py --smoke    # seconds: every code path

Every variant is the ``tiny-32`` preset (32x32 patches of the embedded photographs, 8x8x4
key codes, tiled 16x16 key code, 8 grid levels, tables of 2^12 entries) with one field
changed, trained with the same L2 objective, steps, batch and learning rate on every seed:

- Table 6: relaxed-precision noise vs none;
- Table 7: Ckey 1 (four 3-D grid groups) vs Ckey 2 (two 4-D grid groups);
- Table 8: tiled key-code size Hd = Wd 8, 16, 32;
- App. K: hashed tables of 2^10 ... 2^14 entries vs the tiled grid.

Held-out PSNR (mean ± std over seeds) against grid parameters, one panel per table.
Writes bench/results/claims/ablations.{json,md,png}.
"""

from __future__ import annotations

import argparse
import time

import torch
from contenders import BRICS
from harness import (
    add_common_arguments,
    command_line,
    environment,
    figure,
    images,
    markdown_table,
    over_seeds,
    pm,
    reconstruction_metrics,
    replot,
    save,
    setup,
    train,
)

PRESET = "tiny-32"
VARIANTS = {  # name -> field overrides of the preset
    "tiled 2^12 (base)": {},
    "no noise": {"key_regularization": "none"},
    "Ckey 2": {"key_length": 2},
    "Hd 8": {"tile_size": 8},
    "Hd 32": {"tile_size": 32},
    **{f"hash 2^{n}": {"grid_type": "hash", "log2_table_size": n} for n in range(10, 15)},
}
TABLES = {  # the paper's table -> the variants it compares
    "Table 6: relaxed precision": ["tiled 2^12 (base)", "no noise"],
    "Table 7: key length": ["tiled 2^12 (base)", "Ckey 2"],
    "Table 8: tiled key-code size": ["Hd 8", "tiled 2^12 (base)", "Hd 32"],
    "App. K: hashed vs tiled": [*(f"hash 2^{n}" for n in range(10, 15)), "tiled 2^12 (base)"],
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=250, help="optimizer steps per run")
    parser.add_argument("--lr", type=float, default=5e-4, help="Adam learning rate (CPU recipe)")
    parser.add_argument("--batch", type=int, default=8, help="images per step")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds per variant")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    if replot(args, "ablations", "variants", plot):
        return 0
    if args.smoke:
        args.steps, args.seeds = 2, args.seeds[:1]
    setup(args)
    started = time.perf_counter()
    train_set = images("train", 32)
    val_set = images("val", 32, limit=16 if args.smoke else 0)
    results = {}
    for name, overrides in VARIANTS.items():
        runs = []
        for seed in args.seeds:
            torch.manual_seed(seed)
            contender = BRICS(PRESET, **overrides)
            log = train(
                contender,
                train_set,
                lr=args.lr,
                seed=seed,
                steps=args.steps,
                batch=args.batch,
                label=f"{name} seed {seed}",
            )
            runs.append({**log, **reconstruction_metrics(contender.reconstruct, val_set)})
        results[name] = {
            "overrides": overrides,
            "grid_params": contender.model.parameter_counts()["grids"],
            "psnr": over_seeds([r["psnr"]["mean"] for r in runs]),
            "ssim": over_seeds([r["ssim"]["mean"] for r in runs]),
            "step_ms": over_seeds([r["step_ms"] for r in runs]),
            "runs": runs,
        }
    plot(results, args.out / "ablations.png")
    payload = {
        "title": "Ablations of Tables 6-8 and App. K at small scale (claim d)",
        "command": command_line(),
        "environment": environment(args.threads),
        "setup": {
            "preset": PRESET,
            "steps": args.steps,
            "lr": args.lr,
            "batch": args.batch,
            "seeds": args.seeds,
            "held_out_images": len(val_set),
        },
        "tables": TABLES,
        "variants": results,
    }
    save(args.out, "ablations", payload, table(results), started)
    return 0


def table(results: dict) -> str:
    rows = [
        [
            name,
            f"{r['grid_params'] / 1e3:.1f}",
            pm(r["psnr"]),
            pm(r["ssim"], 3),
            f"{r['step_ms']['mean']:.0f}",
        ]
        for name, r in results.items()
    ]
    return markdown_table(["variant", "grid params (k)", "PSNR (dB)", "SSIM", "step (ms)"], rows)


def plot(results: dict, path) -> None:
    """One panel per table: PSNR per variant (grid parameters in the label); App. K's panel
    against grid parameters on a log axis."""
    fig, axes = figure(1, len(TABLES), size=(4 * len(TABLES), 3.6))
    for axis, (title, names) in zip(axes[0], TABLES.items()):
        by_size = title.startswith("App. K")
        for i, name in enumerate(names):
            r = results[name]
            x = r["grid_params"] if by_size else i
            axis.errorbar(x, r["psnr"]["mean"], yerr=r["psnr"]["std"], fmt="o", capsize=3)
            if by_size:
                axis.annotate(
                    name,
                    (x, r["psnr"]["mean"]),
                    fontsize=7,
                    xytext=(4, 4),
                    textcoords="offset points",
                )
        if by_size:
            axis.set(xscale="log", xlabel="grid parameters")
            axis.minorticks_off()
        else:
            labels = [f"{n}\n{results[n]['grid_params'] / 1e3:.0f}k grid params" for n in names]
            axis.set_xticks(range(len(names)), labels, fontsize=7)
            axis.set_xlim(-0.5, len(names) - 0.5)
        axis.set(ylabel="held-out PSNR (dB)", title=title)
        axis.title.set_fontsize(9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
