"""Losses on hand-made inputs, the discriminator, and the pretrained-weights errors."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.op_counter import OpCounter
from models import (
    AutoencoderOutput,
    Discriminator,
    LossConfig,
    discriminator_loss,
    discriminator_penalty,
    generator_loss,
)
from models.backbones import backbone_weights_path
from models.discriminator import minibatch_stddev
from models.losses import (
    LPIPSLoss,
    VGGFeatureLoss,
    build_perceptual_loss,
    gradient_penalty,
    interpolates,
    kl_loss,
    nonsaturating_discriminator_loss,
    nonsaturating_generator_loss,
    r1_penalty,
    wgan_discriminator_loss,
    wgan_generator_loss,
)


class LinearCritic(nn.Module):
    """D(x) = <w, x>: its gradient is w everywhere."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x: torch.Tensor, parts: int = 1) -> torch.Tensor:
        return (x * self.w).flatten(1).sum(1)


class QuadraticCritic(nn.Module):
    """D(x) = a / 2 |x|^2: its gradient is a x."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.a * x.square().flatten(1).sum(1)


def test_gradient_penalty_of_a_linear_critic():
    w = torch.full((1, 3, 2, 2), 0.5)  # |w| = sqrt(12 * 0.25) = sqrt(3)
    critic = LinearCritic(w)
    real, fake = torch.randn(5, 3, 2, 2), torch.randn(5, 3, 2, 2)
    penalty = gradient_penalty(critic, real, fake)
    assert penalty.item() == pytest.approx((3**0.5 - 1) ** 2, rel=1e-6)
    penalty.backward()  # differentiable w.r.t. the critic (create_graph)
    assert critic.w.grad.abs().sum() > 0


def test_r1_of_a_quadratic():
    real = torch.randn(4, 3, 2, 2)
    expected = (2.0**2 * real.square().flatten(1).sum(1)).mean()
    assert r1_penalty(QuadraticCritic(2.0), real).item() == pytest.approx(expected.item(), rel=1e-6)


def test_kl_of_a_standard_normal_is_zero_and_grows_away_from_it():
    zeros = torch.zeros(3, 4, 2, 2)
    assert kl_loss(zeros, zeros).item() == 0.0
    # mean 1, var 1: 0.5 per element, averaged over elements (the authors' scale, App. A.4)
    assert kl_loss(torch.ones(3, 4, 2, 2), zeros).item() == pytest.approx(0.5)
    # mean 0, logvar log 2: 0.5 (2 - 1 - log 2) per element
    logvar = torch.full((3, 4, 2, 2), torch.log(torch.tensor(2.0)).item())
    assert kl_loss(zeros, logvar).item() == pytest.approx(0.5 * (1 - 0.6931471805599453), rel=1e-5)
    # the average does not grow with the code size (a sum would be 16,384x larger at 64x64x4)
    assert kl_loss(torch.ones(1, 4, 64, 64), torch.zeros(1, 4, 64, 64)).item() == 0.5


def test_adversarial_terms():
    real, fake = torch.tensor([2.0, 4.0]), torch.tensor([-1.0, 1.0])
    assert wgan_discriminator_loss(real, fake).item() == -3.0
    assert wgan_generator_loss(fake).item() == 0.0
    softplus = torch.nn.functional.softplus
    expected = softplus(fake).mean() + softplus(-real).mean()
    assert nonsaturating_discriminator_loss(real, fake).item() == pytest.approx(expected.item())
    assert nonsaturating_generator_loss(fake).item() == pytest.approx(softplus(-fake).mean().item())


def test_generator_loss_weights_follow_appendix_a3():
    images = torch.zeros(2, 3, 4, 4)
    rec = torch.full((2, 3, 4, 4), 0.5)
    constant_perceptual = lambda x, y: torch.tensor(0.25)
    out = AutoencoderOutput(
        rec, torch.zeros(2, 1, 1, 1), torch.ones(2, 1, 1, 1), torch.zeros(2, 1, 1, 1)
    )
    total, terms = generator_loss(
        LossConfig(gan="wgan-gp"), images, out, constant_perceptual, torch.tensor([1.0, 3.0])
    )
    # 20 * 0.25 + 5 * 0.25 + (-2) + 1e-6 * 0.5
    assert (
        terms["l2"].item() == 0.25 and terms["gan_g"].item() == -2.0 and terms["kl"].item() == 0.5
    )
    assert total.item() == pytest.approx(20 * 0.25 + 5 * 0.25 - 2.0 + 1e-6 * 0.5)
    total, terms = generator_loss(LossConfig(), images, AutoencoderOutput(rec, None), None, None)
    assert set(terms) == {"l2"} and total.item() == pytest.approx(5.0)
    # The default GAN term is the authors' non-saturating one: softplus(-logits)
    logits = torch.tensor([1.0, 3.0])
    _, terms = generator_loss(LossConfig(), images, out, None, logits)
    assert terms["gan_g"].item() == pytest.approx(F.softplus(-logits).mean().item())
    # Another model's own term (a VQ codebook loss) is added with weight 1
    vq = AutoencoderOutput(rec, None, extra_loss=torch.tensor(0.5))
    total, terms = generator_loss(LossConfig(), images, vq, None, None)
    assert terms["extra"].item() == 0.5 and total.item() == pytest.approx(5.5)


def test_discriminator_loss_variants():
    critic = LinearCritic(torch.full((1, 3, 2, 2), 0.5))
    real, fake = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    # The text's WGAN-GP: the penalty in every D update, weight 4
    text = LossConfig(gan="wgan-gp")
    assert text.reg_interval == 1 and not text.lazy and text.regularised(7)
    total, terms = discriminator_loss(text, critic, real, fake)
    assert set(terms) == {"gan_d", "gp"}
    assert total.item() == pytest.approx((terms["gan_d"] + 4 * terms["gp"]).item())
    # The authors' default: lazy R1, an update of its own every 16 steps, weight gamma/2 * 16
    config = LossConfig()
    assert config.gan == "nonsaturating-r1" and config.reg_interval == 16 and config.lazy
    assert [s for s in range(40) if config.regularised(s)] == [0, 16, 32]
    total, terms = discriminator_loss(config, critic, real, fake)
    assert set(terms) == {"gan_d"} and total.item() == pytest.approx(terms["gan_d"].item())
    total, terms = discriminator_penalty(config, critic, real, fake)
    assert set(terms) == {"r1"}
    # R1 of a linear critic is |w|^2 = 3
    assert terms["r1"].item() == pytest.approx(3.0) and total.item() == pytest.approx(32 * 3.0)
    # Every-step R1 reuses D's pass over the real images: the same penalty, in D's update
    every = LossConfig(reg_interval=1)
    total, terms = discriminator_loss(every, critic, real, fake)
    assert set(terms) == {"gan_d", "r1"}
    assert total.item() == pytest.approx((terms["gan_d"] + 2 * 3.0).item(), rel=1e-5)
    # A lazy WGAN-GP: weight 4 * k in its own update
    lazy_gp = LossConfig(gan="wgan-gp", reg_interval=4)
    _, terms = discriminator_loss(lazy_gp, critic, real, fake)
    assert set(terms) == {"gan_d"}
    total, terms = discriminator_penalty(lazy_gp, critic, real, fake)
    assert total.item() == pytest.approx(16 * terms["gp"].item())


def test_bad_loss_config_names_the_value():
    with pytest.raises(ValueError, match="'l1'"):
        LossConfig(perceptual="l1")
    with pytest.raises(ValueError, match="'hinge'"):
        LossConfig(gan="hinge")


@pytest.mark.parametrize("size", [8, 32])
def test_discriminator_shapes_and_minibatch_stddev(size):
    disc = Discriminator(size, channels=16, max_channels=32)
    images = torch.randn(6, 3, size, size, requires_grad=True)
    logits = disc(images)
    assert logits.shape == (6,)
    logits.sum().backward()
    assert images.grad.abs().sum() > 0
    x = torch.randn(8, 5, 4, 4)
    y = minibatch_stddev(x)
    assert y.shape == (8, 6, 4, 4)
    torch.testing.assert_close(y[:, :5], x)
    # Group j of a batch of 8 (groups of 4): samples j and j + 2, j + 4, j + 6
    expected = x.reshape(4, 2, 5, 4, 4).var(dim=0, unbiased=False).add(1e-8).sqrt().mean((1, 2, 3))
    torch.testing.assert_close(y[:, 5, 0, 0], expected.repeat(4))
    with pytest.raises(ValueError, match="power of two"):
        Discriminator(48)


@pytest.mark.parametrize("batch", [1, 2, 3, 4, 6])
def test_discriminator_of_real_and_fake_in_one_pass_equals_two_passes(batch):
    torch.manual_seed(0)
    disc = Discriminator(16, channels=8, max_channels=16)
    real, fake = torch.randn(batch, 3, 16, 16), torch.randn(batch, 3, 16, 16)
    both = disc(torch.cat([real, fake]), parts=2)
    torch.testing.assert_close(both, torch.cat([disc(real), disc(fake)]), rtol=1e-5, atol=1e-5)
    # Without parts the minibatch statistics would mix real and fake images
    assert not torch.allclose(disc(torch.cat([real, fake])), both, atol=1e-5)
    with pytest.raises(ValueError, match="parts=2"):
        disc(torch.randn(3, 3, 16, 16), parts=2)


def stylegan2_penalty(config: LossConfig, disc: nn.Module, real, fake) -> torch.Tensor:
    """StyleGAN2-ADA's ``Dreg`` phase: the weighted penalty plus 0 x D's logits."""
    if config.gan == "wgan-gp":
        x = interpolates(real, fake)
        logits = disc(x)
        penalty = (
            config.gp_weight * config.reg_interval * gradient_penalty(disc, real, fake, x, logits)
        )
    else:
        x = real.clone().requires_grad_(True)
        logits = disc(x)
        penalty = config.r1_gamma / 2 * config.reg_interval * r1_penalty(disc, x, logits)
    return penalty + 0 * logits.sum()


@pytest.mark.parametrize("gan", ["nonsaturating-r1", "wgan-gp"])
@pytest.mark.parametrize("batch", [1, 4, 5])
def test_penalty_update_equals_stylegan2s_zero_logits_form_without_its_zero_backward(gan, batch):
    """StyleGAN2-ADA adds 0 x D's logits to the penalty so that DDP sees a gradient for every
    parameter; ours gives the zeros to the parameters directly. Same gradients, bitwise; and
    where the minibatch statistics are constant (groups of one: batches 1 and 5), the
    penalty's backward no longer runs D's backward on zeros."""
    config = LossConfig(perceptual="none", gan=gan, reg_interval=16)
    real, fake = torch.randn(batch, 3, 16, 16), torch.randn(batch, 3, 16, 16)
    grads, convolutions, reached = [], [], []
    for form in ("ours", "stylegan2"):
        torch.manual_seed(0)
        disc = Discriminator(16, 8, 16)
        activations = []  # D's first activation, whose gradient the hook records
        disc.from_rgb.register_forward_hook(lambda m, i, out, seen=activations: seen.append(out))
        torch.manual_seed(1)  # the same interpolates for WGAN-GP
        if form == "ours":
            total, _ = discriminator_penalty(config, disc, real, fake)
        else:
            total = stylegan2_penalty(config, disc, real, fake)
        calls = []
        activations[0].register_hook(calls.append)
        with OpCounter() as counter:
            total.backward()
        grads.append({n: p.grad for n, p in disc.named_parameters()})
        convolutions.append(counter.summary()["convolutions"])
        reached.append(bool(calls))
    ours, reference = grads
    for name, grad in reference.items():
        assert grad is not None and torch.equal(ours[name], grad), name
    assert convolutions[0] < convolutions[1], convolutions  # no zeros through the last layers
    # Groups of one (batches 1 and 5): D's backward does not run at all
    assert reached == [batch not in (1, 5), True]


def test_minibatch_stddev_of_groups_of_one_is_a_constant():
    x = torch.randn(5, 3, 4, 4, requires_grad=True)  # 5 does not split into groups of 4
    y = minibatch_stddev(x)
    expected = x.detach().reshape(1, 5, 3, 4, 4).var(dim=0, unbiased=False).add(1e-8).sqrt()
    torch.testing.assert_close(y[:, 3], expected.mean((1, 2, 3))[:, None, None].expand(5, 4, 4))
    nodes, seen = [y.grad_fn], set()  # the channel's graph: nothing computed from x
    while nodes:
        node = nodes.pop()
        seen.add(type(node).__name__)
        nodes += [next_node for next_node, _ in node.next_functions if next_node is not None]
    assert not {"VarBackward0", "SqrtBackward0", "MeanBackward1"} & seen, seen


@pytest.mark.parametrize("kind", ["lpips", "vgg"])
def test_perceptual_losses_with_random_backbones(kind):
    loss = (
        LPIPSLoss("vgg", pretrained=False) if kind == "lpips" else VGGFeatureLoss(pretrained=False)
    )
    loss.RESIZE = 64  # 224 is tested on its own; the properties here hold at any size
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    assert loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(x, y).item() > 0
    assert all(not p.requires_grad for p in loss.parameters())
    y.requires_grad_(True)
    loss(x, y).backward()  # gradients flow to the reconstruction
    assert y.grad.abs().sum() > 0


def test_vgg_loss_is_the_authors_four_layers_at_224():
    loss = VGGFeatureLoss(pretrained=False)
    with torch.no_grad():
        activations = loss._activations(torch.zeros(1, 3, 32, 32))
    shapes = [tuple(a.shape[1:]) for a in activations]
    assert shapes == [(64, 224, 224), (128, 112, 112), (256, 56, 56), (512, 28, 28)]


def test_missing_pretrained_weights_name_the_cache_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = backbone_weights_path("https://download.pytorch.org/models/vgg16-397923af.pth")
    assert path == tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    for kind in ("lpips", "vgg"):
        with pytest.raises(FileNotFoundError, match=str(path).replace("\\", "\\\\")):
            build_perceptual_loss(kind)
    assert build_perceptual_loss("none") is None


def test_discriminator_activations_under_bf16_stay_within_the_authors_conv_clamp():
    # The authors clamp every convolution's output at +-256 for their float16 layers; here
    # mixed precision is bf16 autocast (float32's range): at the paper size, no activation
    # of D comes near the clamp (docs/fidelity.md, "Convolution clamp"). 256^2 images
    # (equalized learning rate: the activations' scale does not grow with the width).
    torch.manual_seed(0)
    disc = Discriminator(256, 16, 64)
    peaks = []
    hooks = [
        m.register_forward_hook(lambda m, i, out: peaks.append(out.detach().abs().max().float()))
        for m in disc.modules()
        if m is not disc
    ]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = disc(torch.rand(2, 3, 256, 256) * 2 - 1)
    for hook in hooks:
        hook.remove()
    peaks = torch.stack(peaks)
    assert torch.isfinite(logits.float()).all() and len(peaks) > 10
    assert peaks.max() < 256 / 4, peaks.max()
