"""Key codes of a dataset, encoded once by a stage-1 autoencoder and cached.

Codes are stored in float32: float16's spacing (2.4e-4 to 4.9e-4 in [0.25, 1]) is coarser
than the spread of KL-regularised codes (sigma <= 2e-5), which is what Table 4 compares.
The cache is a safetensors file whose metadata records a fingerprint of the autoencoder
(its config and weights) and of the dataset; a cache written by another autoencoder or for
other data is detected as stale and re-encoded, never silently reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from tqdm import tqdm

from models import BRICSAutoencoder
from models.diffusion import codes_to_data
from models.errors import UserError
from models.persistence import model_files
from train.core.checkpoint import write_failure
from train.core.data import FlippableDataset, build_dataset

logger = logging.getLogger(__name__)
FORMAT = "brics-codes/2"  # /1 stored float16; such caches are re-encoded


def autoencoder_fingerprint(model_dir: Path) -> str:
    """SHA-256 over the autoencoder's config and weights files."""
    digest = hashlib.sha256()
    for path in model_files(model_dir):
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def data_identity(data: str, split: str) -> dict:
    """What the codes were encoded from: the data's path and, for a folder or LMDB, every
    file under it with its size and modification time (replaced images change it)."""
    if data == "embedded":
        return {"data": data, "split": split}
    root = Path(data).resolve()
    files = [
        (str(path.relative_to(root)), path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    ]
    return {"data": str(root), "split": split, "files": files}


def fingerprint(model_dir: Path, data: str, split: str) -> str:
    """SHA-256 over the autoencoder's fingerprint and the data's identity."""
    identity = json.dumps(
        {"autoencoder": autoencoder_fingerprint(model_dir), **data_identity(data, split)}
    )
    return hashlib.sha256(identity.encode()).hexdigest()


@torch.no_grad()
def encode_dataset(
    model: BRICSAutoencoder, dataset, batch_size: int, device, show_progress: bool = True
) -> torch.Tensor:
    """Key codes (N, Cz, Hz, Wz) in [0, 1], float32, of every image in eval mode (no noise)."""
    model.eval()
    codes = []
    starts = range(0, len(dataset), batch_size)
    for start in tqdm(starts, desc="encode", disable=not show_progress, mininterval=5.0):
        images = torch.stack(
            [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
        )
        codes.append(model.encode(images.to(device)).float().cpu())
    return torch.cat(codes)


def load_or_encode(
    model_dir: Path,
    data: str,
    split: str,
    cache: Path,
    batch_size: int,
    device,
    grid_backend: str = "auto",
) -> torch.Tensor:
    """The cached codes when ``cache`` matches this autoencoder and data, else encode and cache."""
    key = fingerprint(model_dir, data, split)
    if cache.is_file():
        try:
            with safe_open(str(cache), framework="pt") as f:
                metadata = f.metadata() or {}
                if metadata.get("format") == FORMAT and metadata.get("fingerprint") == key:
                    return f.get_tensor("codes")
            logger.warning("code cache %s is stale (other autoencoder or data); re-encoding", cache)
        except (OSError, SafetensorError) as error:  # truncated, edited, not safetensors
            logger.warning("code cache %s is damaged (%s); re-encoding", cache, error)
    model = BRICSAutoencoder.from_pretrained(model_dir, grid_backend=grid_backend, device=device)
    dataset = build_dataset(data, split, model.config.image_size)
    codes = encode_dataset(model, dataset, batch_size, device)
    cache.parent.mkdir(parents=True, exist_ok=True)
    temporary = cache.with_name(cache.name + ".tmp")
    metadata = {
        "format": FORMAT,
        "fingerprint": key,
        "autoencoder": str(model_dir),
        "data": data,
        "split": split,
        "count": str(len(codes)),
    }
    try:  # Python's file API: a full disk raises OSError(ENOSPC)
        temporary.write_bytes(save({"codes": codes.contiguous()}, metadata))
    except OSError as error:
        temporary.unlink(missing_ok=True)
        then = "the codes are encoded again on the next run"
        if (message := write_failure(error, cache, then)) is None:
            raise
        raise UserError(message) from None
    temporary.replace(cache)
    return codes


class CodeDataset(FlippableDataset):
    """Cached key codes (N, Cz, Hz, Wz) in [0, 1] served as diffusion data 2z - 1 in [-1, 1]."""

    def __init__(self, codes: torch.Tensor) -> None:
        self.codes = codes

    def __len__(self) -> int:
        return len(self.codes)

    def load(self, index: int) -> torch.Tensor:
        return codes_to_data(self.codes[index].float())
