"""Samplers for epsilon-prediction models under a continuous schedule gamma(t).

Every sampler walks a time grid from t = 1 to t = 0 and returns x_0 estimates; with
``clip=True`` the x_0 prediction of each step is clipped to [-1, 1] (the range of the
diffusion's data, key codes mapped by 2z - 1).

``model(x, t)`` is any callable returning epsilon for x (B, ...) and t (B,).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SAMPLERS = ("ddpm", "ddim", "dpm-solver++")


def time_grid(steps: int, device) -> torch.Tensor:
    """``steps + 1`` times from 1 down to 0, uniform in t."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(1.0, 0.0, steps + 1, device=device, dtype=torch.float64)


# Where the signal begins: below this log-SNR (gamma ~ 4.5e-5) x_t is noise to within the
# data's std times 7e-3, so solver steps spent there change nothing.
LOG_SNR_START = -10.0


def log_snr_grid(
    schedule, steps: int, device, t_min: float = 1e-3, log_snr_start: float = LOG_SNR_START
) -> torch.Tensor:
    """``steps + 1`` times from t_max down to 0 whose log-SNR is uniform between t_max and
    ``t_min`` (DPM-Solver's recommended spacing); t_max is where the log-SNR reaches
    ``log_snr_start`` (1 when the schedule starts above it: Chen's cosine reaches ln 1e-9).
    The last time is exactly 0."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    dense = torch.linspace(1.0, t_min, 10_001, device=device, dtype=torch.float64)
    gamma = schedule.gamma(dense)
    log_snr = torch.log(gamma) - torch.log1p(-gamma.clamp(max=1 - 1e-16))  # increasing
    start = max(float(log_snr[0]), log_snr_start)
    targets = torch.linspace(start, float(log_snr[-1]), steps, device=device, dtype=torch.float64)
    index = torch.searchsorted(log_snr.contiguous(), targets).clamp(1, len(dense) - 1)
    lo, hi = log_snr[index - 1], log_snr[index]
    weight = ((targets - lo) / (hi - lo).clamp_min(1e-30)).clamp(0, 1)
    times = dense[index - 1] + weight * (dense[index] - dense[index - 1])
    if start == float(log_snr[0]):
        times[0] = 1.0
    return torch.cat([times, times.new_zeros(1)])


def _predict_x0(model: EpsModel, x: torch.Tensor, t: float, gamma: torch.Tensor, clip: bool):
    eps = model(x, torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)).double()
    x0 = (x.double() - (1 - gamma).sqrt() * eps) / gamma.sqrt()
    if clip:
        x0 = x0.clamp(-1.0, 1.0)
        eps = (x.double() - gamma.sqrt() * x0) / (1 - gamma).sqrt()
    return x0, eps


@torch.no_grad()
def ddpm_sample(
    model: EpsModel,
    schedule,
    noise: torch.Tensor,
    steps: int,
    clip: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Ancestral sampling (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", Alg. 2),
    in continuous time: each step draws x_s from the Gaussian posterior q(x_s | x_t, x_0 = x0_hat).
    """
    times = time_grid(steps, noise.device)
    gammas = schedule.gamma(times)
    x = noise.double()
    for i in range(steps):
        g_t, g_s = gammas[i], gammas[i + 1]
        x0, _ = _predict_x0(model, x.to(noise.dtype), float(times[i]), g_t, clip)
        alpha_ts2 = g_t / g_s  # alpha_{t|s}^2
        mean = (g_s.sqrt() * (1 - alpha_ts2) / (1 - g_t)) * x0 + (
            alpha_ts2.sqrt() * (1 - g_s) / (1 - g_t)
        ) * x
        variance = (1 - g_s) / (1 - g_t) * (1 - alpha_ts2)
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = mean + variance.clamp_min(0).sqrt() * z if i < steps - 1 else x0
    return x.to(noise.dtype)


