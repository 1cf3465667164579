"""One stage-1 training step on a GPU: BRICS against an LDM VQ-f4 autoencoder, same discriminator.

    python bench/train_step.py                  # batch 12, 256^2, fp32 and bf16 autocast
    python bench/train_step.py --batch-size 4 --precisions bf16

A step is what ``train/ae.py`` does once the GAN has started: the autoencoder update
(20 L2 + 5 LPIPS + WGAN generator term, plus the codebook/commitment loss for VQ) and the
discriminator update (WGAN critic loss + 4 gradient penalty), each followed by Adam. Both
models get the same StyleGAN2 discriminator, the same LPIPS module (random VGG weights:
the same compute as the pretrained one, which cannot be downloaded here) and the same
batch of random images, with cuDNN autotuning on. Times are CUDA-event medians over
``--steps`` steps after ``--warmup``; memory is the peak allocated during the timed steps
(weights, optimizer state and activations). Writes ``bench/results/train_step_<gpu>.{json,md}``.

The VQ-f4 model is diffusers' ``VQModel`` with LDM's ``vq-f4`` configuration (channels
128/256/512, 2 res blocks, 3 latent channels, 8192 codes; ``pip install -e ".[bench]"``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # models/ of this checkout

import torch
import torch.nn.functional as F

from models import BRICSAutoencoder, Discriminator, LossConfig, build_optimizers, get_preset
from models.losses import build_perceptual_loss, discriminator_loss

RESULTS = Path(__file__).parent / "results"


class VQF4(torch.nn.Module):
    """LDM's VQ-f4 through diffusers: reconstruction and codebook + commitment loss."""

    def __init__(self) -> None:
        super().__init__()
        from diffusers import VQModel

        self.model = VQModel(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            block_out_channels=(128, 256, 512),
            layers_per_block=2,
            latent_channels=3,
            num_vq_embeddings=8192,
            vq_embed_dim=3,
            norm_num_groups=32,
            sample_size=256,
        )

    def forward(self, images):
        out = self.model(images)
        return out.sample, out.commit_loss.mean()


class BRICS(torch.nn.Module):
    def __init__(self, preset: str) -> None:
        super().__init__()
        self.model = BRICSAutoencoder(get_preset(preset))

    def forward(self, images):
        return self.model(images).reconstruction, None


def make_step(model, discriminator, perceptual, losses: LossConfig, dtype):
    ae_opt, d_opt = build_optimizers(model, discriminator, 1e-4)

    def step(images):
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            rec, extra = model(images)
            discriminator.requires_grad_(False)
            fake_logits = discriminator(rec)
            discriminator.requires_grad_(True)
            loss = losses.l2_weight * F.mse_loss(rec.float(), images)
            loss = loss + losses.perceptual_weight * perceptual(rec, images)
            loss = loss - fake_logits.float().mean()
            if extra is not None:
                loss = loss + extra
        loss.backward()
        ae_opt.step()
        ae_opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            d_loss, _ = discriminator_loss(losses, discriminator, images, rec, 0)
        d_loss.backward()
        d_opt.step()
        d_opt.zero_grad(set_to_none=True)

    return step


def measure(name, build, batch, size, dtype, warmup: int, steps: int, profile=False) -> dict:
    torch.manual_seed(0)
    model = build().cuda().train()
    discriminator = Discriminator(size).cuda()
    perceptual = build_perceptual_loss("lpips", pretrained=False).cuda()
    losses = LossConfig()
    step = make_step(model, discriminator, perceptual, losses, dtype)
    images = torch.rand(batch, 3, size, size, device="cuda") * 2 - 1
    for i in range(warmup):
        begin = time.perf_counter()
        step(images)
        torch.cuda.synchronize()
        print(f"  {name} warm-up step {i}: {time.perf_counter() - begin:.2f} s", flush=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step(images)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as profiler

        with profiler(activities=[ProfilerActivity.CUDA]) as prof:
            step(images)
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12), flush=True)
    row = {
        "model": name,
        "precision": str(dtype).removeprefix("torch."),
        "batch": batch,
        "image_size": size,
        "ms_median": statistics.median(times),
        "ms_min": min(times),
        "ms_max": max(times),
        "images_per_s": batch / (statistics.median(times) / 1e3),
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "disc_params_m": sum(p.numel() for p in discriminator.parameters()) / 1e6,
    }
    del model, discriminator, perceptual, step
    torch.cuda.empty_cache()
    return row


def markdown(env: dict, rows: list[dict]) -> str:
    lines = [
        f"# Stage-1 training step — {env['device']}",
        "",
        f"{env['date']}; torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}; "
        f"diffusers {env.get('diffusers', '—')}",
        "",
        "| model | precision | batch | ms/step (median) | min–max | images/s | peak GB "
        "| AE params (M) | vs VQ-f4 time | vs VQ-f4 memory |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    vq = {r["precision"]: r for r in rows if r["model"] == "vq-f4"}
    for r in rows:
        ref = vq.get(r["precision"])
        ratio_t = f"{ref['ms_median'] / r['ms_median']:.2f}x" if ref else "—"
        ratio_m = f"{r['peak_memory_gb'] / ref['peak_memory_gb']:.2f}" if ref else "—"
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['batch']} | {r['ms_median']:.1f} | "
            f"{r['ms_min']:.1f}–{r['ms_max']:.1f} | {r['images_per_s']:.1f} | "
            f"{r['peak_memory_gb']:.2f} | {r['params_m']:.1f} | {ratio_t} | {ratio_m} |"
        )
    lines += [
        "",
        "vs VQ-f4 time: VQ-f4's step time over this row's (>1: faster than VQ-f4). "
        "vs VQ-f4 memory: this row's peak over VQ-f4's.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=12, help="images per step")
    parser.add_argument("--preset", default="church-64x64x4", help="BRICS preset (256^2 images)")
    parser.add_argument(
        "--precisions",
        nargs="+",
        choices=("fp32", "bf16"),
        default=["fp32", "bf16"],
        help="fp32, and/or bf16 autocast",
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--out", type=Path, default=None, help="output stem")
    parser.add_argument(
        "--profile", action="store_true", help="print the CUDA kernels of one step per model"
    )
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    torch.backends.cudnn.benchmark = True  # both models: what a training run would set
    from bench_grid import environment

    env = environment("cuda")
    try:
        import diffusers

        env["diffusers"] = diffusers.__version__
    except ImportError:
        parser.error('the VQ-f4 baseline needs diffusers: pip install -e ".[bench]"')
    size = get_preset(args.preset).image_size
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    rows = []
    for precision in args.precisions:
        for name, build in (("brics", lambda: BRICS(args.preset)), ("vq-f4", VQF4)):
            row = measure(
                name,
                build,
                args.batch_size,
                size,
                dtypes[precision],
                args.warmup,
                args.steps,
                args.profile and precision == args.precisions[0],
            )
            rows.append({**env, **row})
            ms, gb = row["ms_median"], row["peak_memory_gb"]
            print(f"{name:6s} {precision}: {ms:.1f} ms, {gb:.2f} GB", flush=True)
            # Written after every row, so a run cut short keeps what it measured.
            stem = args.out or RESULTS / f"train_step_{env['device'].replace(' ', '_')}"
            payload = {"environment": env, "rows": rows}
            stem.with_suffix(".json").write_text(json.dumps(payload, indent=1))
            stem.with_suffix(".md").write_text(markdown(env, rows))
    print(markdown(env, rows))


if __name__ == "__main__":
    main()
