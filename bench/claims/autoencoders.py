"""Claims (a) and (b): BRICS against a VQ and a KL autoencoder at the same bottleneck.

    python bench/claims/autoencoders.py            # ~24 min on 2 cores
    python bench/claims/autoencoders.py --smoke    # seconds: every code path

64x64 patches of the embedded photographs, a 16x16x4 bottleneck for all three models, the
same data order per seed, the same wall-clock budget per run and the same threads. BRICS is
the ``small-64`` preset; the baselines are diffusers' ``VQModel`` (8192-entry codebook) and
``AutoencoderKL`` with widths (32, 64, 128), chosen so that their decoders have as many
parameters as BRICS's retrieval + decoder (bench/claims/contenders.py). Each model's learning
rate is the best held-out PSNR of a short sweep on seed 0; the chosen rate is then trained on
every seed. Reported per model: held-out PSNR / SSIM (mean ± std over seeds), decoder GMACs
per image by one counter, parameters, step time, and bottleneck usage — the codebook's used
fraction and perplexity; BRICS's grid occupancy (ours) and App. E's key-value usage.
Writes bench/results/claims/autoencoders.{json,md,png} and a reconstruction grid.
"""

from __future__ import annotations

import argparse
import time

import torch
from contenders import BRICS, KL, VQ
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

from train.core.evaluation import save_image_grid

MODELS = {"brics": BRICS, "vq": VQ, "kl": KL}


@torch.no_grad()
def usage(contender, data: torch.Tensor) -> dict:
    """Bottleneck usage on held-out images."""
    if isinstance(contender, VQ):
        indices = torch.cat(
            [contender.codebook_indices(data[i : i + 64]) for i in range(0, len(data), 64)]
        )
        size = contender.model.quantize.n_e
        p = torch.bincount(indices, minlength=size).double() / len(indices)
        entropy = -(p[p > 0] * p[p > 0].log()).sum()
        return {
            "codebook_used": (p > 0).double().mean().item(),
            "perplexity": entropy.exp().item(),
            "codebook_size": size,
        }
    if isinstance(contender, BRICS):
        model, hits, values = contender.model, None, None
        for i in range(0, len(data), 64):
            codes = model.encode(data[i : i + 64])
            hits = model.grid_hit_counts(codes, hits)
            values = model.key_value_hits(codes, values)
        return {
            "grid_usage": model.grid_usage_rate(hits).mean().item(),
            "grid_usage_finest": model.grid_usage_rate(hits)[:, -1].mean().item(),
            "key_value_usage": model.key_value_usage_rate(values).mean().item(),
        }
    return {}


def run(name: str, lr: float, seed: int, seconds: float, train_set, val_set) -> tuple:
    torch.manual_seed(seed)
    contender = MODELS[name]()
    log = train(
        contender,
        train_set,
        lr=lr,
        seed=seed,
        seconds=seconds,
        label=f"{name} lr {lr:g} seed {seed}",
    )
    return contender, {
        **log,
        **reconstruction_metrics(contender.reconstruct, val_set),
        "lr": lr,
        "seed": seed,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=100.0, help="seconds of training per run")
    parser.add_argument("--sweep-budget", type=float, default=40.0, help="seconds per sweep run")
    parser.add_argument(
        "--lrs", type=float, nargs="+", default=[1e-4, 2.5e-4, 5e-4], help="learning rates swept"
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the final runs"
    )
    parser.add_argument(
        "--models", nargs="+", default=list(MODELS), choices=list(MODELS), help="models compared"
    )
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    if replot(args, "autoencoders", "models", plot):
        return 0
    if args.smoke:
        args.budget, args.sweep_budget, args.lrs, args.seeds = (
            1.0,
            0.5,
            args.lrs[:2],
            args.seeds[:1],
        )
    setup(args)
    started = time.perf_counter()
    train_set, val_set = images("train", 64), images("val", 64, limit=16 if args.smoke else 0)
    results, first = {}, {}  # first: each model's seed-0 network, for the picture
    for name in args.models:
        sweep = {
            lr: run(name, lr, args.seeds[0], args.sweep_budget, train_set, val_set)[1]
            for lr in args.lrs
        }
        best = max(sweep, key=lambda lr: sweep[lr]["psnr"]["mean"])
        runs, models = [], []
        for seed in args.seeds:
            contender, log = run(name, best, seed, args.budget, train_set, val_set)
            runs.append({**log, "usage": usage(contender, val_set)})
            models.append(contender)
        code = models[0].code(val_set[:1])
        results[name] = {
            "model": models[0].name,
            "lr": best,
            "sweep": {f"{lr:g}": s["psnr"]["mean"] for lr, s in sweep.items()},
            "runs": runs,
            "psnr": over_seeds([r["psnr"]["mean"] for r in runs]),
            "ssim": over_seeds([r["ssim"]["mean"] for r in runs]),
            "steps": over_seeds([r["steps"] for r in runs]),
            "step_ms": over_seeds([r["step_ms"] for r in runs]),
            "decoder_gmacs": models[0].decoder_macs(code) / 1e9,
            "decoder_params_m": models[0].decoder_parameters() / 1e6,
            "params_m": sum(p.numel() for p in models[0].parameters()) / 1e6,
            "usage": {k: over_seeds([r["usage"][k] for r in runs]) for k in runs[0]["usage"]},
        }
        first[name] = models[0]
    grid = args.out / "autoencoders_reconstructions.png"
    shown = val_set[:8]
    save_image_grid(
        torch.cat([shown] + [model.reconstruct(shown) for model in first.values()]),
        grid,
        columns=8,
    )
    plot(results, args.out / "autoencoders.png")
    payload = {
        "title": "BRICS vs VQ vs KL autoencoders (claims a, b)",
        "command": command_line(),
        "environment": environment(args.threads),
        "setup": {
            "image_size": 64,
            "bottleneck": "16x16x4",
            "batch": 8,
            "budget_s": args.budget,
            "sweep_budget_s": args.sweep_budget,
            "lrs": args.lrs,
            "seeds": args.seeds,
            "held_out_images": len(val_set),
            "objective": "L2 (+ each model's own regulariser)",
        },
        "models": results,
        "reconstructions": grid.name,
    }
    save(args.out, "autoencoders", payload, table(results), started)
    return 0