@torch.no_grad()
def ddim_sample(
    model: EpsModel,
    schedule,
    noise: torch.Tensor,
    steps: int,
    eta: float = 0.0,
    clip: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DDIM (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models", eq. 12);
    eta = 0 is deterministic, eta = 1 matches ancestral sampling's variance."""
    times = time_grid(steps, noise.device)
    gammas = schedule.gamma(times)
    x = noise.double()
    for i in range(steps):
        g_t, g_s = gammas[i], gammas[i + 1]
        x0, eps = _predict_x0(model, x.to(noise.dtype), float(times[i]), g_t, clip)
        sigma = eta * ((1 - g_s) / (1 - g_t) * (1 - g_t / g_s)).clamp_min(0).sqrt()
        x = g_s.sqrt() * x0 + (1 - g_s - sigma**2).clamp_min(0).sqrt() * eps
        if eta > 0 and i < steps - 1:
            x = x + sigma * torch.randn(
                x.shape, generator=generator, device=x.device, dtype=x.dtype
            )
    return x.to(noise.dtype)


@torch.no_grad()
def dpm_solver_pp_sample(
    model: EpsModel,
    schedule,
    noise: torch.Tensor,
    steps: int,
    clip: bool = True,
    order: int = 2,
) -> torch.Tensor:
    """DPM-Solver++(2M) or (3M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided
    Sampling of Diffusion Probabilistic Models", Alg. 2 and its third-order multistep form):
    multistep in the data prediction with lambda = log(alpha / sigma), on time steps uniform
    in log-SNR from where the signal begins (:func:`log_snr_grid`); the noise is taken as x at
    the first time. The first steps use the orders the history allows; grids under 15 steps
    end with lower orders (DPM-Solver++'s lower_order_final, which keeps few-step sampling
    stable). The last step returns the data prediction."""
    if order not in (2, 3):
        raise ValueError(f"order must be 2 or 3, got {order}")
    times = log_snr_grid(schedule, steps, noise.device)
    gammas = schedule.gamma(times)
    alphas, sigmas = gammas.sqrt(), (1 - gammas).clamp_min(0).sqrt()
    lambdas = torch.log(alphas) - torch.log(sigmas.clamp_min(1e-20))
    x = noise.double()
    history: list[tuple[torch.Tensor, torch.Tensor]] = []  # (x0, step h that followed it)
    for i in range(steps):
        x0, _ = _predict_x0(model, x.to(noise.dtype), float(times[i]), gammas[i], clip)
        if i == steps - 1 or sigmas[i + 1] == 0:
            return x0.to(noise.dtype)
        h = lambdas[i + 1] - lambdas[i]
        solver_steps_left = steps - 1 - i
        k = min(order, len(history) + 1, solver_steps_left if steps < 15 else order)
        d = _multistep_derivative(x0, h, history, k)
        x = (sigmas[i + 1] / sigmas[i]) * x - alphas[i + 1] * torch.expm1(-h) * d
        history = [(x0, h), *history[:1]]
    return x.to(noise.dtype)


def _multistep_derivative(x0, h, history, order: int) -> torch.Tensor:
    """The data prediction D the exponential integrator applies over a step of size h:
    x0 itself (order 1), or x0 corrected by divided differences of the previous predictions
    (orders 2 and 3), ``history[j] = (x0 of step -(j + 1), its step size)``."""
    if order == 1:
        return x0
    (x1, h1), *older = history
    r0 = h1 / h
    d1_0 = (x0 - x1) / r0
    if order == 2:
        return x0 + 0.5 * d1_0
    x2, h2 = older[0]
    r1 = h2 / h
    d1_1 = (x1 - x2) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    # x_t = (sigma_t / sigma_s) x_s + alpha_t int_0^h e^-u x0(lambda_t - u) du; with x0
    # expanded to second order in lambda (d1 ~ h x0', d2 ~ h^2 x0'' / 2) the integral is
    # phi1 x0 + (h - phi1) x0' + (h^2 / 2 - h + phi1) x0'', phi1 = 1 - e^-h
    phi1 = -torch.expm1(-h)
    c1 = (h - phi1) / (h * phi1)
    c2 = 2 * (h * h / 2 - h + phi1) / (h * h * phi1)
    return x0 + c1 * d1 + c2 * d2


def sample(
    name: str,
    model: EpsModel,
    schedule,
    noise: torch.Tensor,
    steps: int,
    eta: float = 0.0,
    clip: bool = True,
    generator: torch.Generator | None = None,
    order: int = 2,
) -> torch.Tensor:
    """Dispatch to the sampler ``name`` (one of ``SAMPLERS``); ``order`` is DPM-Solver++'s."""
    if name == "ddpm":
        return ddpm_sample(model, schedule, noise, steps, clip, generator)
    if name == "ddim":
        return ddim_sample(model, schedule, noise, steps, eta, clip, generator)
    if name == "dpm-solver++":
        return dpm_solver_pp_sample(model, schedule, noise, steps, clip, order)
    raise ValueError(f"unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}")
