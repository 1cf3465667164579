"""The precision policy: which dtype each op of the models runs in under mixed precision,
and the memory format. The model files ask here; docs/training.md ("Precision") has the
table.

Under ``torch.autocast`` (``--mixed-precision bf16`` or ``fp16``):

- the grid lookup runs in float32 (``gridcodes`` excludes itself from autocast);
- GroupNorm runs in float32 on every device, as CUDA's autocast runs ``group_norm``
  (:func:`in_float32`);
- the hand-written convolutions and the demodulation's products run in the compute dtype,
  their saved tensors and derivatives included (:func:`in_compute_dtype`);
- the FIR filters run in their input's dtype, outside autocast, except the CPU's depthwise
  transposed pass under bf16 / fp16, in float32 (:func:`fir_dtype`);
- everything else follows autocast's own rules.

Channels-last is on by default under mixed precision and off in float32
(:func:`channels_last_default`).
"""

from __future__ import annotations

import contextlib

import torch

LOW_PRECISION = (torch.bfloat16, torch.float16)


def autocast_on(device: str) -> bool:
    """Whether autocast is on for ``device`` (a device type such as "cuda" or "cpu")."""
    return torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)


def autocast_off(device: str):
    """A context that turns autocast off for ``device`` (nothing where it has none)."""
    if torch.amp.is_autocast_available(device):
        return torch.autocast(device, enabled=False)
    return contextlib.nullcontext()


def in_compute_dtype(*tensors):
    """``tensors`` in autocast's dtype where autocast is on for their device (the saved
    tensors and every derivative then run in it), and a context that turns autocast off."""
    device = tensors[0].device.type
    if not torch.amp.is_autocast_available(device):
        return tensors, contextlib.nullcontext()
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        tensors = tuple(t if t is None else t.to(dtype) for t in tensors)
    return tensors, torch.autocast(device, enabled=False)


def in_float32(*tensors):
    """``tensors`` in float32 where autocast is on for their device, and a context that
    turns it off; else the tensors as they are and a context that does nothing."""
    device = tensors[0].device.type
    if not autocast_on(device):
        return tensors, contextlib.nullcontext()
    return tuple(t.float() for t in tensors), torch.autocast(device, enabled=False)


def fir_dtype(x: torch.Tensor, transposed: bool) -> torch.dtype:
    """The dtype of a depthwise FIR pass over ``x``: float32 for a transposed pass of a
    bf16 / fp16 ``x`` (oneDNN's low-precision depthwise transposed convolution is far slower,
    bench/results/cpu_notes.md; float32 also rounds once, not per tap), else x's."""
    return torch.float32 if transposed and x.dtype in LOW_PRECISION else x.dtype


def channels_last_default(mixed_precision: str | None) -> bool:
    """Channels-last memory format by default: under bf16 / fp16 mixed precision, where it
    is faster (as StyleGAN2-ADA's fp16 layers), not in float32 (bench/results/cpu_notes.md,
    "Measurements behind the code")."""
    return mixed_precision in ("bf16", "fp16")
