"""Training losses of the BRICS autoencoder (App. A.3).

Generator: ``20 L2 + 5 perceptual + GAN`` (+ ``1e-6 KL`` for KL-regularised key codes, the KL
averaged per code element as the authors' ``training/loss.py``).
Discriminator: the authors' released choice (the paper presets' default), the non-saturating
logistic loss with lazy R1 (gamma 4, every 16 steps), or the paper text's WGAN loss with
gradient penalty (weight 4, every step; a lazy variant is allowed). Lazy regularisation
(StyleGAN2 Sec. 3.1): the penalty runs on every k-th D step only, weighted by k, so that its
average weight is unchanged.
Perceptual: LPIPS (the paper) or an L1 distance of VGG16 features (the authors' code,
``training/vgg_perceptual_loss.py``).
"""

from __future__ import annotations

import logging
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import ALEXNET_URL, VGG16_URL, imagenet_normalize, require_backbone_weights
from .convolution import no_weight_gradients

PERCEPTUAL = ("lpips", "vgg", "none")


@dataclass(frozen=True)
class LossConfig:
    """Loss choices and weights (App. A.3's weights; the GAN loss of the authors' code)."""

    l2_weight: float = 20.0
    perceptual: str = "lpips"
    perceptual_weight: float = 5.0
    gan: str = "nonsaturating-r1"
    gan_weight: float = 1.0
    gp_weight: float = 4.0  # WGAN-GP penalty weight
    r1_gamma: float = 4.0  # R1 weight gamma (penalty gamma / 2 * |grad|^2)
    reg_interval: int | None = None  # penalty every this many D steps (None: DEFAULT_REG_INTERVAL)
    kl_weight: float = 1e-6

    def __post_init__(self) -> None:
        if self.perceptual not in PERCEPTUAL:
            raise ValueError(f"perceptual must be one of {PERCEPTUAL}, got {self.perceptual!r}")
        if self.gan not in GAN_LOSSES:
            raise ValueError(f"gan must be one of {tuple(GAN_LOSSES)}, got {self.gan!r}")
        if self.reg_interval is None:
            object.__setattr__(self, "reg_interval", GAN_LOSSES[self.gan].default_interval)
        if self.reg_interval < 1:
            raise ValueError(f"reg_interval must be >= 1, got {self.reg_interval}")

    @property
    def lazy(self) -> bool:
        """Lazy regularisation: the penalty is an update of its own every ``reg_interval``
        steps (False: part of every D update)."""
        return self.reg_interval > 1

    def regularised(self, step: int) -> bool:
        """Whether step ``step`` runs the penalty."""
        return step % self.reg_interval == 0

    @property
    def gan_loss(self) -> GanLoss:
        """The adversarial loss ``gan`` names, with its penalty weight."""
        return GAN_LOSSES[self.gan](self)


class LPIPSLoss(nn.Module):
    """Mean LPIPS distance (Zhang et al. 2018) of images in [-1, 1]; frozen."""

    def __init__(self, net: str = "vgg", pretrained: bool = True) -> None:
        super().__init__()
        import lpips

        if pretrained:
            require_backbone_weights(VGG16_URL if net == "vgg" else ALEXNET_URL, f"LPIPS ({net})")
        # pnet_rand: random backbone (tests); the linear heads ship with the lpips package.
        with warnings.catch_warnings():  # lpips still passes torchvision's old `pretrained=`
            warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
            self.model = lpips.LPIPS(net=net, pnet_rand=not pretrained, verbose=False).eval()
        # per_image follows the package's default path: linear heads, spatial mean, v0.1
        assert self.model.lpips and not self.model.spatial and self.model.version == "0.1"
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.per_image(x, y).mean()

    def per_image(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B,) distances: ``lpips.LPIPS``'s computation with its modules and weights, in
        fewer ops (each feature's channel norm in one reduction; the package squares, sums
        and takes the root apart)."""
        m = self.model
        total = None
        for lin, a, b in zip(m.lins, m.net(m.scaling_layer(x)), m.net(m.scaling_layer(y))):
            term = lin((_unit(a) - _unit(b)).square()).mean(dim=(2, 3))
            total = term if total is None else total + term
        return total.flatten()


def _unit(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Features divided by their norm over channels plus ``eps`` (LPIPS's normalisation)."""
    return features / (torch.linalg.vector_norm(features, dim=1, keepdim=True) + eps)


