"""tiny-cuda-nn's parameter-free input encodings, with its numbers (docs/tcnn.md §2).

Each maps ``x`` (N, n_dims) of any float dtype to float32 features (N, n_output_dims) in
PyTorch operations, so gradients w.r.t. ``x`` (and their gradients) come from autograd.
Every float32 operation tcnn rounds is rounded here in the same order; tcnn's GPU code
then evaluates sine and cosine with fast approximations (``__sinf``), so its outputs can
differ from these by about 1e-6. Line references are to tiny-cuda-nn's
``include/tiny-cuda-nn/encodings/<name>.h`` and ``common_device.h``.

Padding (tcnn appends columns, or for SphericalHarmonics prepends them, when a network
or a Composite asks) is not done here: ``gridcodes.tcnn`` applies it.
"""

from __future__ import annotations

import math
from functools import cache

import torch
from torch import nn

from .reference import fused_position  # x * scale + shift rounded once, as an FMA

# tcnn's PI() (common.h) and PI() / 2: pi rounded to float32, as float64 values.
PI = float(torch.tensor(math.pi, dtype=torch.float32))
HALF_PI = PI / 2
MAX_SH_DEGREE = 8


class Frequency(nn.Module):
    """NeRF's positional encoding: per input dimension i, for f = 0 .. n_frequencies - 1,
    ``sin(2**f pi x_i)`` then ``cos(2**f pi x_i)`` (frequency.h ``frequency_encoding``:
    output j reads dimension ``j // (2 F)`` at frequency ``(j // 2) % F``; the cosine is
    ``sin(fma(x 2**f, pi, pi / 2))`` in float32, as tcnn's compiled code computes it)."""

    def __init__(self, n_dims: int, n_frequencies: int = 12) -> None:
        super().__init__()
        self.n_dims, self.n_frequencies = n_dims, n_frequencies
        self.n_output_dims = n_dims * n_frequencies * 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scales = 2.0 ** torch.arange(self.n_frequencies, device=x.device, dtype=torch.float32)
        scaled = x.float()[:, :, None, None] * scales[:, None]  # scalbnf: exact
        shift = torch.tensor([0.0, HALF_PI], device=x.device, dtype=torch.float64)
        phase = fused_position(scaled, PI, shift)  # (N, D, F, 2): sin, then cos
        return torch.sin(phase).reshape(x.shape[0], self.n_output_dims)

    def extra_repr(self) -> str:
        return f"n_dims={self.n_dims}, n_frequencies={self.n_frequencies}"


def quartic_cdf(t: torch.Tensor, n_bins: int) -> torch.Tensor:
    """tcnn's ``quartic_cdf(t, inv_radius=n_bins)`` (common_device.h): the CDF of the
    quartic kernel 15/16 (1 - u^2)^2 of radius 1 / n_bins, clamped to [0, 1]."""
    u = t * n_bins
    u2 = u * u
    u4 = u2 * u2
    poly = (15.0 / 16.0) * u * (1 - (2.0 / 3.0) * u2 + (1.0 / 5.0) * u4) + 0.5
    return poly.clamp(0.0, 1.0)


class OneBlob(nn.Module):
    """One-blob encoding (Müller et al. 2019): per dimension, ``n_bins`` (a power of two)
    bins of [0, 1], each the mass of a quartic kernel of radius 1 / n_bins centred at x
    that falls in the bin, wrapping around at 0 and 1 (oneblob.h
    ``one_blob_subwarp_aligned``: bin k is ``L(k + 1) - L(k)``, ``L(k)`` the wrapped CDF at
    ``k / n_bins - x``, and the last bin's right edge ``L(0) + 1``)."""

    def __init__(self, n_dims: int, n_bins: int = 16) -> None:
        super().__init__()
        if n_bins < 1 or n_bins & (n_bins - 1):
            raise ValueError(f"OneBlob: n_bins={n_bins} must be a power of 2 (as in tcnn)")
        self.n_dims, self.n_bins = n_dims, n_bins
        self.n_output_dims = n_dims * n_bins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.n_bins
        edges = torch.arange(n, device=x.device, dtype=torch.float32) / n  # scalbnf: exact
        d = edges - x.float()[:, :, None]  # (N, D, n)
        left = quartic_cdf(d, n) + quartic_cdf(d - 1.0, n) + quartic_cdf(d + 1.0, n)
        right = torch.cat([left[..., 1:], left[..., :1] + 1.0], dim=-1)
        return (right - left).reshape(x.shape[0], self.n_output_dims)

    def extra_repr(self) -> str:
        return f"n_dims={self.n_dims}, n_bins={self.n_bins}"


