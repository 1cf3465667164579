"""Noise schedules, loss weights, samplers on a Gaussian with a known score, and the UNet."""

import itertools
import math

import pytest
import torch

from models.diffusion import KeyCodeDiffusion, codes_to_data, data_to_codes, diffuse
from models.samplers import LOG_SNR_START, SAMPLERS, ddim_sample, log_snr_grid, sample
from models.schedules import ChenCosineSchedule, CosineSchedule, get_schedule, loss_weight, snr
from models.unet import UNET_PRESETS, UNet, get_unet_preset

SCHEDULES = [CosineSchedule(), ChenCosineSchedule()]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.name)
def test_schedule_endpoints_and_monotonicity(schedule):
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    gamma = schedule.gamma(t)
    assert gamma[0].item() == pytest.approx(1.0, abs=1e-12)
    assert gamma[-1].item() <= 1e-8
    assert (gamma[1:] <= gamma[:-1]).all()
    assert ((gamma > 0) & (gamma <= 1)).all()


def test_schedule_values_at_chosen_times():
    # Cosine (s = 0.008) at t = 0.5: cos(0.508/1.008 pi/2)^2 / cos(0.008/1.008 pi/2)^2
    expected = (
        math.cos(0.508 / 1.008 * math.pi / 2) ** 2 / math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    )
    half = torch.tensor([0.5], dtype=torch.float64)
    assert CosineSchedule().gamma(half).item() == pytest.approx(expected, rel=1e-12)
    # Chen (start 0.2, end 1, tau 1.5) at t = 0.5: v = cos(0.3 pi)^3, v_start = cos(0.1 pi)^3,
    # v_end = 0, so gamma = (cos(0.3 pi) / cos(0.1 pi))^3 = 0.618034^3 = 0.236068
    assert ChenCosineSchedule().gamma(half).item() == pytest.approx(0.2360680, rel=1e-6)
    with pytest.raises(ValueError, match="'linear'"):
        get_schedule("linear")


