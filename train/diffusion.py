"""Stage 2: train a diffusion model on the key codes of a stage-1 autoencoder (App. A.5-A.6).

    accelerate launch train/diffusion.py                      # after train/ae.py: runs/ae
    accelerate launch train/diffusion.py --ae runs/church --data /data/church_lmdb --unet paper

Encodes the dataset once (cached beside the run, re-encoded when the autoencoder or data
changes), trains an epsilon-prediction UNet on x_0 = 2z - 1 under a continuous schedule
with EMA weights, warm-up + cosine learning-rate decay, periodic decoded sample grids,
TensorBoard logs and crash-safe checkpoints; resumes from the latest checkpoint.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # models/ and train/ of this checkout

import torch
from accelerate.utils import set_seed

from models import BRICSAutoencoder
from models.diffusion import KeyCodeDiffusion, KeyCodePipeline
from models.errors import UserError
from models.recipes import DIFFUSION_RECIPES, diffusion_recipe
from models.samplers import SAMPLERS
from models.schedules import SCHEDULES, get_schedule
from models.unet import UNet, unet_config_for_codes
from train.core import checkpoint
from train.core.codes import CodeDataset, autoencoder_fingerprint, load_or_encode
from train.core.evaluation import save_image_grid
from train.core.loop import EMA, Stage, launch, lr_factor, make_accelerator
from train.core.options import RunOptions, option, parse_options


@dataclass(frozen=True)
class DiffusionOptions(RunOptions):
    output_dir: Path = option(Path("runs/diffusion"), "run folder: codes cache, checkpoints, logs")
    ae: Path = option(Path("runs/ae"), "stage-1 run, checkpoint or autoencoder folder")
    data: str = option("embedded", "dataset the autoencoder encodes: 'embedded', folder or LMDB")
    split: str = option("train", "dataset split to train on", ("train", "val"))
    unet: str = option(
        "auto",
        "UNet preset and its recipe: batch, lr, duration (models/recipes.py); 'auto': by the "
        "autoencoder's code size (paper for 64x64 codes)",
        ("auto", *DIFFUSION_RECIPES),
    )
    schedule: str = option("chen-cosine", "noise schedule (App. A.6)", tuple(SCHEDULES))
    warmup_steps: int | None = option(
        None, "linear warm-up steps (default: min(10000, max_steps // 10))"
    )
    decay_steps: int = option(1_000_000, "cosine decay length after warm-up (App. A.6: 1e6)")
    ema_decay: float = option(0.9999, "EMA decay (with the 1 - (1 + n) / (10 + n) warm-up)")
    sampler: str = option("dpm-solver++", "sampler of the periodic sample grids", SAMPLERS)
    sample_steps: int = option(20, "sampler steps of the periodic grids")
    sample_every: int = option(500, "write a decoded sample grid every this many steps")
    save_every: int = option(500, "checkpoint every this many steps")
    encode_batch: int = option(64, "images per batch when encoding the dataset")

    POSITIVE = (*RunOptions.POSITIVE, "decay_steps", "sample_steps", "sample_every", "encode_batch")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.ema_decay < 1:
            raise UserError(f"need 0 <= --ema-decay < 1, got {self.ema_decay}")

    @property
    def warmup(self) -> int | None:
        if self.warmup_steps is not None or self.max_steps is None:
            return self.warmup_steps
        return min(10_000, self.max_steps // 10)


def check_same_autoencoder(saved: dict, sha256: str, ae) -> None:
    """A UNet resumes only on the codes of the autoencoder it was trained on."""
    trained_on = saved.get("autoencoder_sha256")
    if trained_on is not None and trained_on != sha256:
        raise UserError(
            f"this run's UNet was trained on the codes of another autoencoder "
            f"({saved.get('autoencoder')}, SHA-256 {trained_on[:12]}...) than --ae {ae} "
            f"({sha256[:12]}...): resume with that --ae, or start a new run in another "
            "--output-dir"
        )


class DiffusionStage(Stage):
    """The eps-prediction UNet on cached key codes, with EMA weights for sampling."""

    name = "diffusion"

    def __init__(self, options: DiffusionOptions) -> None:
        acc = make_accelerator(options)
        self.autoencoder_dir = checkpoint.find_autoencoder(options.ae)
        self.autoencoder_sha256 = autoencoder_fingerprint(self.autoencoder_dir)
        cache = options.output_dir / f"codes_{options.split}.safetensors"
        codes = lambda: load_or_encode(
            self.autoencoder_dir,
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
        super().__init__(options, acc, CodeDataset(codes()))
        ae_config = BRICSAutoencoder.load_config(self.autoencoder_dir)
        recipe = diffusion_recipe(options.unet, ae_config.code_size)
        self.options = options = options.with_recipe(recipe)
        set_seed(options.seed)
        c = ae_config
        unet = UNet(unet_config_for_codes(recipe.unet, c.code_channels, c.code_size))
        self.ema = EMA(unet, options.ema_decay)
        optimizer = torch.optim.AdamW(unet.parameters(), lr=options.lr, weight_decay=0.0)
        factor = lr_factor(options.warmup, options.decay_steps)
        # Not prepared: the lifecycle steps it once per optimizer step (loop.run_steps).
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        self.unet, self.optimizer = acc.prepare(unet, optimizer)
        self.ema.model.to(acc.device)
        self.schedule = get_schedule(options.schedule)
        self.diffusion = KeyCodeDiffusion(self.unet, self.schedule)

    def networks(self) -> dict:
        return {"unet": self.accelerator.unwrap_model(self.unet)}

    def configs(self) -> dict:
        return {"unet": self.ema.model.config}

    def stateful(self) -> dict:
        return {"optimizer": self.optimizer, "scheduler": self.scheduler}

    def saved_options(self) -> dict:
        return {
            **super().saved_options(),
            "autoencoder": str(self.autoencoder_dir),
            "autoencoder_sha256": self.autoencoder_sha256,
        }

    def check_resume(self, saved: dict) -> None:
        check_same_autoencoder(saved, self.autoencoder_sha256, self.options.ae)

    def train_step(self, x0: torch.Tensor) -> dict[str, torch.Tensor]:
        """One micro-step of the weighted epsilon-prediction loss."""
        acc = self.accelerator
        with acc.accumulate(self.unet):
            with acc.autocast():
                loss = self.diffusion.loss(x0)
            acc.backward(loss)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss.detach()}

    def evaluate(self) -> None:
        """A grid of 16 decoded EMA samples every ``sample_every`` steps (main process)."""
        o, acc = self.options, self.accelerator
        due = self.step % o.sample_every == 0 or self.step == o.max_steps
        if not due or not acc.is_main_process:
            return
        autoencoder = BRICSAutoencoder.from_pretrained(
            self.autoencoder_dir, device=acc.device, grid_backend=o.grid_backend
        ).eval()
        pipeline = KeyCodePipeline(self.ema.model, autoencoder, self.schedule)
        images = pipeline.sample(16, o.sampler, o.sample_steps, o.seed)
        save_image_grid(images, o.output_dir / "samples" / f"step_{self.step:08d}.png", columns=8)


def main(argv: list[str] | None = None) -> int:
    options, dry_run = parse_options(DiffusionOptions, __doc__.split("\n\n")[0], argv)
    return launch(DiffusionStage, options, dry_run, {"warmup_steps": options.warmup})


if __name__ == "__main__":
    sys.exit(main())