def table(results: dict) -> str:
    rows = []
    for r in results.values():
        u = r["usage"]
        if "codebook_used" in u:
            size = r["runs"][0]["usage"]["codebook_size"]
            use = f"codebook used {pm(u['codebook_used'], 3)}, perplexity "
            use += f"{u['perplexity']['mean']:.0f} of {size}"
        elif "grid_usage" in u:
            use = (
                f"grid {pm(u['grid_usage'], 3)} "
                f"(finest level {u['grid_usage_finest']['mean']:.3f}), "
                f"key values (App. E) {pm(u['key_value_usage'], 3)}"
            )
        else:
            use = "-"
        rows.append(
            [
                r["model"],
                f"{r['lr']:g}",
                pm(r["psnr"]),
                pm(r["ssim"], 3),
                f"{r['decoder_gmacs']:.3f}",
                f"{r['decoder_params_m']:.2f}",
                f"{r['params_m']:.2f}",
                f"{r['step_ms']['mean']:.0f}",
                f"{r['steps']['mean']:.0f}",
                use,
            ]
        )
    return markdown_table(
        [
            "model",
            "lr",
            "PSNR (dB)",
            "SSIM",
            "decoder GMACs",
            "decoder params (M)",
            "params (M)",
            "step (ms)",
            "steps",
            "usage (held-out)",
        ],
        rows,
    )


def plot(results: dict, path) -> None:
    fig, axes = figure(1, 2)
    left, right = axes[0]
    for r in results.values():
        left.errorbar(
            r["decoder_gmacs"],
            r["psnr"]["mean"],
            yerr=r["psnr"]["std"],
            fmt="o",
            capsize=4,
            label=r["model"],
        )
    left.set(
        xlabel="decoder GMACs per image",
        ylabel="held-out PSNR (dB)",
        title="quality vs decoder compute",
    )
    left.legend()
    bars, colours = {}, []
    for i, r in enumerate(results.values()):
        u = r["usage"]
        if "codebook_used" in u:
            bars["VQ codebook\nentries used"] = u["codebook_used"]["mean"]
            colours.append(f"C{i}")
        if "grid_usage" in u:
            bars["BRICS grid\nentries hit"] = u["grid_usage"]["mean"]
            bars["BRICS key values\n(App. E)"] = u["key_value_usage"]["mean"]
            colours += [f"C{i}", f"C{i}"]
    drawn = right.bar(list(bars), list(bars.values()), color=colours)
    right.bar_label(drawn, fmt="%.3f")
    right.set(ylim=(0, 1), ylabel="fraction used", title="bottleneck usage (held-out)")
    right.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