def test_min_snr_weights():
    # SNR 10 -> min(10, 5) / 10 = 0.5; SNR 2 -> 1; Chen's schedule has uniform weights
    gamma = torch.tensor([10 / 11, 2 / 3], dtype=torch.float64)
    torch.testing.assert_close(snr(gamma), torch.tensor([10.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(
        loss_weight(CosineSchedule(), gamma), torch.tensor([0.5, 1.0], dtype=torch.float64)
    )
    assert torch.equal(loss_weight(ChenCosineSchedule(), gamma), torch.ones(2, dtype=torch.float64))


class GaussianScore:
    """The exact epsilon prediction for data x_0 ~ N(mu, s^2): E[eps | x_t]."""

    def __init__(self, schedule, mu: float, s: float) -> None:
        self.schedule, self.mu, self.s = schedule, mu, s

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        gamma = self.schedule.gamma(t.double()).view(-1, *([1] * (x.dim() - 1)))
        variance = gamma * self.s**2 + 1 - gamma
        return ((1 - gamma).sqrt() * (x.double() - gamma.sqrt() * self.mu) / variance).to(x.dtype)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.name)
@pytest.mark.parametrize(("name", "steps"), [("ddpm", 200), ("ddim", 100), ("dpm-solver++", 20)])
def test_samplers_match_a_gaussian_target(schedule, name, steps):
    mu, s = 0.3, 0.5
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(100_000, 1, generator=generator, dtype=torch.float64)
    x = sample(
        name,
        GaussianScore(schedule, mu, s),
        schedule,
        noise,
        steps,
        clip=False,
        generator=generator,
    )
    # 1e5 samples: the standard error of the mean is 0.5 / 316 = 0.0016, of the std 0.0011.
    # The tolerances leave that 5-sigma room plus the sampler's discretisation error.
    assert abs(x.mean().item() - mu) < 0.02, x.mean().item()
    assert abs(x.std().item() / s - 1) < 0.05, x.std().item()


def test_dpm_solver_grid_starts_where_the_signal_begins():
    schedule = ChenCosineSchedule()  # log-SNR ln(1e-9) = -20.7 at t = 1
    times = log_snr_grid(schedule, 20, "cpu")
    gamma = schedule.gamma(times[:-1])
    log_snr = torch.log(gamma / (1 - gamma))
    assert log_snr[0].item() == pytest.approx(LOG_SNR_START, abs=1e-3) and times[0] < 1
    # uniform from there to t_min: 5 of 20 evaluations below log-SNR -6 (from ln 1e-9: 11)
    assert int((log_snr <= -6).sum()) == 5
    torch.testing.assert_close(log_snr.diff(), log_snr.diff()[:1].expand(19), rtol=1e-3, atol=0)


def _std_ratio(name, schedule, steps, **kwargs):
    """Std of the samples over s * std(noise): 1 for an exact solver on N(0.3, 0.5^2)."""
    mu, s = 0.3, 0.5
    noise = torch.randn(20_000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = GaussianScore(schedule, mu, s)
    x = sample(name, model, schedule, noise, steps, clip=False, **kwargs)
    return x.std().item() / (s * noise.std().item())


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.name)
@pytest.mark.parametrize(("steps", "tolerance"), [(10, 0.025), (20, 0.02)])
def test_few_step_dpm_solver_reaches_the_target_std(schedule, steps, tolerance):
    # Deterministic: the exact flow maps noise n to mu + s n, so the std is s * std(noise).
    ratio = _std_ratio("dpm-solver++", schedule, steps)
    assert abs(ratio - 1) < tolerance, ratio


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.name)
def test_dpm_solver_3m_at_20_steps(schedule):
    """DPM-Solver++(3M) is within 0.5% at 20 steps on both schedules, closer than 2M (1.6%
    and 0.8% off); at 10 steps it overshoots (docs/fidelity.md)."""
    errors = {
        order: abs(_std_ratio("dpm-solver++", schedule, 20, order=order) - 1) for order in (2, 3)
    }
    assert errors[3] < 0.005 and errors[3] < errors[2], errors
    with pytest.raises(ValueError, match="order must be 2 or 3, got 4"):
        _std_ratio("dpm-solver++", schedule, 10, order=4)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.name)
def test_ddim_contracts_and_converges_at_first_order(schedule):
    """On a Gaussian, a DDIM step from rho = sigma/alpha to q*rho scales y - mu (y = x/alpha)
    by 1 - (1 - q) u, u = rho^2 / (s^2 + rho^2), the exact flow by sqrt(1 - (1 - q^2) u);
    the first is smaller by (1 - q)^2 u (1 - u) in the square, so DDIM always contracts the
    spread, and the deficit summed over a grid is ~ step / 4 in log rho: it halves when the
    steps double and 2% takes 80 (cosine) to 320 (Chen) uniform-t steps, not 10 or 20."""
    ratios = [_std_ratio("ddim", schedule, steps) for steps in (20, 40, 80, 160, 320)]
    errors = [1 - r for r in ratios]
    assert all(e > 0 for e in errors), ratios  # always contracts
    for coarse, fine in itertools.pairwise(errors):
        assert 1.6 < coarse / fine < 2.4, ratios  # first order
    assert errors[-1] < 0.02, ratios


