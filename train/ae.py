"""Stage 1: train the BRICS autoencoder (paper Sec. 3, App. A.2-A.4).

    accelerate launch train/ae.py                                  # small preset, built-in photos
    accelerate launch train/ae.py --preset church-64x64x4 --data /data/church_outdoor_train_lmdb
    accelerate launch --multi_gpu --num_processes 8 train/ae.py --config my_run.yaml

Alternates autoencoder and discriminator updates (the GAN term starts after
``--gan-start`` steps), evaluates on the held-out split, writes image grids, TensorBoard
logs and crash-safe checkpoints to ``--output-dir``, and resumes from the latest
checkpoint there. SIGTERM / SIGINT save a checkpoint and exit cleanly.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm import tqdm

from models import (
    PRESETS,
    BRICSAutoencoder,
    Discriminator,
    LossConfig,
    build_optimizers,
    build_perceptual_loss,
    discriminator_loss,
    generator_loss,
    get_preset,
)
from train import checkpoint
from train.data import build_dataset
from train.evaluation import evaluate_autoencoder, save_reconstruction_grid
from train.loop import make_accelerator, resume_path, run_steps, start_run
from train.metrics import try_lpips
from train.options import option, parse_options, to_dict

logger = logging.getLogger("train.ae")
PAPER_LR = 2e-3  # App. A.2
# Measured on the built-in photos (small-64, batch 8, no GAN, CPU, 2026-11-25): held-out PSNR
# after 450 steps 16.3 dB at 2e-3 (falling since step 150) vs 19.5 dB at 5e-4 (rising).
CPU_PRESET_LR = {"small-64": 5e-4, "tiny-32": 5e-4}


@dataclass(frozen=True)
class AEOptions:
    preset: str = option("small-64", "model preset (models/config.py)", tuple(PRESETS))
    data: str = option("embedded", "'embedded' (built-in photos), an image folder or an LMDB")
    output_dir: Path = option(Path("runs/ae"), "run folder: checkpoints, logs, grids, metrics")
    resume: str = option(
        "auto", "'auto' (latest checkpoint in the run folder), 'never', or a checkpoint folder"
    )
    max_steps: int = option(800, "optimizer steps to train for")
    batch_size: int = option(8, "images per process and micro-step")
    grad_accum: int = option(1, "micro-steps accumulated per optimizer step")
    lr: float | None = option(
        None,
        "Adam learning rate; default 2e-3 (App. A.2), 5e-4 for the CPU presets small-64 and "
        "tiny-32, whose short runs are unstable at 2e-3",
    )
    warmup_steps: int = option(0, "linear learning-rate warm-up steps")
    gan_start: int = option(
        30000, "step at which the adversarial loss starts (taming-transformers' VQGAN: 30001)"
    )
    gan: str = option(
        "wgan-gp",
        "adversarial loss: the paper's or the authors' code's",
        ("wgan-gp", "nonsaturating-r1"),
    )
    perceptual: str = option(
        "auto",
        "perceptual loss; 'auto': LPIPS if its weights are cached, else none (warns)",
        ("auto", "lpips", "vgg", "none"),
    )
    hflip: bool = option(True, "random horizontal flips of training images")
    grid_backend: str = option("auto", "feature-grid backend", ("auto", "triton", "torch"))
    grid_type: str | None = option(
        None, "override the preset's grid type", (None, "tiled", "hash", "dense")
    )
    log2_table_size: int | None = option(None, "override the preset's grid table size (App. K)")
    key_regularization: str | None = option(
        None, "override: relaxed precision, KL (App. A.4) or none", (None, "relaxed", "kl", "none")
    )
    mixed_precision: str | None = option(
        None,
        "no / fp16 / bf16 (default: accelerate launch's setting)",
        (None, "no", "fp16", "bf16"),
    )
    seed: int = option(0, "random seed (process r uses seed + r for its noise)")
    deterministic: bool = option(False, "torch.use_deterministic_algorithms(True)")
    eval_every: int = option(200, "evaluate and write an image grid every this many steps")
    eval_images: int = option(0, "held-out images per periodic evaluation (0: all)")
    save_every: int = option(100, "checkpoint every this many steps")
    keep_last: int = option(3, "checkpoints to keep")
    log_every: int = option(10, "log losses every this many steps")
    num_workers: int = option(0, "data-loader worker processes")
    cpu_threads: int = option(
        0, "torch threads per process when training on the CPU (0: logical cores / processes)"
    )

    def __post_init__(self) -> None:
        for name in (
            "max_steps",
            "batch_size",
            "grad_accum",
            "eval_every",
            "save_every",
            "keep_last",
            "log_every",
        ):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"
                )
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else CPU_PRESET_LR.get(self.preset, PAPER_LR)

    def model_config(self):
        overrides = {
            k: getattr(self, k)
            for k in ("grid_type", "log2_table_size", "key_regularization")
            if getattr(self, k) is not None
        }
        return get_preset(self.preset, **overrides)

    def loss_config(self, perceptual: str) -> LossConfig:
        return LossConfig(perceptual=perceptual, gan=self.gan)


@dataclass
class Trainer:
    """Everything a training step touches."""

    options: AEOptions
    accelerator: Accelerator
    autoencoder: torch.nn.Module
    discriminator: torch.nn.Module
    ae_optimizer: torch.optim.Optimizer
    disc_optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    perceptual: torch.nn.Module | None
    losses: LossConfig
    train_set: torch.utils.data.Dataset
    val_set: torch.utils.data.Dataset | None
    eval_lpips: torch.nn.Module | None  # LPIPS-alex for evaluation when its weights are cached
    step: int = 0


def resolve_perceptual(kind: str, device) -> tuple[str, torch.nn.Module | None]:
    """Build the perceptual loss; 'auto' falls back to none (with a warning) without weights."""
    if kind == "auto":
        try:
            return "lpips", build_perceptual_loss("lpips").to(device)
        except FileNotFoundError as error:
            logger.warning("training without a perceptual loss: %s", error)
            return "none", None
    module = build_perceptual_loss(kind)
    return kind, module.to(device) if module is not None else None


def build(options: AEOptions) -> Trainer:
    accelerator = make_accelerator(
        options.output_dir,
        options.grad_accum,
        options.mixed_precision,
        options.cpu_threads,
        options.deterministic,
    )
    config = options.model_config()
    # Data first: a missing or empty folder fails before any model is built.
    train_set = build_dataset(options.data, "train", config.image_size)
    try:
        val_set = build_dataset(options.data, "val", config.image_size)
    except FileNotFoundError as error:
        logger.warning("no held-out evaluation: %s", error)
        val_set = None
    kind, perceptual = resolve_perceptual(options.perceptual, accelerator.device)
    set_seed(options.seed)  # identical initialisation on every process
    autoencoder = BRICSAutoencoder(config, grid_backend=options.grid_backend)
    discriminator = Discriminator(config.image_size, config.disc_channels, config.disc_max_channels)
    ae_optimizer, disc_optimizer = build_optimizers(
        autoencoder, discriminator, options.learning_rate
    )
    warmup = options.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        ae_optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    )
    autoencoder, discriminator, ae_optimizer, disc_optimizer, scheduler = accelerator.prepare(
        autoencoder, discriminator, ae_optimizer, disc_optimizer, scheduler
    )
    eval_lpips = try_lpips("alex", accelerator.device) if val_set is not None else None
    return Trainer(
        options,
        accelerator,
        autoencoder,
        discriminator,
        ae_optimizer,
        disc_optimizer,
        scheduler,
        perceptual,
        options.loss_config(kind),
        train_set,
        val_set,
        eval_lpips,
    )


def train_step(t: Trainer, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """One micro-step: autoencoder update, then (once the GAN has started) discriminator update."""
    acc = t.accelerator
    gan_active = t.step >= t.options.gan_start
    raw_disc = acc.unwrap_model(t.discriminator)
    with acc.accumulate(t.autoencoder, t.discriminator):
        out = t.autoencoder(images)
        raw_disc.requires_grad_(False)  # the generator's loss must not touch D's gradients
        fake_logits = raw_disc(out.reconstruction) if gan_active else None
        raw_disc.requires_grad_(True)
        with acc.autocast():
            g_loss, terms = generator_loss(t.losses, images, out, t.perceptual, fake_logits)
        acc.backward(g_loss)
        t.ae_optimizer.step()
        t.scheduler.step()
        t.ae_optimizer.zero_grad(set_to_none=True)
        if gan_active:
            d_loss, d_terms = discriminator_loss(
                t.losses, t.discriminator, images, out.reconstruction, t.step
            )
            acc.backward(d_loss)
            t.disc_optimizer.step()
            t.disc_optimizer.zero_grad(set_to_none=True)
            terms.update(d_terms)
    terms["loss"] = g_loss
    return {k: v.detach() for k, v in terms.items()}


def evaluate(t: Trainer) -> dict | None:
    """Held-out metrics and an image grid (main process); None without a held-out split."""
    if t.val_set is None or not t.accelerator.is_main_process:
        return None
    model = t.accelerator.unwrap_model(t.autoencoder)
    limit = t.options.eval_images or len(t.val_set)
    metrics = evaluate_autoencoder(
        model, t.val_set, limit, t.options.batch_size, t.accelerator.device, t.eval_lpips
    )
    grid = t.options.output_dir / "samples" / f"step_{t.step:08d}.png"
    save_reconstruction_grid(model, t.val_set, grid, t.accelerator.device)
    metrics["grid"] = str(grid)
    return metrics


def save(t: Trainer) -> None:
    acc = t.accelerator
    state = {
        "ae_optimizer": t.ae_optimizer.state_dict(),
        "disc_optimizer": t.disc_optimizer.state_dict(),
        "scheduler": t.scheduler.state_dict(),
    }
    models = {
        "autoencoder": acc.unwrap_model(t.autoencoder),
        "discriminator": acc.unwrap_model(t.discriminator),
    }
    checkpoint.save_checkpoint(
        t.options.output_dir, t.step, acc, models, state, to_dict(t.options), t.options.keep_last
    )


def restore(t: Trainer) -> Path | None:
    """Load the checkpoint ``--resume`` names (default: the run's latest); returns its path."""
    path = resume_path(t.options.resume, t.options.output_dir)
    if path is None:
        return None
    acc = t.accelerator
    models = {
        "autoencoder": acc.unwrap_model(t.autoencoder),
        "discriminator": acc.unwrap_model(t.discriminator),
    }
    checkpoint.check_saved_config(path, "autoencoder", t.options.model_config())
    state = checkpoint.load_checkpoint(path, models)
    t.ae_optimizer.load_state_dict(state["ae_optimizer"])
    t.disc_optimizer.load_state_dict(state["disc_optimizer"])
    t.scheduler.load_state_dict(state["scheduler"])
    t.step = int(state["step"])
    if acc.is_main_process:
        logger.info("resumed from %s at step %d", path, t.step)
    return path


def main(argv: list[str] | None = None) -> int:
    options, dry_run = parse_options(AEOptions, __doc__.split("\n\n")[0], argv)
    if dry_run:
        resolved = {
            "options": to_dict(options),
            "learning_rate": options.learning_rate,
            "model": options.model_config().to_dict(),
        }
        print(json.dumps(resolved, indent=2))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    t = build(options)
    start_run(t, "ae", restore)

    def after_step() -> None:
        if t.step % options.eval_every == 0 or t.step == options.max_steps:
            report(t, evaluate(t))

    run_steps(
        t,
        "ae",
        t.train_set,
        lambda images: train_step(t, images),
        after_step,
        lambda: save(t),
        lambda: t.scheduler.get_last_lr()[0],
        options.hflip,
    )
    return 0


def report(t: Trainer, metrics: dict | None) -> None:
    if metrics is None:
        return
    flat = {
        f"eval/{k}": v["mean"] if isinstance(v, dict) else v
        for k, v in metrics.items()
        if isinstance(v, (int, float, dict)) and (not isinstance(v, dict) or "mean" in v)
    }
    t.accelerator.log(flat, step=t.step)
    record = {"step": t.step, **metrics}
    with open(t.options.output_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    (t.options.output_dir / "metrics.json").write_text(json.dumps(record, indent=2))
    tqdm.write(
        f"step {t.step}: PSNR {metrics['psnr']['mean']:.2f} dB, SSIM "
        f"{metrics['ssim']['mean']:.3f}, usage {metrics['usage_rate']:.3f}",
        file=sys.stdout,
    )


if __name__ == "__main__":
    sys.exit(main())
