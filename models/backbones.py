"""Pretrained backbones: where their weights come from, where they are cached, how they read images.

One home for the files the perceptual losses (LPIPS, VGG features) and the generation
metrics (Inception, VGG-16, CLIP, clean-fid's Inception) need. Nothing here downloads: a
missing file raises ``FileNotFoundError`` naming the path to place it at (docs/training.md).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from models.errors import MissingInput, UserError

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
INCEPTION_V3_URL = "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth"
CLEAN_FID_URL = (
    "https://github.com/GaParmar/clean-fid/releases/download/v0.1.10/inception-2015-12-05.pt"
)
# torchvision's ImageNet statistics of RGB images in [0, 1]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def backbone_weights_path(url: str) -> Path:
    """Where torchvision caches the weights at ``url`` (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def require_backbone_weights(url: str, what: str) -> Path:
    """The cached weights file of ``url``, checked against the SHA-256 its publisher put in
    its name (torchvision's ``<name>-<first 8 hex digits>.pth``, as ``torch.hub`` checks);
    raises MissingInput (a FileNotFoundError) naming the path when absent, UserError (a
    ValueError) on a mismatch."""
    path = backbone_weights_path(url)
    if not path.is_file():
        raise MissingInput(
            f"{what} needs pretrained weights at {path}, which is missing. Download {url} "
            f"to that path (or set TORCH_HOME to a folder that has hub/checkpoints/{path.name}); "
            "or do without it (training: --perceptual none / auto; evaluation: other --metrics)."
        )
    published = HASH_IN_NAME.search(path.name)
    if published is not None:
        check_sha256(path, published.group(1))
    return path


# torchvision's weight files end in the first digits of their SHA-256 (torch.hub.HASH_REGEX).
HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")


def check_sha256(path: Path, expected: str) -> None:
    """Raise UserError naming ``path`` unless its SHA-256 starts with ``expected``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(expected):
        raise UserError(
            f"{path} has SHA-256 {digest.hexdigest()}, the published file starts with "
            f"{expected}: delete it and download it again"
        )


def clean_fid_inception_path() -> Path:
    """Where this project reads clean-fid's Inception TorchScript: the per-user torch cache,
    never clean-fid's own default, a shared temporary folder any local user can write to."""
    return backbone_weights_path(CLEAN_FID_URL)


def clip_weights_path() -> Path:
    """Where OpenAI's CLIP package caches the ViT-B/32 weights."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "clip" / "ViT-B-32.pt"


def imagenet_normalize(images: torch.Tensor) -> torch.Tensor:
    """RGB images (B, 3, H, W) in [0, 1] -> the ImageNet-normalised input of a torchvision net."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean) / std


def imagenet_input(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 images (B, 3, H, W) resized (bilinear, antialiased) to ``size`` and normalised."""
    x = F.interpolate(
        images.float() / 255,
        size=(size, size),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    return imagenet_normalize(x)
