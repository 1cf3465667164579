"""Stage 1: train the BRICS autoencoder (paper Sec. 3, App. A.2-A.4).

    accelerate launch train/ae.py                                  # small preset, built-in photos
    accelerate launch train/ae.py --preset church-64x64x4 --data /data/church_outdoor_train_lmdb
    accelerate launch --multi_gpu --num_processes 8 train/ae.py --config my_run.yaml

Alternates autoencoder and discriminator updates (the GAN term starts after
``--gan-start`` steps), keeps EMA weights of the autoencoder (used by evaluation, the codes
cache of stage 2 and sampling), evaluates them on the held-out split, writes image grids,
TensorBoard logs and crash-safe checkpoints to ``--output-dir``, and resumes from the latest
checkpoint there. SIGTERM / SIGINT save a checkpoint and exit cleanly.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # models/ and train/ of this checkout

import torch
from accelerate.utils import set_seed

from models import (
    PRESETS,
    BRICSAutoencoder,
    Discriminator,
    LossConfig,
    build_optimizers,
    discriminator_loss,
    discriminator_penalty,
    generator_loss,
    get_preset,
    precision,
)
from models.errors import UserError
from models.losses import GAN_LOSSES, resolve_perceptual_loss, through_detached
from models.presets import ae_recipe
from train.core.data import build_dataset
from train.core.evaluation import evaluate_autoencoder, save_reconstruction_grid, write_metrics
from train.core.loop import EMA, Stage, launch, lr_factor, make_accelerator
from train.core.metrics import try_lpips
from train.core.options import RunOptions, option, parse_options

logger = logging.getLogger("train.ae")


@dataclass(frozen=True)
class AEOptions(RunOptions):
    output_dir: Path = option(Path("runs/ae"), "run folder: checkpoints, logs, grids, metrics")
    preset: str = option(
        "small-64", "model preset and its recipe (models/presets.py)", tuple(PRESETS)
    )
    data: str = option("embedded", "'embedded' (built-in photos), an image folder or an LMDB")
    gan_start: int | None = option(
        None,
        "step at which the adversarial loss starts (default: the recipe's; the paper presets "
        "0 as the authors' StyleGAN2 loss, the CPU presets 30000 as taming-transformers' VQGAN)",
    )
    ema_decay: float = option(
        0.999,
        "decay of the autoencoder's EMA weights (the authors' G_ema: 0.5 ** (batch / 10k images)"
        " = 0.99917 at batch 12), with the (1 + n) / (10 + n) warm-up",
    )
    gan: str = option(
        "nonsaturating-r1",
        "adversarial loss: the authors' code's (non-saturating logistic + R1) or the paper "
        "text's (WGAN + gradient penalty)",
        tuple(GAN_LOSSES),
    )
    reg_interval: int | None = option(
        None,
        "lazy regularisation: the GAN penalty as a D update of its own every this many steps, "
        "weighted by it (default: 16 for nonsaturating-r1, as the authors; 1 for wgan-gp, the "
        "text's every step, in the same update)",
    )
    perceptual: str = option(
        "auto",
        "perceptual loss; 'auto': LPIPS if its weights are cached, else none (warns)",
        ("auto", "lpips", "vgg", "none"),
    )
    hflip: bool = option(True, "random horizontal flips of training images")
    grid_type: str | None = option(
        None, "override the preset's grid type", (None, "tiled", "hash", "dense")
    )
    log2_table_size: int | None = option(None, "override the preset's grid table size (App. K)")
    key_regularization: str | None = option(
        None, "override: relaxed precision, KL (App. A.4) or none", (None, "relaxed", "kl", "none")
    )
    eval_every: int = option(200, "evaluate and write an image grid every this many steps")
    eval_images: int = option(0, "held-out images per periodic evaluation (0: all)")

    POSITIVE = (*RunOptions.POSITIVE, "eval_every", "reg_interval")
    NON_NEGATIVE = (*RunOptions.NON_NEGATIVE, "eval_images")
    # A checkpoint resumes only with the loss it was trained with.
    RESUME_FIXED = (*RunOptions.RESUME_FIXED, "gan")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.ema_decay < 1:
            raise UserError(f"need 0 <= --ema-decay < 1, got {self.ema_decay}")
        if self.gan_start is not None and self.gan_start < 0:
            raise UserError(f"--gan-start must be >= 0, got {self.gan_start}")
        try:  # the model and loss accept the overrides: checked when parsed
            self.model_config()
            LossConfig(gan=self.gan, reg_interval=self.reg_interval)
        except ValueError as error:
            raise UserError(f"--preset {self.preset} with these options: {error}") from None

    def with_recipe(self, recipe) -> AEOptions:
        """These options with the recipe's lr, batch, duration and GAN start where unset."""
        options = super().with_recipe(recipe)
        if options.gan_start is None:
            options = dataclasses.replace(options, gan_start=recipe.gan_start)
        return options

    def model_config(self):
        overrides = {
            k: getattr(self, k)
            for k in ("grid_type", "log2_table_size", "key_regularization")
            if getattr(self, k) is not None
        }
        return get_preset(self.preset, **overrides)


