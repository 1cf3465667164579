"""Claim (c): relaxed precision against KL against no regularisation, through diffusion.

    python bench/claims/regularisation.py            # ~13 min on 2 cores
    python bench/claims/regularisation.py --smoke    # seconds: every code path

For each key-code regularisation (relaxed precision, Sec. 3.2; KL, App. A.4; none) and seed:
train the ``tiny-32`` autoencoder (32x32 patches of the embedded photographs, 8x8x4 key
codes) with the L2 objective and cache its float32 key codes of both splits; then, for each
noise schedule of Table 4 — (a) cosine with min-SNR-5 weights, where the paper saw the KL
codes' spot artifacts (App. D.1), (b) Chen's cosine, the paper's default — train the
``tiny`` UNet on the training codes (eps prediction; no EMA at this length), draw as many
key codes as there are held-out images with DPM-Solver++ (20 steps) and decode them.
Reported:

- robustness of the code space: held-out PSNR of decode(clip(z + N(0, sigma^2))) for
  sigma in {0, 1/512, 1/256, 1/128} (diffusion-sized errors; 1/128 is also the relaxed-
  precision noise of this preset, 1 / (4 r_max)), and 1/64, 1/32 to see where it breaks;
- energy distance of sampled vs held-out key codes (``train.core.gen_metrics``), next to the
  training codes' own distance to the held-out codes (the score of a model that reproduced
  the training codes exactly);
- SWD (ProGAN's, x1e3) of decoded samples vs held-out images, next to the training images'.

Writes bench/results/claims/regularisation.{json,md,png} and a grid of samples.
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
    image_metrics,
    images,
    markdown_table,
    over_seeds,
    pm,
    replot,
    save,
    setup,
    train,
)

from models.diffusion import KeyCodeDiffusion, codes_to_data, data_to_codes
from models.samplers import sample
from models.schedules import get_schedule
from models.unet import UNet, unet_config_for_codes
from train.core.codes import encode_dataset
from train.core.evaluation import save_image_grid
from train.core.gen_metrics import energy_distance, sliced_wasserstein
from train.core.metrics import to_uint8

PRESET = "tiny-32"
REGULARISATIONS = ("relaxed", "kl", "none")
SCHEDULES = {"a: cosine, min-SNR": "cosine", "b: Chen's cosine": "chen-cosine"}  # Table 4
SIGMAS = (0.0, 1 / 512, 1 / 256, 1 / 128, 1 / 64, 1 / 32)  # the last two: beyond diffusion's


class CodeDenoiser(torch.nn.Module):
    """The tiny UNet with the diffusion loss, trainable by ``harness.train``."""

    betas, eps = (0.9, 0.999), 1e-8

    def __init__(self, schedule) -> None:
        super().__init__()
        self.unet = UNet(unet_config_for_codes("tiny", 4, 8))
        self.diffusion = KeyCodeDiffusion(self.unet, schedule)

    def loss(self, codes: torch.Tensor):
        return self.diffusion.loss(codes_to_data(codes)), None


@torch.no_grad()
def decode(model, codes: torch.Tensor) -> torch.Tensor:
    return torch.cat([model.decode(codes[i : i + 64]) for i in range(0, len(codes), 64)])


def run(reg: str, seed: int, args, train_set, val_set) -> tuple[dict, dict]:
    """One regularisation, one seed: autoencoder, codes, UNet, samples; metrics and samples."""
    torch.manual_seed(seed)
    ae = BRICS(PRESET, key_regularization=reg)
    ae_log = train(ae, train_set, lr=args.lr, seed=seed, steps=args.ae_steps, label=f"AE {reg}")
    model = ae.model
    train_codes, val_codes = (
        encode_dataset(model, data, 64, "cpu", show_progress=False) for data in (train_set, val_set)
    )
    generator = torch.Generator().manual_seed(seed)
    robustness = {}
    for sigma in SIGMAS:
        noise = sigma * torch.randn(val_codes.shape, generator=generator)
        decoded = decode(model, (val_codes + noise).clamp(0, 1))
        robustness[f"{sigma:.6f}"] = image_metrics(decoded, val_set)["psnr"]["mean"]
    references = to_uint8(val_set)
    result = {
        "ae": {**ae_log, **image_metrics(decode(model, val_codes), val_set)},
        "robustness_psnr": robustness,
        "energy_distance_train_codes": energy_distance(train_codes, val_codes),
        "swd_train_images": sliced_wasserstein(to_uint8(train_set), references, seed=seed)["mean"],
        "code_std": val_codes.std().item(),
        "code_saturated": ((val_codes < 0.01) | (val_codes > 0.99)).float().mean().item(),
        "generation": {},
    }
    samples = {}
    for label, name in SCHEDULES.items():
        schedule = get_schedule(name)
        torch.manual_seed(seed)
        denoiser = CodeDenoiser(schedule)
        unet_log = train(
            denoiser,
            train_codes,
            lr=args.unet_lr,
            seed=seed,
            steps=args.unet_steps,
            batch=args.unet_batch,
            label=f"UNet {reg} {label}",
        )
        noise = torch.randn(val_codes.shape, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            x0 = sample("dpm-solver++", denoiser.unet, schedule, noise, args.sampler_steps)
        sampled = data_to_codes(x0).float()
        samples[label] = decode(model, sampled)
        result["generation"][label] = {
            "unet": unet_log,
            "energy_distance": energy_distance(sampled, val_codes),
            "swd": sliced_wasserstein(to_uint8(samples[label]), references, seed=seed)["mean"],
        }
    return result, samples


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ae-steps", type=int, default=400, help="autoencoder steps (batch 8)")
    parser.add_argument("--lr", type=float, default=5e-4, help="autoencoder Adam lr (CPU recipe)")
    parser.add_argument("--unet-steps", type=int, default=400, help="UNet optimizer steps")
    parser.add_argument("--unet-batch", type=int, default=32, help="key codes per UNet step")
    parser.add_argument("--unet-lr", type=float, default=8e-4, help="UNet Adam lr (App. A.6)")
    parser.add_argument("--sampler-steps", type=int, default=20, help="DPM-Solver++ steps")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    if replot(args, "regularisation", "regularisations", plot):
        return 0
    if args.smoke:
        args.ae_steps, args.unet_steps, args.sampler_steps, args.seeds = 2, 2, 2, args.seeds[:1]
    setup(args)
    started = time.perf_counter()
    train_set = images("train", 32)
    val_set = images("val", 32, limit=16 if args.smoke else 0)
    results, shown = {}, {}
    for reg in REGULARISATIONS:
        runs = []
        for seed in args.seeds:
            result, samples = run(reg, seed, args, train_set, val_set)
            runs.append(result)
            for label, images_ in samples.items():
                shown.setdefault(f"{reg}, {label}", images_[:8])
        keys = ("energy_distance_train_codes", "swd_train_images", "code_std", "code_saturated")
        results[reg] = {
            "runs": runs,
            **{key: over_seeds([r[key] for r in runs]) for key in keys},
            "ae_psnr": over_seeds([r["ae"]["psnr"]["mean"] for r in runs]),
            "robustness_psnr": {
                s: over_seeds([r["robustness_psnr"][s] for r in runs])
                for s in runs[0]["robustness_psnr"]
            },
            "generation": {
                label: {
                    key: over_seeds([r["generation"][label][key] for r in runs])
                    for key in ("energy_distance", "swd")
                }
                for label in SCHEDULES
            },
        }
    grid = args.out / "regularisation_samples.png"
    save_image_grid(torch.cat([val_set[:8], *shown.values()]), grid, columns=8)
    plot(results, args.out / "regularisation.png")
    payload = {
        "title": "Relaxed precision vs KL vs none, through diffusion (claim c)",
        "command": command_line(),
        "environment": environment(args.threads),
        "setup": {
            "preset": PRESET,
            "ae_steps": args.ae_steps,
            "lr": args.lr,
            "unet": "tiny",
            "unet_steps": args.unet_steps,
            "unet_batch": args.unet_batch,
            "unet_lr": args.unet_lr,
            "schedules": SCHEDULES,
            "sampler": f"dpm-solver++ {args.sampler_steps} steps",
            "seeds": args.seeds,
            "held_out_images": len(val_set),
        },
        "regularisations": results,
        "samples": grid.name + " (rows: held-out images, then samples of " + ", ".join(shown) + ")",
    }
    save(args.out, "regularisation", payload, table(results), started)
    return 0


def table(results: dict) -> str:
    rows = []
    for reg, r in results.items():
        rob, gen = r["robustness_psnr"], r["generation"]
        rows.append(
            [
                reg,
                pm(r["ae_psnr"]),
                *(f"{rob[s]['mean']:.2f}" for s in rob),
                *(pm(g["energy_distance"], 3) for g in gen.values()),
                f"{r['energy_distance_train_codes']['mean']:.3f}",
                *(pm(g["swd"], 1) for g in gen.values()),
                f"{r['swd_train_images']['mean']:.1f}",
                f"{r['code_saturated']['mean']:.3f}",
            ]
        )
    first = next(iter(results.values()))
    sigmas = [f"PSNR σ={_fraction(float(s))}" for s in first["robustness_psnr"]]
    labels = [label.split(":")[0] for label in first["generation"]]
    header = [
        "key codes",
        "AE PSNR (dB)",
        *sigmas,
        *(f"energy dist. ({label})" for label in labels),
        "train codes",
        *(f"SWD ({label})" for label in labels),
        "train images",
        "codes saturated",
    ]
    return markdown_table(header, rows)


def _fraction(sigma: float) -> str:
    return f"1/{round(1 / sigma)}" if sigma else "0"


def plot(results: dict, path) -> None:
    fig, axes = figure(1, 3, size=(14, 4))
    robust, energy, swd = axes[0]
    names = list(results)
    for reg, r in results.items():
        sigmas = [_fraction(float(s)) for s in r["robustness_psnr"]]
        means = [v["mean"] for v in r["robustness_psnr"].values()]
        stds = [v["std"] for v in r["robustness_psnr"].values()]
        robust.errorbar(sigmas, means, yerr=stds, marker="o", capsize=3, label=reg)
    robust.set(
        xlabel="code noise σ", ylabel="held-out PSNR (dB)", title="decode(clip(z + N(0, σ²)))"
    )
    robust.legend()
    labels = list(results[names[0]]["generation"])
    width = 0.8 / len(labels)
    for axis, key, floor, title in (
        (
            energy,
            "energy_distance",
            "energy_distance_train_codes",
            "energy distance to held-out codes",
        ),
        (swd, "swd", "swd_train_images", "SWD (x1e3) to held-out images"),
    ):
        for i, label in enumerate(labels):
            stats = [results[n]["generation"][label][key] for n in names]
            axis.bar(
                [j + (i - (len(labels) - 1) / 2) * width for j in range(len(names))],
                [v["mean"] for v in stats],
                width,
                yerr=[v["std"] for v in stats],
                capsize=3,
                label=f"samples, {label}",
            )
        axis.scatter(
            range(len(names)),
            [results[n][floor]["mean"] for n in names],
            color="k",
            marker="_",
            s=400,
            zorder=3,
            label="training set (floor)",
        )
        axis.set_xticks(range(len(names)), names)
        axis.set(title=title)
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
