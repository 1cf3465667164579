"""BRICS models (Yang et al. 2023, arXiv 2305.18601) built on gridcodes."""

from .autoencoder import AutoencoderOutput, BRICSAutoencoder
from .config import BRICSConfig
from .discriminator import Discriminator
from .losses import (
    LossConfig,
    build_perceptual_loss,
    discriminator_loss,
    discriminator_penalty,
    generator_loss,
)
from .optim import build_optimizers
from .presets import DEFAULT_PRESET, PRESETS, get_preset

__all__ = [
    "DEFAULT_PRESET",
    "PRESETS",
    "AutoencoderOutput",
    "BRICSAutoencoder",
    "BRICSConfig",
    "Discriminator",
    "LossConfig",
    "build_optimizers",
    "build_perceptual_loss",
    "discriminator_loss",
    "discriminator_penalty",
    "generator_loss",
    "get_preset",
]