class VGGFeatureLoss(nn.Module):
    """The authors' perceptual loss: images in [-1, 1] -> [0, 1], ImageNet-normalised, resized
    bilinearly to 224 x 224, then the sum over relu1_2, relu2_2, relu3_3, relu4_3 of VGG16 of the
    mean L1 distance of the features; frozen."""

    LAYERS = (3, 8, 15, 22)  # indices of those ReLUs in torchvision's vgg16().features
    RESIZE = 224

    def __init__(self, pretrained: bool = True) -> None:
        super().__init__()
        from torchvision.models import vgg16

        features = vgg16().features[: self.LAYERS[-1] + 1]
        if pretrained:
            path = require_backbone_weights(VGG16_URL, "the VGG16 perceptual loss")
            state = torch.load(path, map_location="cpu", weights_only=True)
            features.load_state_dict(
                {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")},
                strict=False,
            )
        self.features = features.eval()
        self.requires_grad_(False)

    def _activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = imagenet_normalize((x + 1) / 2)
        size = (self.RESIZE, self.RESIZE)
        h = F.interpolate(h, size=size, mode="bilinear", align_corners=False)
        out = []
        for index, layer in enumerate(self.features):
            h = layer(h)
            if index in self.LAYERS:
                out.append(h)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return sum(F.l1_loss(a, b) for a, b in zip(self._activations(x), self._activations(y)))


def build_perceptual_loss(kind: str, pretrained: bool = True) -> nn.Module | None:
    """The perceptual loss module named ``kind`` (``lpips``, ``vgg``), or None for ``none``."""
    if kind == "lpips":
        return LPIPSLoss("vgg", pretrained)
    if kind == "vgg":
        return VGGFeatureLoss(pretrained)
    if kind == "none":
        return None
    raise ValueError(f"perceptual loss must be one of {PERCEPTUAL}, got {kind!r}")


# --- adversarial terms ---------------------------------------------------------------------
def wgan_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return fake_logits.mean() - real_logits.mean()


def wgan_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


def gradient_penalty(
    critic: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    mixed: torch.Tensor | None = None,
    mixed_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017): E[(|grad D(x_hat)|_2 - 1)^2] on random interpolates
    x_hat of real and fake images (``mixed`` and its logits when already computed)."""
    if mixed is None:
        mixed = interpolates(real, fake)
        mixed_logits = critic(mixed)
    with no_weight_gradients():  # the input gradient alone
        (grad,) = torch.autograd.grad(mixed_logits.sum(), mixed, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).square().mean()


def interpolates(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """alpha real + (1 - alpha) fake, alpha ~ U(0, 1) per image, requiring grad."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    return (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)


def nonsaturating_discriminator_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor
) -> torch.Tensor:
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()


def nonsaturating_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return F.softplus(-fake_logits).mean()


def r1_penalty(
    discriminator: nn.Module, real: torch.Tensor, real_logits: torch.Tensor | None = None
) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): E[|grad D(x)|^2] on real images. ``real_logits``: D's
    logits of ``real`` when already computed with ``real`` requiring grad (one D pass)."""
    if real_logits is None:
        real = real.detach().requires_grad_(True)
        real_logits = discriminator(real)
    with no_weight_gradients():  # the input gradient alone
        (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
    return grad.square().flatten(1).sum(dim=1).mean()


def kl_loss(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) averaged over code elements and the batch (the
    authors' ``training/loss.py``; App. A.4's weight 1e-6 applies to this mean)."""
    kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar)
    return kl.mean()


