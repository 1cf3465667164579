"""StyleGAN2-style synthesis decoder of BRICS (Sec. 3.3): feature block f -> image.

Instead of StyleGAN2's learned 4x4 constant, synthesis starts from the feature block
f (B, Cd, Hd, Wd); the style code w = MLPs(normalize(avg_pool(f))) modulates every
convolution. Each resolution block has modulated/demodulated 3x3 convolutions with
noise injection and a toRGB output added to the upsampled image of the block before
(skip architecture, StyleGAN2 Fig. 7).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import precision
from .layers import LRELU_GAIN, EqualLinear, equalized
from .resample import blur, upsample_2x

# StyleGAN2's demodulation epsilon (ModulatedConv2d: added on the raw or the scaled weight)
DEMODULATION_EPS = 1e-8


class StyleMapping(nn.Module):
    """Style code w = MLPs(normalize(avg_pool(f))): (B, Cd, Hd, Wd) -> (B, Cd)."""

    def __init__(self, channels: int, n_layers: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *(
                EqualLinear(channels, channels, lr_mul=0.01, activation=True)
                for _ in range(n_layers)
            )
        )

    def forward(self, feature_block: torch.Tensor, params=None) -> torch.Tensor:
        """``params``: the layers' scaled parameters from :func:`equalized` (default: scaled
        here, all in one pass)."""
        pooled = feature_block.mean(dim=(2, 3))
        x = pooled * torch.rsqrt(pooled.square().mean(dim=1, keepdim=True) + 1e-8)
        for layer, scaled in zip(self.layers, params or equalized(self.layers)):
            x = layer(x, *scaled)
        return x


class ModulatedConv2d(nn.Module):
    """Style-modulated (and demodulated) convolution, optionally upsampling 2x (StyleGAN2 Sec. 2.2).

    Each sample's weight is ``w' = w * s`` (styles s over input channels), demodulated by
    ``d = rsqrt(sum w'^2 + eps)`` over input channels and taps, w the equalized-lr scaled
    weight. ``eps_on``: "raw" adds 1e-8 to the sum of the raw weight's squares, as the
    authors' PyTorch StyleGAN2 (eps = 1e-8 scale^2 here); "scaled" to the scaled weight's,
    as TensorFlow StyleGAN2 (eps = 1e-8). Two equal forms (as
    StyleGAN2-ADA's ``modulated_conv2d``):

    - unfused, in training: ``conv(x * s, w) * d`` -- ONE dense convolution with the shared
      weight for the whole batch, and d from ``s^2 @ sum_taps w^2``;
    - fused, for one sample in evaluation: the modulated weight built and convolved directly
      (one dense convolution too, since a batch of one needs no groups).

    Upsampling is a stride-2 transposed convolution followed by the FIR filter (gain 4).
    The styles s = ``affine(w)`` are computed by the decoder for all layers at once
    (:meth:`SynthesisDecoder.styles`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        style_dim: int,
        demodulate: bool = True,
        upsample: bool = False,
        eps_on: str = "raw",
    ) -> None:
        super().__init__()
        shape = (1, out_channels, in_channels, kernel_size, kernel_size)
        self.weight = nn.Parameter(torch.randn(shape))
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.eps = DEMODULATION_EPS * (self.scale**2 if eps_on == "raw" else 1.0)
        self.affine = EqualLinear(style_dim, in_channels, bias_init=1.0)
        self.demodulate = demodulate
        self.upsample = upsample
        self.padding = kernel_size // 2

    def equalized_parameters(self) -> list[tuple[torch.Tensor, float]]:
        return [(self.weight, self.scale)]

    def fuses(self, batch: int) -> bool:
        """Whether a batch of ``batch`` runs the fused form (one sample, in evaluation),
        which demodulates inside the weight."""
        return not self.training and batch == 1

    def forward(self, x: torch.Tensor, s: torch.Tensor, weight=None) -> torch.Tensor:
        """x (B, C_in, H, W), styles s (B, C_in) -> (B, C_out, H', W'), H' = 2H if upsampling."""
        y, d = self.modulated(x, s, weight)
        return y if d is None else y * d.view(*d.shape, 1, 1)

    def modulated(self, x: torch.Tensor, s: torch.Tensor, weight=None, d=None):
        """``(y, d)``: the convolution y of x with the modulated weight and the demodulation
        d (B, C_out) still to multiply it by (None: none, or already in the weight), so that
        the caller can fold d into its next elementwise pass. ``weight``, ``d``: the scaled
        weight (1, C_out, C_in, k, k) and the demodulation when the decoder made them for all
        its layers at once (:func:`equalized`, :class:`Demodulation`; default: made here)."""
        if weight is None:
            ((weight,),) = equalized([self])
        if self.fuses(x.shape[0]):
            return self._fused(x, weight[0], s), None
        y = self._conv(x * s.view(*s.shape, 1, 1), weight[0])
        if d is None and self.demodulate:
            (d,) = demodulations([s], [weight], eps=[self.eps])
        return y, d

    def _conv(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if not self.upsample:
            return F.conv2d(x, weight, padding=self.padding)
        return blur(F.conv_transpose2d(x, weight.transpose(0, 1), stride=2), padding=1, gain=4.0)

    def _fused(self, x: torch.Tensor, weight: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        weight = weight * s[0][None, :, None, None]
        if self.demodulate:
            sums = weight.square().sum(dim=(1, 2, 3), keepdim=True)
            weight = weight * torch.rsqrt(sums + self.eps)
        return self._conv(x, weight)


def demodulations(styles, weights, gain: float = 1.0, eps=None) -> list[torch.Tensor]:
    """``gain * rsqrt(s^2 @ (sum_taps w^2)^T + eps)`` (B, C_out) for every layer's styles s
    (B, C_in), scaled weight w (1, C_out, C_in, k, k) and ``eps`` (default 1e-8 each):
    StyleGAN2's demodulation coefficients, sum over input channels and taps of
    (w[o, i] s[b, i])^2, for the layers of a decoder at once (:class:`Demodulation`)."""
    eps = [DEMODULATION_EPS] * len(styles) if eps is None else list(eps)
    return list(Demodulation.apply(gain, eps, *styles, *weights))


class Demodulation(torch.autograd.Function):
    """:func:`demodulations` in foreach kernels across the layers, whose shapes differ, and
    two small matrix products per layer each way (the per-layer autograd graph is ~20 ops a
    layer). With e = gain * u^(-1/2), u = s^2 @ W2^T + eps, W2 = sum_taps w^2, and
    q = -(de) e^3 / gain^2: ds = s * (q @ W2), dw = w * (q^T @ s^2) per tap."""

    @staticmethod
    def forward(ctx, gain: float, eps: list[float], *tensors: torch.Tensor):
        n = len(eps)
        styles, weights = list(tensors[:n]), list(tensors[n:])
        squares = torch._foreach_mul(styles, styles)
        sums = [w2.sum(dim=(0, 3, 4)) for w2 in torch._foreach_mul(weights, weights)]
        cast, no_autocast = precision.in_compute_dtype(*squares, *sums)  # the products
        squares, sums = list(cast[:n]), list(cast[n:])
        with no_autocast:
            u = torch._foreach_add([a @ b.T for a, b in zip(squares, sums)], eps)
        e = torch._foreach_mul(torch._foreach_reciprocal(torch._foreach_sqrt(u)), gain)
        ctx.save_for_backward(*styles, *weights, *squares, *sums, *e)
        ctx.gain, ctx.n = gain, n
        ctx.set_materialize_grads(False)  # layers whose output is unused get None
        return tuple(e)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        n, saved = ctx.n, ctx.saved_tensors
        styles, weights, squares, sums, e = (list(saved[i * n : (i + 1) * n]) for i in range(5))
        live = [i for i, g in enumerate(grads) if g is not None]
        if not live:
            return None, None, *([None] * 2 * n)
        pick = lambda xs: [xs[i] for i in live]
        q = torch._foreach_mul(pick(grads), torch._foreach_pow(pick(e), 3))
        q = torch._foreach_mul(q, -1.0 / ctx.gain**2)
        ds = torch._foreach_mul(pick(styles), [a @ b for a, b in zip(q, pick(sums))])
        per_tap = [  # (1, C_out, C_in, 1, 1), in the weight's dtype
            (a.T @ b).view(1, a.shape[1], b.shape[1], 1, 1).to(w.dtype)
            for a, b, w in zip(q, pick(squares), pick(weights))
        ]
        dw = torch._foreach_mul(pick(weights), per_tap)
        out = [None] * 2 * n
        for j, i in enumerate(live):
            out[i], out[n + i] = ds[j], dw[j]
        return None, None, *out


class NoiseInjection(nn.Module):
    """Per-pixel Gaussian noise with a learned per-layer strength.

    Random in training; in evaluation a fixed noise map (a buffer), so decoding is
    deterministic.
    """

    def __init__(self, resolution: int) -> None:
        super().__init__()
        self.strength = nn.Parameter(torch.zeros(()))
        self.register_buffer("fixed", torch.randn(1, 1, resolution, resolution))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.strength * self.sample(x)

    def sample(self, x: torch.Tensor) -> torch.Tensor:
        """The noise map for x (B, C, H, W), before its strength: (B or 1, 1, H, W)."""
        if self.training:
            return torch.randn(x.shape[0], 1, *x.shape[2:], device=x.device, dtype=x.dtype)
        return self.fixed.to(x.dtype)


class StyledConv(nn.Module):
    """Modulated 3x3 convolution + noise + bias + leaky ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        style_dim: int,
        resolution: int,
        upsample: bool = False,
        eps_on: str = "raw",
    ) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(
            in_channels, out_channels, 3, style_dim, upsample=upsample, eps_on=eps_on
        )
        self.noise = NoiseInjection(resolution)
        self.bias = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def equalized_parameters(self) -> list[tuple[torch.Tensor, float]]:
        """The modulated weight, and the bias and noise strength times lrelu's gain g: leaky
        ReLU is positively homogeneous, so g folds in, lrelu(z) g = leaky_relu(z g)."""
        g = LRELU_GAIN
        return [*self.conv.equalized_parameters(), (self.bias, g), (self.noise.strength, g)]

    def forward(self, x: torch.Tensor, s: torch.Tensor, params=None, d=None) -> torch.Tensor:
        """lrelu(conv * d + noise + bias) in three passes over the feature map. ``params``,
        ``d``: this layer's scaled parameters (:meth:`equalized_parameters`) and its
        demodulation times g when the decoder made them for all its layers at once (default:
        made here)."""
        weight, bias, strength = params or equalized([self])[0]
        if d is None and not self.conv.fuses(x.shape[0]):
            (d,) = demodulations([s], [weight], LRELU_GAIN, [self.conv.eps])
        y, d = self.conv.modulated(x, s, weight, d)
        scale = y.new_full(y.shape[:2], LRELU_GAIN) if d is None else d
        z = torch.addcmul(bias, y, scale.view(*scale.shape, 1, 1))
        return F.leaky_relu(z + strength * self.noise.sample(y), 0.2)


class ToRGB(nn.Module):
    """Modulated 1x1 convolution to RGB (no demodulation), added to the upsampled skip image."""

    def __init__(self, in_channels: int, style_dim: int) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def equalized_parameters(self) -> list[tuple[torch.Tensor, float]]:
        return self.conv.equalized_parameters()

    def forward(
        self, x: torch.Tensor, s: torch.Tensor, skip: torch.Tensor | None, params=None
    ) -> torch.Tensor:
        """``params``: see :meth:`StyledConv.forward`."""
        rgb = self.conv(x, s, params[0] if params else None) + self.bias
        return rgb if skip is None else rgb + upsample_2x(skip)


def synthesis_channels(
    decoder_channels: int, tile_size: int, resolution: int, rule: str = "absolute"
) -> int:
    """Channels at ``resolution``. "absolute" (StyleGAN2's rule, the authors'):
    min(32768 / resolution, Cd); "relative": Cd at Hd, halved per doubling (at least 32)."""
    if rule == "absolute":
        return min(32768 // resolution, decoder_channels)
    return max(32, decoder_channels * tile_size // resolution)


class SynthesisDecoder(nn.Module):
    """Feature block (B, Cd, Hd, Wd) -> image (B, 3, H, W), unbounded (trained towards [-1, 1]).

    ``extra_conv``: a third modulated 3x3 conv in every upsampled block (the authors'
    ``--additional_decoder_conv``); ``channel_rule``: see :func:`synthesis_channels`.
    """

    def __init__(
        self,
        decoder_channels: int,
        tile_size: int,
        image_size: int,
        mapping_layers: int,
        channel_rule: str = "absolute",
        extra_conv: bool = True,
        demodulation_eps: str = "raw",
    ) -> None:
        super().__init__()
        style_dim, eps_on = decoder_channels, demodulation_eps
        self.mapping = StyleMapping(decoder_channels, mapping_layers)
        channels = synthesis_channels(decoder_channels, tile_size, tile_size, channel_rule)
        # First block at Hd: two convolutions on the feature block, then toRGB.
        self.input_convs = nn.ModuleList(
            [
                StyledConv(decoder_channels, channels, style_dim, tile_size, eps_on=eps_on),
                StyledConv(channels, channels, style_dim, tile_size, eps_on=eps_on),
            ]
        )
        self.input_rgb = ToRGB(channels, style_dim)
        self.blocks = nn.ModuleList()
        self.to_rgb = nn.ModuleList()
        resolution = tile_size
        while resolution < image_size:
            resolution *= 2
            out_channels = synthesis_channels(decoder_channels, tile_size, resolution, channel_rule)
            convs = [
                StyledConv(channels, out_channels, style_dim, resolution, True, eps_on),
                StyledConv(out_channels, out_channels, style_dim, resolution, eps_on=eps_on),
            ]
            if extra_conv:
                convs.append(
                    StyledConv(out_channels, out_channels, style_dim, resolution, eps_on=eps_on)
                )
            self.blocks.append(nn.ModuleList(convs))
            self.to_rgb.append(ToRGB(out_channels, style_dim))
            channels = out_channels

    def styled_layers(self) -> list[StyledConv | ToRGB]:
        """Every StyledConv and ToRGB, in the order :meth:`forward` runs them."""
        layers = [*self.input_convs, self.input_rgb]
        for convs, to_rgb in zip(self.blocks, self.to_rgb):
            layers += [*convs, to_rgb]
        return layers

    def modulated_convs(self) -> list[ModulatedConv2d]:
        """Every modulated convolution, in the order :meth:`forward` runs them."""
        return [layer.conv for layer in self.styled_layers()]

    def styles(self, style: torch.Tensor) -> list[torch.Tensor]:
        """The styles ``affine(w)`` of every modulated convolution, (B, C_in) each, from the
        style code w (B, style_dim): one matrix product over all the layers' affine maps
        (they all read the same w, with the same equalized-lr scale)."""
        affines = [conv.affine for conv in self.modulated_convs()]
        weight = torch.cat([a.weight for a in affines]) * affines[0].scale
        bias = torch.cat([a.bias for a in affines])  # lr_mul 1: no bias scale
        return list(F.linear(style, weight, bias).split([a.bias.numel() for a in affines], 1))

    def forward(self, feature_block: torch.Tensor) -> torch.Tensor:
        # The equalized-lr scales of the mapping and of every layer in one pass, and every
        # StyledConv's demodulation in one more (none for the fused form: one sample, eval)
        mapping, layers = list(self.mapping.layers), self.styled_layers()
        params = equalized([*mapping, *layers])
        styles = self.styles(self.mapping(feature_block, params[: len(mapping)]))
        params = params[len(mapping) :]
        convs = [i for i, layer in enumerate(layers) if isinstance(layer, StyledConv)]
        demodulation = dict.fromkeys(convs)
        if not layers[0].conv.fuses(feature_block.shape[0]):
            weights = [params[i][0] for i in convs]
            eps = [layers[i].conv.eps for i in convs]
            ds = demodulations([styles[i] for i in convs], weights, LRELU_GAIN, eps)
            demodulation = dict(zip(convs, ds))
        x, image = feature_block, None
        for i, (layer, s) in enumerate(zip(layers, styles)):
            if isinstance(layer, ToRGB):
                image = layer(x, s, image, params[i])
            else:
                x = layer(x, s, params[i], demodulation[i])
        return image
