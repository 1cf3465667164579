"""FIR filtering and 2x resampling of feature maps, in training form (StyleGAN2 App. B).

StyleGAN2 low-pass filters around every up- and downsampling with the separable
[1, 3, 3, 1] filter. Each application here is ONE convolution pass over the feature map
(:class:`FIRFilter`), and its adjoint is one pass too (:class:`FIRTranspose`); each is the
other's backward, so the filter is differentiable to any order with one pass per
derivative, and PyTorch's own double backward of a convolution, which loops over the
groups of a grouped one (most of a 10.5 s H100 step once: the discriminator's gradient
penalty differentiates the filter twice), never runs.

A pass takes one of two forms, equal up to rounding (:data:`FORMS`):

- ``"folded"``: channels folded into the batch, ``(B, C, H, W) -> (B * C, 1, H, W)``,
  against a single 4 x 4 filter: no grouped convolution. The form on CUDA.
- ``"depthwise"``: one depthwise (``groups=C``) convolution. The form on the CPU, where
  oneDNN runs single-channel convolutions an order of magnitude slower than depthwise ones
  (bench/results/cpu_notes.md, "Measurements behind the code").

:func:`fir_form` switches the form for a block of code (the op-count tests and benchmarks
count the CUDA form on the CPU). Every pass returns the input's dtype, outside autocast
(the depthwise transposed pass of a bf16 or fp16 input computes in float32).
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F

from . import precision

TAPS = (1.0, 3.0, 3.0, 1.0)
FORMS = ("folded", "depthwise")
DEFAULT_FORMS = {"cuda": "folded"}  # any other device: "depthwise"
_forced: list[str] = []


@contextlib.contextmanager
def fir_form(form: str):
    """Run every FIR pass in ``form`` (one of :data:`FORMS`) inside the block, any device."""
    if form not in FORMS:
        raise ValueError(f"FIR form must be one of {FORMS}, got {form!r}")
    _forced.append(form)
    try:
        yield
    finally:
        _forced.pop()


def fir_kernel(gain: float = 1.0, device=None, dtype=torch.float32) -> torch.Tensor:
    """The [1, 3, 3, 1] x [1, 3, 3, 1] filter normalised to sum ``gain``: (1, 1, 4, 4).
    Symmetric, so its flip (the adjoint's filter) is itself."""
    taps = torch.tensor(TAPS, device=device, dtype=torch.float64)
    kernel = taps[:, None] * taps[None, :]
    return (kernel * (gain / kernel.sum())).to(dtype)[None, None]


def _pass(x: torch.Tensor, kernel: torch.Tensor, transposed: bool, **conv) -> torch.Tensor:
    """One (transposed) convolution of every channel of x (B, C, H, W) with ``kernel``."""
    b, c = x.shape[:2]
    form = _forced[-1] if _forced else DEFAULT_FORMS.get(x.device.type, "depthwise")
    op = F.conv_transpose2d if transposed else F.conv2d
    with precision.autocast_off(x.device.type):
        if form == "depthwise":
            dtype = precision.fir_dtype(x, transposed)
            inputs = x if dtype == x.dtype else x.to(dtype)
            kernel = kernel.to(inputs.dtype).expand(c, 1, *kernel.shape[2:])
            return op(inputs, kernel, groups=c, **conv).to(x.dtype)
        y = op(x.reshape(b * c, 1, *x.shape[2:]), kernel.to(x.dtype), **conv)
    return y.reshape(b, c, *y.shape[2:])


class FIRFilter(torch.autograd.Function):
    """``y = conv2d(x, kernel, stride, padding)`` per channel: (B, C, H, W) ->
    (B, C, (H + 2 p - 4) // s + 1, ...). Backward: :class:`FIRTranspose` of the gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, kernel: torch.Tensor, stride: int, padding: int):
        ctx.save_for_backward(kernel)
        ctx.stride, ctx.padding, ctx.in_size = stride, padding, x.shape[-2:]
        return _pass(x, kernel, False, stride=stride, padding=padding)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (kernel,) = ctx.saved_tensors
        s, p, k = ctx.stride, ctx.padding, kernel.shape[-1]
        # conv_transpose2d's size is (m - 1) s - 2p + k + output_padding: make it the input's.
        extra = tuple(n - ((m - 1) * s - 2 * p + k) for n, m in zip(ctx.in_size, grad.shape[-2:]))
        return FIRTranspose.apply(grad, kernel, s, p, extra), None, None, None


class FIRTranspose(torch.autograd.Function):
    """``y = conv_transpose2d(x, kernel, stride, padding, output_padding)`` per channel: the
    adjoint of :class:`FIRFilter` (zero insertion and filtering in one pass for stride 2;
    for stride 1 the filter flipped, as a plain convolution). Backward: :class:`FIRFilter`
    of the gradient."""

    @staticmethod
    def forward(ctx, x, kernel, stride: int, padding: int, output_padding=(0, 0)):
        ctx.save_for_backward(kernel)
        ctx.stride, ctx.padding = stride, padding
        if stride == 1:  # the flipped filter (ours is symmetric: itself), no output padding
            return _pass(x, kernel, False, padding=kernel.shape[-1] - 1 - padding)
        conv = {"stride": stride, "padding": padding, "output_padding": output_padding}
        return _pass(x, kernel, True, **conv)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (kernel,) = ctx.saved_tensors
        return FIRFilter.apply(grad, kernel, ctx.stride, ctx.padding), None, None, None, None


def blur(x: torch.Tensor, padding: int, gain: float = 1.0) -> torch.Tensor:
    """The FIR filter with ``padding`` zeros on every side: (B, C, H, W) -> (B, C, H + 2p - 3,
    W + 2p - 3)."""
    return FIRFilter.apply(x, _kernel(x, gain), 1, padding)


def downsample_2x(x: torch.Tensor) -> torch.Tensor:
    """Filter and keep every second sample, in one pass: (B, C, H, W) -> (B, C, H/2, W/2).

    Equal to :func:`blur` with padding 1 followed by taking rows and columns 0, 2, 4, ..."""
    return FIRFilter.apply(x, _kernel(x, 1.0), 2, 1)


def upsample_2x(x: torch.Tensor) -> torch.Tensor:
    """Zero insertion and the filter (gain 4), in one pass: (B, C, H, W) -> (B, C, 2H, 2W).

    Equal to inserting a zero after every sample, padding (2, 1) and :func:`blur`."""
    return FIRTranspose.apply(x, _kernel(x, 4.0), 2, 1, (0, 0))


def _kernel(x: torch.Tensor, gain: float) -> torch.Tensor:
    if torch.compiler.is_compiling():  # a constant of the compiled graph
        return fir_kernel(gain, x.device)
    return _cached_kernel(gain, x.device)


@functools.lru_cache(maxsize=32)
def _cached_kernel(gain: float, device: torch.device) -> torch.Tensor:
    """Made once per gain and device: no host-to-device copy inside a training step."""
    return fir_kernel(gain, device)
