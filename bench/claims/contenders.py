"""The autoencoders the claims compare, behind one interface.

Each contender maps images (B, 3, H, W) in [-1, 1] to a reconstruction and a training loss,
and reports its bottleneck statistics:

- :class:`BRICS`: ``models.BRICSAutoencoder`` with the repo's generator objective restricted
  to L2 (``20 L2``, + ``1e-6 KL`` for KL-regularised key codes; no perceptual, no GAN).
- :class:`VQ`: diffusers' ``VQModel`` (taming-transformers' VQGAN design: ResNet encoder /
  decoder, nearest-neighbour codebook, straight-through gradients, codebook + 0.25
  commitment loss at weight 1 next to the per-pixel reconstruction loss, as taming).
- :class:`KL`: diffusers' ``AutoencoderKL`` (latent-diffusion's KL autoencoder: a diagonal
  Gaussian posterior, KL weight 1e-6 against the per-pixel *sum* of the reconstruction
  loss, LDM's ratio; here both terms are divided by the pixels per image).

The baselines are benchmark-only dependencies (``pip install -e ".[bench]"``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # models/ of this checkout

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from models import BRICSAutoencoder, get_preset
from models.losses import kl_loss
from models.optim import AE_BETAS, AE_EPS

BASELINE_WIDTHS = (32, 64, 128)  # block_out_channels of the f4 baselines (2 downsamplings)
CODEBOOK_SIZE = 8192  # LDM's vq-f4 codebook
KL_WEIGHT = 1e-6


class Contender(nn.Module):
    """An autoencoder under test. Subclasses set ``name`` and implement the methods."""

    name = "?"
    betas: tuple[float, float] = (0.5, 0.9)  # taming-transformers' Adam
    eps: float = 1e-8

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training loss (scalar) and the reconstruction, in training mode."""
        raise NotImplementedError

    def code(self, images: torch.Tensor) -> torch.Tensor:
        """Deterministic bottleneck (B, C, h, w) of images, what the decoder reads."""
        raise NotImplementedError

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) of bottleneck codes."""
        raise NotImplementedError

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.code(images))

    def decoder(self) -> list[nn.Module]:
        """The modules that turn a code into an image (for parameter counts)."""
        raise NotImplementedError

    def decoder_parameters(self) -> int:
        return sum(p.numel() for m in self.decoder() for p in m.parameters())

    def decoder_macs(self, code: torch.Tensor) -> float:
        """Multiply-accumulates of decoding one code (1, C, h, w), by PyTorch's flop counter
        (convolutions, matrix products, attention); see bench/complexity.py."""
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            self.decode(code[:1].detach())
        return counter.get_total_flops() / 2


class BRICS(Contender):
    betas, eps = AE_BETAS, AE_EPS  # the repo's stage-1 Adam (App. A.2)

    def __init__(self, preset: str = "small-64", **overrides) -> None:
        super().__init__()
        self.model = BRICSAutoencoder(get_preset(preset, **overrides))
        self.name = "BRICS " + preset

    def loss(self, images):
        out = self.model(images)
        total = 20 * F.mse_loss(out.reconstruction, images)
        if out.mean is not None:
            total = total + KL_WEIGHT * kl_loss(out.mean, out.logvar)
        return total, out.reconstruction

    def code(self, images):
        return self.model.encode(images)

    def decode(self, code):
        return self.model.decode(code)

    def decoder(self):
        return [self.model.retrieval, self.model.decoder]

    def decoder_macs(self, code):
        """Counted MACs plus the grid interpolation's, which the counter does not see (App. B:
        Hd Wd Nh 2^(Ckey+2) Cv Nr per image)."""
        c = self.model.config
        grid = c.tile_size**2 * c.n_groups * 2 ** (c.key_length + 2) * c.n_features * c.n_levels
        return super().decoder_macs(code) + grid


def _diffusers_blocks(widths: tuple[int, ...]) -> dict:
    return dict(
        down_block_types=("DownEncoderBlock2D",) * len(widths),
        up_block_types=("UpDecoderBlock2D",) * len(widths),
        block_out_channels=widths,
        layers_per_block=1,
        latent_channels=4,
    )


class VQ(Contender):
    """VQGAN-style autoencoder with a ``codebook_size`` x 4 codebook."""

    def __init__(self, widths=BASELINE_WIDTHS, codebook_size: int = CODEBOOK_SIZE) -> None:
        super().__init__()
        from diffusers import VQModel

        self.model = VQModel(**_diffusers_blocks(widths), num_vq_embeddings=codebook_size)
        self.name = f"VQ (codebook {codebook_size})"

    def loss(self, images):
        out = self.model(images)
        return F.mse_loss(out.sample, images) + out.commit_loss, out.sample

    def code(self, images):
        return self.model.encode(images).latents  # pre-quantisation; decode quantises

    def decode(self, code):
        return self.model.decode(code).sample

    @torch.no_grad()
    def codebook_indices(self, images: torch.Tensor) -> torch.Tensor:
        """Codebook entry of every latent position, (B * h * w,) int64."""
        _, _, (_, _, indices) = self.model.quantize(self.code(images))
        return indices.flatten()

    def decoder(self):
        return [self.model.quantize, self.model.post_quant_conv, self.model.decoder]


class KL(Contender):
    """KL-regularised autoencoder (LDM kl-f4 design at ``widths``)."""

    def __init__(self, widths=BASELINE_WIDTHS) -> None:
        super().__init__()
        from diffusers import AutoencoderKL

        self.model = AutoencoderKL(**_diffusers_blocks(widths))
        self.name = "KL autoencoder"

    def loss(self, images):
        posterior = self.model.encode(images).latent_dist
        reconstruction = self.model.decode(posterior.sample()).sample
        pixels = images[0].numel()
        kl = posterior.kl().mean() / pixels  # KL summed per image, LDM's ratio to the sum
        return F.mse_loss(reconstruction, images) + KL_WEIGHT * kl, reconstruction

    def code(self, images):
        return self.model.encode(images).latent_dist.mode()

    def decode(self, code):
        return self.model.decode(code).sample

    def decoder(self):
        return [self.model.post_quant_conv, self.model.decoder]


CONTENDERS = {"brics": BRICS, "vq": VQ, "kl": KL}
