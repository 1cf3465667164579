"""Continuous-time noise schedules of the key-code diffusion model (App. A.6).

``x_t = sqrt(gamma(t)) x_0 + sqrt(1 - gamma(t)) eps`` for t in [0, 1]; gamma(0) = 1 (clean
data) falls to gamma(1) ~ 0 (pure noise). SNR(t) = gamma / (1 - gamma).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

GAMMA_MIN = 1e-9


@dataclass(frozen=True)
class CosineSchedule:
    """Nichol & Dhariwal (2021) eq. 17: gamma(t) = f(t) / f(0), f(t) = cos((t+s)/(1+s) pi/2)^2.

    Trained with min-SNR-5 loss weights (Hang et al. 2023).
    """

    s: float = 0.008
    name: str = "cosine"
    min_snr: float | None = 5.0

    def gamma(self, t: torch.Tensor) -> torch.Tensor:
        f = lambda u: torch.cos((u + self.s) / (1 + self.s) * math.pi / 2) ** 2
        return (f(t) / f(torch.zeros_like(t))).clamp(GAMMA_MIN, 1.0)


@dataclass(frozen=True)
class ChenCosineSchedule:
    """Chen (2023), "On the importance of noise scheduling", Algorithm 1 (cosine variant).

    gamma(t) = (v_end - cos((t (end - start) + start) pi/2)^(2 tau)) / (v_end - v_start),
    v = cos(. pi/2)^(2 tau), clipped to [1e-9, 1]; paper default start 0.2, end 1, tau 1.5.
    """

    start: float = 0.2
    end: float = 1.0
    tau: float = 1.5
    name: str = "chen-cosine"
    min_snr: float | None = None

    def gamma(self, t: torch.Tensor) -> torch.Tensor:
        power = 2 * self.tau
        v_start = math.cos(self.start * math.pi / 2) ** power
        v_end = math.cos(self.end * math.pi / 2) ** power
        v = (
            torch.cos((t * (self.end - self.start) + self.start) * math.pi / 2).clamp_min(0)
            ** power
        )
        return ((v_end - v) / (v_end - v_start)).clamp(GAMMA_MIN, 1.0)


SCHEDULES = {"cosine": CosineSchedule(), "chen-cosine": ChenCosineSchedule()}


def get_schedule(name: str):
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}")
    return SCHEDULES[name]


def snr(gamma: torch.Tensor) -> torch.Tensor:
    return gamma / (1 - gamma).clamp_min(GAMMA_MIN)


def loss_weight(schedule, gamma: torch.Tensor) -> torch.Tensor:
    """Per-sample weight of the epsilon-prediction MSE: min(SNR, k) / SNR for min-SNR-k, else 1."""
    if schedule.min_snr is None:
        return torch.ones_like(gamma)
    ratio = snr(gamma)
    return ratio.clamp(max=schedule.min_snr) / ratio.clamp_min(GAMMA_MIN)