class AutoencoderStage(Stage):
    """The autoencoder against the discriminator (App. A.3 losses, App. A.2 optimizers)."""

    name = "ae"

    def __init__(self, options: AEOptions) -> None:
        acc = make_accelerator(options)
        config = options.model_config()
        # Data first: a missing or empty folder fails before any model is built.
        super().__init__(options, acc, build_dataset(options.data, "train", config.image_size))
        try:
            self.val_set = build_dataset(options.data, "val", config.image_size)
        except FileNotFoundError as error:
            logger.warning("no held-out evaluation: %s", error)
            self.val_set = None
        self.hflip = options.hflip
        kind, perceptual = resolve_perceptual_loss(options.perceptual)
        self.perceptual = perceptual.to(acc.device) if perceptual is not None else None
        gan, interval = options.gan, options.reg_interval
        self.losses = LossConfig(perceptual=kind, gan=gan, reg_interval=interval)
        set_seed(options.seed)  # identical initialisation on every process
        autoencoder = BRICSAutoencoder(config, grid_backend=options.grid_backend)
        disc = Discriminator(config.image_size, config.disc_channels, config.disc_max_channels)
        self.ema = EMA(autoencoder, options.ema_decay)
        self.channels_last = options.channels_last
        if self.channels_last is None:
            self.channels_last = precision.channels_last_default(acc.mixed_precision)
        if self.channels_last:
            for module in (autoencoder, disc, self.perceptual):
                to_channels_last(module)
        if options.compile:  # after the EMA copy; in place, so the state dict keeps its names
            autoencoder.compile()
        lazy = self.losses.reg_interval if self.losses.lazy else None
        ae_opt, disc_opt = build_optimizers(autoencoder, disc, options.lr, lazy)
        # Not prepared: the lifecycle steps it once per optimizer step (loop.run_steps).
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(ae_opt, lr_factor(options.warmup_steps))
        prepared = acc.prepare(autoencoder, disc, ae_opt, disc_opt)
        self.autoencoder, self.disc, self.ae_opt, self.disc_opt = prepared
        self.ema.model.to(acc.device)
        self.eval_lpips = try_lpips("alex", acc.device) if self.val_set is not None else None

    def networks(self) -> dict:
        unwrap = self.accelerator.unwrap_model
        return {"autoencoder": unwrap(self.autoencoder), "discriminator": unwrap(self.disc)}

    def configs(self) -> dict:
        return {"autoencoder": self.options.model_config()}

    def stateful(self) -> dict:
        return {
            "ae_optimizer": self.ae_opt,
            "disc_optimizer": self.disc_opt,
            "scheduler": self.scheduler,
        }

    def train_step(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The autoencoder update, then (once the GAN has started) D's update and, on the
        regularised steps of lazy regularisation, D's penalty update (StyleGAN2-ADA's
        ``Gmain``, ``Dmain`` and ``Dreg`` phases), D's pass over the reconstruction serving
        the first two. Mixed precision covers the whole step; the grid lookup stays
        float32."""
        acc, losses, step = self.accelerator, self.losses, self.step
        gan_active = step >= self.options.gan_start
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        raw_disc = acc.unwrap_model(self.disc)
        with acc.accumulate(self.autoencoder, self.disc), acc.autocast():
            out = self.autoencoder(images)
            fake = fake_logits = g_logits = None
            if gan_active:  # one D pass over the reconstruction serves both updates
                fake = out.reconstruction.detach().requires_grad_(True)
                fake_logits = raw_disc(fake)
                g_logits = through_detached(fake_logits, fake, out.reconstruction)
            g_loss, terms = generator_loss(losses, images, out, self.perceptual, g_logits)
            self._update(self.ae_opt, g_loss)  # D's input gradient only: D's are untouched
            if gan_active:
                d_loss, d_terms = discriminator_loss(
                    losses, self.disc, images, fake.detach(), fake_logits=fake_logits
                )
                self._update(self.disc_opt, d_loss)
                terms.update(d_terms)
                # The penalty's own update, once per optimizer step: under --grad-accum, on
                # the last micro-batch (its mean over fewer images), after D's update.
                if losses.lazy and losses.regularised(step) and acc.sync_gradients:
                    reg_loss, reg_terms = discriminator_penalty(losses, self.disc, images, fake)
                    self._update(self.disc_opt, reg_loss)
                    terms.update(reg_terms)
        terms["loss"] = g_loss
        return {k: v.detach() for k, v in terms.items()}

    def _update(self, optimizer, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def evaluate(self) -> None:
        """Held-out metrics of the EMA weights and an image grid (main process) every
        ``eval_every`` steps."""
        o, acc = self.options, self.accelerator
        due = self.step % o.eval_every == 0 or self.step == o.max_steps
        if not due or self.val_set is None or not acc.is_main_process:
            return
        model = self.ema.model
        limit = o.eval_images or len(self.val_set)
        batch = o.micro_batch(acc.num_processes)
        metrics = evaluate_autoencoder(
            model, self.val_set, limit, batch, acc.device, self.eval_lpips
        )
        grid = o.output_dir / "samples" / f"step_{self.step:08d}.png"
        save_reconstruction_grid(model, self.val_set, grid, acc.device)
        metrics["grid"] = str(grid)
        acc.log(write_metrics(o.output_dir, self.step, metrics), step=self.step)


def to_channels_last(module: torch.nn.Module | None) -> None:
    """Every 4-D parameter of ``module`` in channels-last layout, in place (``Module.to``
    refuses the 5-D modulated-conv weights and the grid tables)."""
    for param in [] if module is None else module.parameters():
        if param.dim() == 4:
            param.data = param.data.contiguous(memory_format=torch.channels_last)


def main(argv: list[str] | None = None) -> int:
    options, dry_run = parse_options(AEOptions, __doc__.split("\n\n")[0], argv)
    options = options.with_recipe(ae_recipe(options.preset))
    resolved = {"learning_rate": options.lr, "model": options.model_config().to_dict()}
    return launch(AutoencoderStage, options, dry_run, resolved)


if __name__ == "__main__":
    sys.exit(main())
