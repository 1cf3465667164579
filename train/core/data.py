"""Image datasets and the deterministic sampler of the training scripts.

- :class:`ImageFolder`: images under a folder (recursive), RGB-converted, center-cropped and
  resized as the paper does; unreadable files are skipped and counted.
- :class:`LMDBImages`: LSUN's LMDB format (optional ``lmdb`` dependency).
- :class:`EmbeddedPhotos`: the built-in default, patches of the colour photographs that
  scikit-image ships, with validation held out by photograph.
- :class:`StepBatchSampler`: which samples (and flips) every step of every process reads,
  as a pure function of (seed, step), so a resumed run reads exactly what it would have.

Every dataset yields ``(3, S, S)`` float32 tensors in [-1, 1].
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile
from torch.utils.data import Dataset, Sampler

from models.errors import MissingInput, UserError

logger = logging.getLogger(__name__)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB version of any PIL image: grey, 16-bit, palette, CMYK; transparency over white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if not np.isfinite(array).all():
            raise ValueError(f"a {image.mode} image holds non-finite values")
        if image.mode == "F" and array.size and array.min() >= 0 and array.max() <= 1:
            peak = 1.0  # a float image in [0, 1]
        elif image.mode.startswith("I;16") or array.max() > 255:
            peak = 65535.0
        else:
            peak = 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0, 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def center_crop_resize(image: Image.Image, size: int) -> Image.Image:
    """Central square crop, then resize to ``size`` x ``size`` (bicubic, antialiased)."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    return image if side == size else image.resize((size, size), Image.BICUBIC, reducing_gap=3.0)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) float32 in [-1, 1] of an RGB PIL image."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def load_image(source, size: int) -> torch.Tensor:
    """Decode a path or bytes to a (3, size, size) tensor in [-1, 1]."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
        image.load()  # decode fully now, so truncated files fail here
        return to_tensor(center_crop_resize(to_rgb(image), size))


class FlippableDataset(Dataset):
    """Base: items are ``index`` or ``(index, flip)``; flip mirrors horizontally."""

    def load(self, index: int) -> torch.Tensor:
        raise NotImplementedError

    def __getitem__(self, item) -> torch.Tensor:
        index, flip = item if isinstance(item, tuple) else (item, False)
        image = self.load(int(index))
        return image.flip(-1) if flip else image


class ImageFolder(FlippableDataset):
    """Images found recursively under ``root`` (jpg, png, webp, bmp, tiff), in sorted order.

    Files PIL cannot open are skipped at construction and counted (``skipped``);
    a file that fails to decode later is logged and replaced by the next image.
    """

    def __init__(self, root: str | Path, image_size: int) -> None:
        root = Path(root)
        if not root.is_dir():
            raise MissingInput(f"image folder {root} does not exist or is not a folder")
        candidates = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        self.paths: list[Path] = []
        self.skipped: list[Path] = []
        for path in candidates:
            try:
                with Image.open(path) as image:
                    image.verify()
                self.paths.append(path)
            except Exception:  # PIL raises many types for broken files
                self.skipped.append(path)
        if not self.paths:
            raise UserError(
                f"no readable images under {root} (looked for {', '.join(IMAGE_EXTENSIONS)}; "
                f"{len(candidates)} candidate files, {len(self.skipped)} unreadable)"
            )
        if self.skipped:
            logger.warning(
                "skipped %d unreadable file(s) under %s, e.g. %s",
                len(self.skipped),
                root,
                self.skipped[0],
            )
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> torch.Tensor:
        for attempt in range(len(self.paths)):
            path = self.paths[(index + attempt) % len(self.paths)]
            try:
                return load_image(path, self.image_size)
            except (OSError, ValueError, SyntaxError) as error:
                logger.warning("cannot decode %s (%s); using the next image", path, error)
        raise UserError(f"no image under {self.paths[0].parent} could be decoded any more")


class LMDBImages(FlippableDataset):
    """Images stored as encoded bytes in an LMDB database (LSUN's distribution format)."""

    def __init__(self, path: str | Path, image_size: int) -> None:
        try:
            import lmdb
        except ImportError as error:
            raise UserError(
                f"{path} is an LMDB database, which needs the lmdb package: "
                "pip install -e '.[lsun]'"
            ) from error
        path = Path(path)
        if not path.exists():
            raise MissingInput(f"LMDB database {path} does not exist")
        self.path, self.image_size = path, image_size
        self._env = None
        try:
            env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False)
            with env.begin() as txn:
                self.keys = [key for key, _ in txn.cursor()]
            env.close()
        except lmdb.Error as error:
            raise UserError(f"{path} is not a readable LMDB database: {error}") from None
        if not self.keys:
            raise UserError(f"LMDB database {path} holds no images")
        try:  # the records are encoded images (LSUN's format): the first one says so
            self.load(0)
        except (OSError, ValueError, SyntaxError) as error:
            raise UserError(
                f"LMDB database {path}: record {self.keys[0]!r} is not an image ({error})"
            ) from None
        finally:  # each worker process opens its own environment
            if self._env is not None:
                self._env.close()
                self._env = None

    def __len__(self) -> int:
        return len(self.keys)

    def load(self, index: int) -> torch.Tensor:
        if self._env is None:  # opened lazily: one environment per worker process
            import lmdb

            self._env = lmdb.open(
                str(self.path), readonly=True, lock=False, readahead=False, meminit=False
            )
        with self._env.begin() as txn:
            return load_image(bytes(txn.get(self.keys[index])), self.image_size)

    def __getstate__(self):
        return {**self.__dict__, "_env": None}