def test_ddim_with_zero_eta_is_deterministic_and_clips():
    schedule = ChenCosineSchedule()
    model = GaussianScore(schedule, 0.0, 2.0)
    noise = torch.randn(64, 3, generator=torch.Generator().manual_seed(1))
    a = ddim_sample(model, schedule, noise, 10, eta=0.0)
    b = ddim_sample(model, schedule, noise, 10, eta=0.0)
    assert torch.equal(a, b)
    assert a.abs().max() <= 1.0  # x_0 predictions are clipped to the data range
    c = ddim_sample(model, schedule, noise, 10, eta=1.0, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(a, c)
    with pytest.raises(ValueError, match="'euler'"):
        sample("euler", model, schedule, noise, 10)
    assert set(SAMPLERS) == {"ddpm", "ddim", "dpm-solver++"}


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_unet_shapes(name):
    config = get_unet_preset(name)
    unet = UNet(config)
    x = torch.randn(3, config.code_channels, config.code_size, config.code_size)
    assert unet(x, torch.rand(3)).shape == x.shape
    with pytest.raises(ValueError, match=r"\(B, 4"):
        unet(torch.randn(3, 5, config.code_size, config.code_size), torch.rand(3))
    with pytest.raises(ValueError, match=r"t must have shape \(3,\)"):
        unet(x, torch.rand(2))


def test_paper_unet_follows_appendix_a5():
    config = UNET_PRESETS["paper"]
    assert (config.base_channels, config.channel_mult, config.res_blocks) == (256, (1, 2, 3, 4), 2)
    assert config.attention_sizes == (32, 16, 8)
    with torch.device("meta"):
        unet = UNet(config)
        out = unet(torch.empty(2, 4, 64, 64), torch.empty(2))
    assert out.shape == (2, 4, 64, 64)
    attention = [m for m in unet.modules() if type(m).__name__ == "Attention"]
    assert len(attention) == 2 * 3 + 1 + 3 * 3  # down 2 per level, mid 1, up 3 per level


def test_loss_falls_on_a_toy_code_set():
    torch.manual_seed(0)
    config = get_unet_preset("tiny")
    unet = UNet(config)
    schedule = ChenCosineSchedule()
    grid = torch.linspace(-1, 1, config.code_size)
    codes = (
        torch.stack(
            [
                torch.sin(3 * k * grid)[None, :, None] * torch.cos(2 * k * grid)[None, None, :]
                for k in range(1, 9)
            ]
        )
        .expand(8, config.code_channels, -1, -1)
        .contiguous()
    )
    optimizer = torch.optim.AdamW(unet.parameters(), lr=2e-3)
    diffusion = KeyCodeDiffusion(unet, schedule)
    losses = []
    for _ in range(60):
        loss = diffusion.loss(codes)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10, losses


def test_forward_process_and_code_mapping():
    schedule = CosineSchedule()
    x0, noise = torch.full((2, 1, 2, 2), 0.5), torch.full((2, 1, 2, 2), -1.0)
    t = torch.tensor([0.0, 0.5])
    x_t = diffuse(schedule, x0, t, noise)
    gamma = schedule.gamma(t)
    for i in range(2):  # x_t = sqrt(gamma) x_0 + sqrt(1 - gamma) eps
        expected = gamma[i].sqrt() * 0.5 - (1 - gamma[i]).sqrt()
        torch.testing.assert_close(x_t[i], torch.full((1, 2, 2), expected.item()))
    z = torch.tensor([0.0, 0.25, 1.0])
    assert torch.equal(codes_to_data(z), torch.tensor([-1.0, -0.5, 1.0]))
    assert torch.equal(data_to_codes(torch.tensor([-3.0, -0.5, 2.0])), torch.tensor([0, 0.25, 1]))


class RecordingModel:
    """Predicts zeros and records the (x_t, t) it is called with."""

    def __call__(self, x, t):
        self.x_t, self.t = x, t
        return torch.zeros_like(x)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.name)
def test_loss_is_the_weighted_noise_prediction_error(schedule):
    # With a zero prediction the per-sample error is mean(eps^2); eps is recovered from x_t.
    torch.manual_seed(0)
    model, x0 = (
        RecordingModel(),
        torch.randn(64, 2, 4, 4, generator=torch.Generator().manual_seed(0)),
    )
    loss = KeyCodeDiffusion(model, schedule).loss(x0)
    gamma = schedule.gamma(model.t).view(-1, 1, 1, 1)
    noise = (model.x_t - gamma.sqrt() * x0) / (1 - gamma).sqrt()
    per_sample = noise.square().flatten(1).mean(dim=1)
    expected = (loss_weight(schedule, gamma.flatten()) * per_sample).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=0)
    assert model.t.shape == (64,) and ((model.t >= 0) & (model.t < 1)).all()