class TriangleWave(nn.Module):
    """Per dimension i, for k = 0 .. n_frequencies - 1, a triangle wave of period
    ``2**(1 - k)`` phase-shifted by k / 4 periods, in [-1, 1] (triangle_wave.h
    ``triangle_wave_encoding``: ``v = x 2**(k-1) + k / 4``, ``|v - floor(v) - 1/2| 4 - 1``).

    The absolute value is written ``s (v - floor(v) - 1/2)`` with tcnn's sign
    ``s = floor(2 v) % 2 == 0 ? -1 : 1`` (C++'s remainder), so that autograd gives tcnn's
    derivative ``s 2**(k+1)`` at the kinks too (x = 0 is one, for k = 2)."""

    def __init__(self, n_dims: int, n_frequencies: int = 12) -> None:
        super().__init__()
        self.n_dims, self.n_frequencies = n_dims, n_frequencies
        self.n_output_dims = n_dims * n_frequencies

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = torch.arange(self.n_frequencies, device=x.device, dtype=torch.float32)
        v = x.float()[:, :, None] * 2.0 ** (k - 1) + k * 0.25
        with torch.no_grad():
            sign = torch.where(torch.fmod(torch.floor(v * 2), 2) == 0, -1.0, 1.0)
        return (sign * (v - torch.floor(v) - 0.5) * 4 - 1).reshape(x.shape[0], -1)

    def extra_repr(self) -> str:
        return f"n_dims={self.n_dims}, n_frequencies={self.n_frequencies}"


class Identity(nn.Module):
    """``x * scale + offset`` (identity.h; one rounding, as the fused multiply-add)."""

    def __init__(self, n_dims: int, scale: float = 1.0, offset: float = 0.0) -> None:
        super().__init__()
        self.n_dims, self.scale, self.offset = n_dims, float(scale), float(offset)
        self.n_output_dims = n_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_position(x.float(), self.scale, self.offset)

    def extra_repr(self) -> str:
        return f"n_dims={self.n_dims}, scale={self.scale}, offset={self.offset}"


class Empty(nn.Module):
    """No features (empty.h): only padding, which ``gridcodes.tcnn`` adds, reads its input."""

    def __init__(self, n_dims: int) -> None:
        super().__init__()
        self.n_dims, self.n_output_dims = n_dims, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], 0, dtype=torch.float32)


@cache
def _sh_normalisation(degree: int) -> tuple[tuple[float, ...], ...]:
    """K_lm sqrt(2)^(m != 0) for l < degree, m = 0 .. l, in float64."""
    rows = []
    for band in range(degree):
        row = []
        for m in range(band + 1):
            ratio = math.factorial(band - m) / math.factorial(band + m)
            k = math.sqrt((2 * band + 1) / (4 * math.pi) * ratio)
            row.append(k * (math.sqrt(2) if m else 1.0))
        rows.append(tuple(row))
    return tuple(rows)


def real_spherical_harmonics(d: torch.Tensor, degree: int) -> torch.Tensor:
    """Real spherical harmonics of bands 0 .. degree - 1 of ``d`` (N, 3), (N, degree**2),
    ordered band by band with m = -l .. l, Condon-Shortley phase included: tcnn's
    ``sh_enc`` (common_device.h), whose polynomials come from Sloan's recurrences
    ("Stupid Spherical Harmonics Tricks", App. A1), which these evaluate: the associated
    Legendre part in z alone and ``C_m + i S_m = (x + i y)**m``. Like tcnn, ``d`` is not
    normalised: off the unit sphere these are those polynomials, not harmonics."""
    x, y, z = d.unbind(-1)
    norm = _sh_normalisation(degree)
    cos_m, sin_m = [torch.ones_like(x)], [torch.zeros_like(x)]
    for _ in range(1, degree):
        c, s = cos_m[-1], sin_m[-1]
        cos_m.append(x * c - y * s)
        sin_m.append(x * s + y * c)
    out: list[torch.Tensor | None] = [None] * degree**2
    for m in range(degree):
        # P~_m^m = (-1)^m (2m - 1)!!, P~_{m+1}^m = (2m + 1) z P~_m^m, then upward in l.
        p_prev = torch.full_like(z, (-1) ** m * math.prod(range(1, 2 * m, 2)))
        p = None
        for band in range(m, degree):
            if band == m:
                p = p_prev
            elif band == m + 1:
                p, p_prev = (2 * m + 1) * z * p_prev, p_prev
            else:
                p, p_prev = ((2 * band - 1) * z * p - (band + m - 1) * p_prev) / (band - m), p
            k = norm[band][m]
            centre = band * band + band
            if m == 0:
                out[centre] = k * p
            else:
                out[centre + m] = k * p * cos_m[m]
                out[centre - m] = k * p * sin_m[m]
    return torch.stack(out, dim=-1)


class SphericalHarmonics(nn.Module):
    """Real spherical harmonics of a direction given in [0, 1]^3, ``degree`` (1..8) bands:
    degree**2 outputs. tcnn maps the input to ``2 x - 1`` (spherical_harmonics.h
    ``kernel_sh``) and does not normalise it."""

    def __init__(self, n_dims: int = 3, degree: int = 4) -> None:
        super().__init__()
        if n_dims != 3:
            raise ValueError(f"SphericalHarmonics encodes 3-D directions, got n_dims={n_dims}")
        if not 1 <= degree <= MAX_SH_DEGREE:
            raise ValueError(f"SphericalHarmonics: degree={degree} must be in 1..{MAX_SH_DEGREE}")
        self.n_dims, self.degree = n_dims, degree
        self.n_output_dims = degree * degree

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return real_spherical_harmonics(x.float() * 2.0 - 1.0, self.degree)

    def extra_repr(self) -> str:
        return f"degree={self.degree}"