# The built-in photographs (scikit-image's data folder): validation photos are never cut
# into training patches, so the held-out metric measures generalisation to new photos.
TRAIN_PHOTOS = (
    "astronaut",
    "coffee",
    "hubble_deep_field",
    "retina",
    "immunohistochemistry",
    "motorcycle_left",
)
VALIDATION_PHOTOS = ("chelsea", "rocket")


def _photo(name: str) -> Image.Image:
    from skimage import data

    array = data.stereo_motorcycle()[0] if name == "motorcycle_left" else getattr(data, name)()
    return Image.fromarray(array)


def photo_patches(photo: Image.Image, size: int) -> list[torch.Tensor]:
    """Patches of ``size`` with stride size/2 at two scales (short side 4 and 2 times ``size``)."""
    patches = []
    for short_side in (4 * size, 2 * size):
        scale = short_side / min(photo.size)
        resized = photo.resize(
            (round(photo.width * scale), round(photo.height * scale)),
            Image.BICUBIC,
            reducing_gap=3.0,
        )
        image = to_tensor(resized)
        stride = size // 2
        for top in range(0, image.shape[1] - size + 1, stride):
            for left in range(0, image.shape[2] - size + 1, stride):
                patches.append(image[:, top : top + size, left : left + size].clone())
    return patches


class EmbeddedPhotos(FlippableDataset):
    """The default dataset: patches of scikit-image's colour photographs, split by photo."""

    def __init__(self, split: str, image_size: int) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        names = TRAIN_PHOTOS if split == "train" else VALIDATION_PHOTOS
        self.patches = torch.stack([p for n in names for p in photo_patches(_photo(n), image_size)])

    def __len__(self) -> int:
        return len(self.patches)

    def load(self, index: int) -> torch.Tensor:
        return self.patches[index]


def build_dataset(source: str, split: str, image_size: int) -> FlippableDataset:
    """``"embedded"``, an LMDB (``*.lmdb`` or a folder with ``data.mdb``), or an image folder.

    For folders, a ``train``/``val`` subfolder is used when present; otherwise the folder
    itself serves the training split and has no validation split.
    """
    if source == "embedded":
        return EmbeddedPhotos(split, image_size)
    if not source.strip():  # Path("") is the working directory
        raise UserError("--data is empty: give 'embedded', an image folder or an LMDB")
    root = Path(source)
    if (root / split).is_dir():
        root = root / split
    elif split == "val":
        raise MissingInput(f"no validation split: {Path(source) / 'val'} does not exist")
    if root.suffix == ".lmdb" or (root / "data.mdb").is_file():
        return LMDBImages(root, image_size)
    return ImageFolder(root, image_size)


class StepBatchSampler(Sampler):
    """Micro-batches of ``(index, flip)`` for steps ``start_step .. max_steps - 1``.

    The sample stream is a sequence of epochs, each a permutation of the dataset drawn from
    ``seed + epoch``; optimizer step s consumes the next ``batch * processes * accumulation``
    samples of the stream, process r taking its slice of each micro-batch. Nothing depends
    on the order of data-loader workers, so resuming at any step replays the same data.
    """

    def __init__(
        self,
        n_samples: int,
        batch_size: int,
        seed: int,
        start_step: int,
        max_steps: int,
        rank: int = 0,
        world_size: int = 1,
        accumulation: int = 1,
        hflip: bool = False,
    ) -> None:
        self.n, self.batch, self.seed = n_samples, batch_size, seed
        self.start_step, self.max_steps = start_step, max_steps
        self.rank, self.world, self.accumulation, self.hflip = rank, world_size, accumulation, hflip
        self._epoch, self._order, self._flips = -1, None, None

    def _epoch_draw(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order = torch.randperm(self.n, generator=generator)
            self._flips = torch.rand(self.n, generator=generator) < 0.5
            self._epoch = epoch
        return self._order, self._flips

    def batch_at(self, step: int, micro: int) -> list[tuple[int, bool]]:
        per_step = self.batch * self.world * self.accumulation
        first = step * per_step + (micro * self.world + self.rank) * self.batch
        items = []
        for position in range(first, first + self.batch):
            order, flips = self._epoch_draw(position // self.n)
            offset = position % self.n
            items.append((int(order[offset]), bool(flips[offset]) and self.hflip))
        return items

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        for step in range(self.start_step, self.max_steps):
            for micro in range(self.accumulation):
                yield self.batch_at(step, micro)

    def __len__(self) -> int:
        return (self.max_steps - self.start_step) * self.accumulation


ImageFile.LOAD_TRUNCATED_IMAGES = False  # truncated files must fail, not load half-grey
