"""Stage 2: train a diffusion model on the key codes of a stage-1 autoencoder (App. A.5-A.6).

    accelerate launch train/diffusion.py                      # after train/ae.py: runs/ae
    accelerate launch train/diffusion.py --ae runs/church --data /data/church_lmdb --unet paper

Encodes the dataset once (cached beside the run, re-encoded when the autoencoder or data
changes), trains an epsilon-prediction UNet on x_0 = 2z - 1 under a continuous schedule
with EMA weights, warm-up + cosine learning-rate decay, periodic decoded sample grids,
TensorBoard logs and crash-safe checkpoints; resumes from the latest checkpoint.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import set_seed

from models import BRICSAutoencoder
from models.samplers import SAMPLERS, sample
from models.schedules import SCHEDULES, get_schedule, loss_weight
from models.unet import UNET_PRESETS, UNet, get_unet_preset
from train import checkpoint
from train.codes import load_or_encode
from train.data import FlippableDataset
from train.evaluation import save_image_grid
from train.loop import make_accelerator, resume_path, run_steps, start_run
from train.options import option, parse_options, to_dict

logger = logging.getLogger("train.diffusion")
PAPER = {"batch_size": 64, "lr": 8e-4, "warmup_steps": 10_000, "decay_steps": 1_000_000}


@dataclass(frozen=True)
class DiffusionOptions:
    ae: Path = option(Path("runs/ae"), "stage-1 run, checkpoint or autoencoder folder")
    data: str = option(
        "embedded", "dataset the autoencoder encodes: 'embedded', a folder or an LMDB"
    )
    split: str = option("train", "dataset split to train on", ("train", "val"))
    output_dir: Path = option(Path("runs/diffusion"), "run folder: codes cache, checkpoints, logs")
    resume: str = option("auto", "'auto' (latest checkpoint of the run), 'never' or a checkpoint")
    unet: str = option(
        "auto",
        "UNet preset; 'auto': paper for 64x64 codes, else by code size",
        ("auto", *UNET_PRESETS),
    )
    schedule: str = option("chen-cosine", "noise schedule (App. A.6)", tuple(SCHEDULES))
    max_steps: int = option(1500, "optimizer steps")
    batch_size: int = option(32, "codes per process and micro-step (the paper: 64)")
    grad_accum: int = option(1, "micro-steps per optimizer step")
    lr: float = option(
        8e-4, "peak AdamW learning rate (the paper: 8e-4; the authors' scripts: 8e-5)"
    )
    warmup_steps: int | None = option(
        None, "linear warm-up steps (default: min(10000, max_steps // 10))"
    )
    decay_steps: int = option(1_000_000, "cosine decay length after warm-up (App. A.6: 1e6)")
    ema_decay: float = option(0.9999, "EMA decay (with the 1 - (1 + n) / (10 + n) warm-up)")
    sampler: str = option("dpm-solver++", "sampler of the periodic sample grids", SAMPLERS)
    sample_steps: int = option(20, "sampler steps of the periodic grids")
    sample_every: int = option(500, "write a decoded sample grid every this many steps")
    save_every: int = option(500, "checkpoint every this many steps")
    keep_last: int = option(3, "checkpoints to keep")
    log_every: int = option(10, "log the loss every this many steps")
    seed: int = option(0, "random seed (process r uses seed + r for its noise)")
    deterministic: bool = option(False, "torch.use_deterministic_algorithms(True)")
    mixed_precision: str | None = option(
        None, "no / fp16 / bf16 (default: accelerate launch's)", (None, "no", "fp16", "bf16")
    )
    grid_backend: str = option(
        "auto", "feature-grid backend of the autoencoder", ("auto", "triton", "torch")
    )
    encode_batch: int = option(64, "images per batch when encoding the dataset")
    cpu_threads: int = option(0, "torch threads per process on the CPU (0: cores / processes)")
    num_workers: int = option(0, "data-loader worker processes")

    def __post_init__(self) -> None:
        for name in (
            "max_steps",
            "batch_size",
            "grad_accum",
            "decay_steps",
            "sample_steps",
            "sample_every",
            "save_every",
            "keep_last",
            "log_every",
            "encode_batch",
        ):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"
                )
        if self.lr <= 0 or not 0 <= self.ema_decay < 1:
            raise ValueError(
                f"need --lr > 0 and 0 <= --ema-decay < 1, got {self.lr}, {self.ema_decay}"
            )

    @property
    def warmup(self) -> int:
        return (
            self.warmup_steps
            if self.warmup_steps is not None
            else min(10_000, self.max_steps // 10)
        )


def unet_config(options: DiffusionOptions, ae_config):
    """The UNet for the autoencoder's codes: the named preset, channels and size from the codes."""
    name = options.unet
    if name == "auto":
        name = {64: "paper", 16: "small", 8: "tiny"}.get(ae_config.code_size, "small")
    base = get_unet_preset(name)
    attention = tuple(s for s in base.attention_sizes if s <= ae_config.code_size)
    return get_unet_preset(
        name,
        code_channels=ae_config.code_channels,
        code_size=ae_config.code_size,
        attention_sizes=attention,
    )