# --- the adversarial losses, one class each --------------------------------------------------
class GanLoss(ABC):
    """One adversarial loss: the generator's term, D's term and D's gradient penalty, run in
    D's update (``reg_interval`` 1) or as lazy regularisation's own update. A new loss is a
    subclass here and an entry of :data:`GAN_LOSSES`."""

    penalty_name: ClassVar[str]  # the penalty's name among the logged terms
    default_interval: ClassVar[int]  # the penalty's interval when the config gives none
    penalty_on_real: ClassVar[bool] = False  # the penalty differentiates D's pass over reals

    def __init__(self, config: LossConfig) -> None:
        self.config = config

    @abstractmethod
    def generator(self, fake_logits: torch.Tensor) -> torch.Tensor:
        """The generator's loss on D's logits of its images."""

    @abstractmethod
    def discriminator(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        """D's loss on its logits of real and generated images."""

    @abstractmethod
    def penalty(
        self,
        discriminator: nn.Module,
        real: torch.Tensor,
        fake: torch.Tensor,
        real_logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The unweighted penalty; ``real_logits``: D's pass over ``real`` (requiring grad)
        to differentiate, when ``penalty_on_real`` and D has already run on it."""

    @abstractmethod
    def weighted(self, penalty: torch.Tensor, interval: int) -> torch.Tensor:
        """The penalty's weighted term in an update run every ``interval`` D steps."""


class NonSaturatingR1(GanLoss):
    """The authors' code (StyleGAN2): non-saturating logistic loss, R1 penalty with weight
    gamma / 2 on real images, lazily every 16 D steps (``D_reg_interval``)."""

    penalty_name, default_interval, penalty_on_real = "r1", 16, True

    def generator(self, fake_logits):
        return nonsaturating_generator_loss(fake_logits)

    def discriminator(self, real_logits, fake_logits):
        return nonsaturating_discriminator_loss(real_logits, fake_logits)

    def penalty(self, discriminator, real, fake, real_logits=None):
        return r1_penalty(discriminator, real, real_logits)

    def weighted(self, penalty, interval):
        return self.config.r1_gamma / 2 * interval * penalty


class WassersteinGP(GanLoss):
    """The paper's text (App. A.3): the WGAN loss with the gradient penalty on random
    interpolates of real and generated images, weight 4, every D step."""

    penalty_name, default_interval = "gp", 1

    def generator(self, fake_logits):
        return wgan_generator_loss(fake_logits)

    def discriminator(self, real_logits, fake_logits):
        return wgan_discriminator_loss(real_logits, fake_logits)

    def penalty(self, discriminator, real, fake, real_logits=None):
        return gradient_penalty(discriminator, real, fake)

    def weighted(self, penalty, interval):
        return self.config.gp_weight * interval * penalty


# The ``--gan`` choices, by name (saved in run options and checkpoints).
GAN_LOSSES: dict[str, type[GanLoss]] = {
    "wgan-gp": WassersteinGP,
    "nonsaturating-r1": NonSaturatingR1,
}


# --- combined objectives -------------------------------------------------------------------
def generator_loss(
    config: LossConfig,
    images: torch.Tensor,
    output,
    perceptual: nn.Module | None,
    fake_logits: torch.Tensor | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total autoencoder loss and its terms. ``output`` is an ``AutoencoderOutput``.

    ``fake_logits`` (discriminator on the reconstruction) is None before the GAN starts.
    """
    rec = output.reconstruction
    terms = {"l2": F.mse_loss(rec, images)}
    total = config.l2_weight * terms["l2"]
    if perceptual is not None:
        terms["perceptual"] = perceptual(rec, images)
        total = total + config.perceptual_weight * terms["perceptual"]
    if fake_logits is not None:
        terms["gan_g"] = config.gan_loss.generator(fake_logits)
        total = total + config.gan_weight * terms["gan_g"]
    if output.mean is not None:
        terms["kl"] = kl_loss(output.mean, output.logvar)
        total = total + config.kl_weight * terms["kl"]
    if output.extra_loss is not None:
        terms["extra"] = output.extra_loss
        total = total + output.extra_loss
    return total, terms


def discriminator_loss(
    config: LossConfig,
    discriminator: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    penalty: bool | None = None,
    fake_logits: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """D's loss on ``real`` and ``fake`` images and its terms.

    ``penalty`` (default: when the penalty runs on every step, ``reg_interval == 1``) adds
    the penalty in the same update, R1 reusing D's pass over the real images for its
    gradient (StyleGAN2-ADA's ``Dboth`` phase). Under lazy regularisation the penalty is an
    update of its own instead (:func:`discriminator_penalty`). ``fake_logits``: D's logits
    of ``fake`` with their graph to D's weights when D has already run on them (the
    generator's pass, :func:`through_detached`); then D runs on ``real`` alone.
    """
    penalty = config.reg_interval == 1 if penalty is None else penalty
    gan = config.gan_loss
    real = real.detach()
    on_real = penalty and gan.penalty_on_real
    if on_real:  # the penalty differentiates this pass over the real images
        real = real.requires_grad_(True)
    if fake_logits is not None:
        real_logits = discriminator(real)
    else:  # one D pass over both batches (minibatch statistics within each)
        both = discriminator(torch.cat([real, fake.detach()]), parts=2)
        real_logits, fake_logits = both.chunk(2)
    terms = {"gan_d": gan.discriminator(real_logits, fake_logits)}
    if not penalty:
        return terms["gan_d"], terms
    terms[gan.penalty_name] = gan.penalty(
        discriminator, real, fake, real_logits if on_real else None
    )
    return terms["gan_d"] + gan.weighted(terms[gan.penalty_name], 1), terms


def through_detached(logits: torch.Tensor, leaf: torch.Tensor, source: torch.Tensor):
    """D's ``logits`` of ``leaf`` (``source`` detached, requiring grad), differentiable with
    respect to ``source`` instead, for the generator's loss: their backward sends its
    gradient through D's input gradient alone (no D weight gradient) to ``source``, and
    keeps D's pass for D's own update, which differentiates the same ``logits`` with
    respect to D's weights (``discriminator_loss(..., fake_logits=logits)``). So one D pass
    over the reconstruction serves both updates: D's parameters are the same in both
    (the generator's update does not change them) and so is its input.

    ``logits``, ``leaf``: (B,) and (B, 3, H, W); ``source``: (B, 3, H, W), the generator's
    output. Returns a copy of ``logits``."""
    return _ThroughDetached.apply(source, (logits, leaf))


class _ThroughDetached(torch.autograd.Function):
    @staticmethod
    def forward(ctx, source: torch.Tensor, held: tuple[torch.Tensor, torch.Tensor]):
        ctx.logits, ctx.leaf = held  # not inputs: autograd links nothing to D's graph
        return ctx.logits.detach().clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        with no_weight_gradients():
            (through,) = torch.autograd.grad(ctx.logits, ctx.leaf, grad, retain_graph=True)
        return through, None


def discriminator_penalty(
    config: LossConfig, discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Lazy regularisation's own D update (StyleGAN2-ADA's ``Dreg`` phase, run when
    ``config.regularised(step)``): the penalty weighted by ``reg_interval``, so that its
    average weight over the steps is the every-step one.

    The total also holds a zero term that gives every D parameter a zero gradient (the
    penalty does not depend on D's biases after the activations): DDP expects a gradient,
    zero or not, for each parameter. StyleGAN2-ADA adds 0 x D's logits for it, which runs
    D's whole backward on zeros; :func:`zero_gradients` goes to the parameters directly.
    """
    gan = config.gan_loss
    terms = {gan.penalty_name: gan.penalty(discriminator, real, fake)}
    total = gan.weighted(terms[gan.penalty_name], config.reg_interval)
    return total + zero_gradients(discriminator.parameters()), terms


def zero_gradients(parameters) -> torch.Tensor:
    """A zero scalar whose backward gives each of ``parameters`` (those requiring grad) a
    zero gradient and runs nothing else: what ``0 * output.sum()`` adds to a loss, without
    the backward through the network that computed ``output``."""
    return _ZeroGradients.apply(*(p for p in parameters if p.requires_grad))


class _ZeroGradients(torch.autograd.Function):
    @staticmethod
    def forward(ctx, *parameters: torch.Tensor) -> torch.Tensor:
        ctx.shapes = [p.shape for p in parameters]
        return parameters[0].new_zeros(())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        zero = grad.new_zeros(())
        return tuple(zero.expand(shape) for shape in ctx.shapes)


def resolve_perceptual_loss(kind: str) -> tuple[str, nn.Module | None]:
    """``(kind, module)`` of ``build_perceptual_loss``; ``auto`` is LPIPS when its weights are
    cached, else none with a warning (a term is dropped only when told to)."""
    if kind != "auto":
        return kind, build_perceptual_loss(kind)
    try:
        return "lpips", build_perceptual_loss("lpips")
    except FileNotFoundError as error:
        logging.getLogger(__name__).warning("training without a perceptual loss: %s", error)
        return "none", None
