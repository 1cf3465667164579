"""Stage 2: diffusion on key codes (App. A.5-A.6) — forward process, loss, sampling.

Data are key codes z in [0, 1] mapped to x_0 = 2z - 1 in [-1, 1]. The forward process of a
continuous schedule is ``x_t = sqrt(gamma(t)) x_0 + sqrt(1 - gamma(t)) eps``; the network
predicts eps, trained with the schedule's per-sample weight (min-SNR-5 for the cosine
schedule, 1 for Chen's). Sampled x_0 are mapped back, clipped to [0, 1] and decoded.

    loss = KeyCodeDiffusion(unet, schedule).loss(x0)
    images = KeyCodePipeline(unet, autoencoder, schedule).sample(16, "dpm-solver++", 20)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .samplers import EpsModel, sample
from .schedules import loss_weight


def codes_to_data(key_codes: torch.Tensor) -> torch.Tensor:
    """Key codes in [0, 1] -> diffusion data x_0 = 2z - 1 in [-1, 1]."""
    return key_codes * 2 - 1


def data_to_codes(x0: torch.Tensor) -> torch.Tensor:
    """Diffusion samples -> key codes (x_0 + 1) / 2, clipped to [0, 1]."""
    return ((x0 + 1) / 2).clamp(0, 1)


def diffuse(schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(gamma(t)) x_0 + sqrt(1 - gamma(t)) eps for x_0, eps (B, ...) and t (B,)."""
    gamma = schedule.gamma(t).view(-1, *([1] * (x0.dim() - 1)))
    return gamma.sqrt() * x0 + (1 - gamma).sqrt() * noise


@dataclass
class KeyCodeDiffusion:
    """An eps-prediction network under a continuous schedule, and its training loss.

    ``model(x_t, t)`` is the network (a ``UNet`` or its distributed wrapper).
    """

    model: EpsModel
    schedule: object

    def loss(self, x0: torch.Tensor) -> torch.Tensor:
        """Weighted eps-prediction MSE of data x_0 (B, Cz, Hz, Wz) in [-1, 1], a scalar:
        t ~ U[0, 1) and eps ~ N(0, I) per sample, weight ``loss_weight(schedule, gamma(t))``."""
        t = torch.rand(x0.shape[0], device=x0.device)
        noise = torch.randn_like(x0)
        prediction = self.model(diffuse(self.schedule, x0, t, noise), t)
        per_sample = (prediction.float() - noise).square().flatten(1).mean(dim=1)
        return (loss_weight(self.schedule, self.schedule.gamma(t)) * per_sample).mean()


@dataclass
class KeyCodePipeline:
    """Sample key codes with an eps-prediction UNet and decode them with the autoencoder."""

    unet: nn.Module
    autoencoder: nn.Module
    schedule: object

    @torch.no_grad()
    def sample(
        self,
        n: int,
        sampler: str = "dpm-solver++",
        steps: int = 20,
        seed: int = 0,
        eta: float = 0.0,
        batch_size: int = 64,
        clip: bool = True,
        order: int = 2,
    ) -> torch.Tensor:
        """``n`` images (n, 3, H, W) in [-1, 1] on the CPU: :meth:`sample_codes` decoded."""
        codes = self.sample_codes(n, sampler, steps, seed, eta, batch_size, clip, order)
        return self.decode(codes, batch_size)

    @torch.no_grad()
    def sample_codes(
        self,
        n: int,
        sampler: str = "dpm-solver++",
        steps: int = 20,
        seed: int = 0,
        eta: float = 0.0,
        batch_size: int = 64,
        clip: bool = True,
        order: int = 2,
    ) -> torch.Tensor:
        """``n`` key codes (n, Cz, Hz, Wz) float32 in [0, 1] on the UNet's device, drawn in
        batches of ``batch_size`` from one generator seeded with ``seed`` on that device;
        ``clip``: x_0 predictions clipped to [-1, 1] at every step; ``order``: DPM-Solver++'s
        (2 or 3)."""
        c = self.unet.config
        device = next(self.unet.parameters()).device
        generator = torch.Generator(device=device).manual_seed(seed)
        codes = []
        for start in range(0, n, batch_size):
            shape = (min(batch_size, n - start), c.code_channels, c.code_size, c.code_size)
            noise = torch.randn(shape, generator=generator, device=device)
            x0 = sample(
                sampler,
                self.unet,
                self.schedule,
                noise,
                steps,
                eta=eta,
                clip=clip,
                generator=generator,
                order=order,
            )
            codes.append(data_to_codes(x0).float())
        return torch.cat(codes)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Images (n, 3, H, W) in [-1, 1] on the CPU of key codes (n, Cz, Hz, Wz) in [0, 1]."""
        return torch.cat(
            [
                self.autoencoder.decode(codes[i : i + batch_size]).clamp(-1, 1).cpu()
                for i in range(0, len(codes), batch_size)
            ]
        )