class CodeDataset(FlippableDataset):
    """Cached key codes (N, Cz, Hz, Wz) in [0, 1] served as diffusion data 2z - 1 in [-1, 1]."""

    def __init__(self, codes: torch.Tensor) -> None:
        self.codes = codes

    def __len__(self) -> int:
        return len(self.codes)

    def load(self, index: int) -> torch.Tensor:
        return self.codes[index].float() * 2 - 1


class EMA:
    """Exponential moving average of a model's weights, updated on optimizer steps only."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for ema, current in zip(self.model.parameters(), model.parameters()):
            ema.lerp_(current.detach(), 1 - decay)
        for ema, current in zip(self.model.buffers(), model.buffers()):
            ema.copy_(current)


@dataclass
class Trainer:
    options: DiffusionOptions
    accelerator: object
    unet: torch.nn.Module
    ema: EMA
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    schedule: object
    dataset: CodeDataset
    autoencoder_dir: Path
    step: int = 0


def lr_lambda(warmup: int, decay: int):
    """Linear warm-up to 1, then cosine decay to 0 over ``decay`` steps."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / decay)
        return 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def build(options: DiffusionOptions) -> Trainer:
    acc = make_accelerator(
        options.output_dir,
        options.grad_accum,
        options.mixed_precision,
        options.cpu_threads,
        options.deterministic,
    )
    autoencoder_dir = checkpoint.find_autoencoder(options.ae)
    cache = options.output_dir / f"codes_{options.split}.safetensors"
    codes = lambda: load_or_encode(
        autoencoder_dir,
        options.data,
        options.split,
        cache,
        options.encode_batch,
        acc.device,
        options.grid_backend,
    )
    if acc.is_main_process:  # encode once; the other processes then read the cache
        codes()
    acc.wait_for_everyone()
    dataset = CodeDataset(codes())
    ae_config = BRICSAutoencoder.config_class.from_dict(
        json.loads((autoencoder_dir / "config.json").read_text())
    )
    set_seed(options.seed)
    unet = UNet(unet_config(options, ae_config))
    ema = EMA(unet, options.ema_decay)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=options.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(options.warmup, options.decay_steps)
    )
    unet, optimizer, scheduler = acc.prepare(unet, optimizer, scheduler)
    ema.model.to(acc.device)
    return Trainer(
        options,
        acc,
        unet,
        ema,
        optimizer,
        scheduler,
        get_schedule(options.schedule),
        dataset,
        autoencoder_dir,
    )


def train_step(t: Trainer, x0: torch.Tensor) -> torch.Tensor:
    """One micro-step of the weighted epsilon-prediction loss; EMA on optimizer steps."""
    acc = t.accelerator
    with acc.accumulate(t.unet):
        time = torch.rand(x0.shape[0], device=x0.device)
        gamma = t.schedule.gamma(time).view(-1, 1, 1, 1)
        noise = torch.randn_like(x0)
        x_t = gamma.sqrt() * x0 + (1 - gamma).sqrt() * noise
        with acc.autocast():
            prediction = t.unet(x_t, time)
        per_sample = (prediction.float() - noise).square().flatten(1).mean(dim=1)
        loss = (loss_weight(t.schedule, gamma.flatten()) * per_sample).mean()
        acc.backward(loss)
        t.optimizer.step()
        t.scheduler.step()
        t.optimizer.zero_grad(set_to_none=True)
        if acc.sync_gradients:
            t.ema.update(acc.unwrap_model(t.unet))
    return loss.detach()


@torch.no_grad()
def decode_samples(
    unet,
    autoencoder: BRICSAutoencoder,
    schedule,
    n: int,
    sampler: str,
    steps: int,
    seed: int,
    device,
    eta: float = 0.0,
    batch_size: int = 64,
) -> torch.Tensor:
    """``n`` images (n, 3, H, W) in [-1, 1]: sampled codes, mapped back to [0, 1], decoded."""
    c = unet.config
    generator = torch.Generator(device=device).manual_seed(seed)
    images = []
    for start in range(0, n, batch_size):
        shape = (min(batch_size, n - start), c.code_channels, c.code_size, c.code_size)
        noise = torch.randn(shape, generator=generator, device=device)
        x0 = sample(sampler, unet, schedule, noise, steps, eta=eta, generator=generator)
        codes = ((x0 + 1) / 2).clamp(0, 1)
        images.append(autoencoder.decode(codes.float()).clamp(-1, 1).cpu())
    return torch.cat(images)


def write_samples(t: Trainer) -> None:
    if not t.accelerator.is_main_process:
        return
    device = t.accelerator.device
    autoencoder = BRICSAutoencoder.from_pretrained(
        t.autoencoder_dir, device=device, grid_backend=t.options.grid_backend
    ).eval()
    images = decode_samples(
        t.ema.model,
        autoencoder,
        t.schedule,
        16,
        t.options.sampler,
        t.options.sample_steps,
        t.options.seed,
        device,
    )
    save_image_grid(images, t.options.output_dir / "samples" / f"step_{t.step:08d}.png", columns=8)


def save(t: Trainer) -> None:
    acc = t.accelerator
    state = {
        "optimizer": t.optimizer.state_dict(),
        "scheduler": t.scheduler.state_dict(),
        "ema_updates": t.ema.updates,
    }
    models = {"unet": acc.unwrap_model(t.unet), "ema": t.ema.model}
    options = {**to_dict(t.options), "autoencoder": str(t.autoencoder_dir)}
    checkpoint.save_checkpoint(
        t.options.output_dir, t.step, acc, models, state, options, t.options.keep_last
    )


def restore(t: Trainer) -> Path | None:
    path = resume_path(t.options.resume, t.options.output_dir)
    if path is None:
        return None
    acc = t.accelerator
    checkpoint.check_saved_config(path, "unet", t.ema.model.config)
    state = checkpoint.load_checkpoint(path, {"unet": acc.unwrap_model(t.unet), "ema": t.ema.model})
    t.optimizer.load_state_dict(state["optimizer"])
    t.scheduler.load_state_dict(state["scheduler"])
    t.ema.updates = int(state["ema_updates"])
    t.step = int(state["step"])
    if acc.is_main_process:
        logger.info("resumed from %s at step %d", path, t.step)
    return path


def main(argv: list[str] | None = None) -> int:
    options, dry_run = parse_options(DiffusionOptions, __doc__.split("\n\n")[0], argv)
    if dry_run:
        print(json.dumps({"options": to_dict(options), "warmup_steps": options.warmup}, indent=2))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    t = build(options)
    start_run(t, "diffusion", restore)

    def after_step() -> None:
        if t.step % options.sample_every == 0 or t.step == options.max_steps:
            write_samples(t)

    run_steps(
        t,
        "diffusion",
        t.dataset,
        lambda x0: {"loss": train_step(t, x0)},
        after_step,
        lambda: save(t),
        lambda: t.scheduler.get_last_lr()[0],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
