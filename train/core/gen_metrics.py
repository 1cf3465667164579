"""Generation metrics (paper Tables 4-5, App. F; docs/training.md).

- FID and CLIP-FID: Fréchet distance of clean-fid's Inception (``mode="clean"``) or CLIP
  ViT-B/32 (``model_name="clip_vit_b_32"``) features.
- Inception score (Salimans et al. 2016) from torchvision's Inception-v3 logits.
- Precision / recall (Kynkäänniemi et al. 2019, k = 3) on VGG-16 fc2 features.
- Nearest training neighbours of samples by LPIPS.
- Offline, no network weights: the sliced Wasserstein distance of Laplacian-pyramid patches
  (Karras et al. 2018, ProGAN) and the energy distance of two sets of vectors (key codes).

The metric arithmetic takes features or logits, so it is tested with random-weight
networks; the extractors load pretrained weights and name the missing file when absent.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg

from models.backbones import (
    CLEAN_FID_URL,
    INCEPTION_V3_URL,
    VGG16_URL,
    clean_fid_inception_path,
    clip_weights_path,
    imagenet_input,
    require_backbone_weights,
)
from models.errors import MissingInput

Extractor = Callable[[torch.Tensor], torch.Tensor]  # uint8 images (N, 3, H, W) -> (N, D)


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two feature sets (N, D)."""
    a, b = features_a.double().cpu().numpy(), features_b.double().cpu().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s_a @ s_b)
    if not np.isfinite(covmean).all():  # regularise a singular product, as clean-fid does
        offset = np.eye(s_a.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s_a + offset) @ (s_b + offset))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean))


def inception_score(logits: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))), mean and std over ``splits`` chunks of the samples."""
    probs = logits.double().softmax(dim=1)
    scores = []
    for chunk in probs.chunk(min(splits, len(probs))):
        marginal = chunk.mean(dim=0, keepdim=True)
        kl = (chunk * (chunk.clamp_min(1e-30).log() - marginal.clamp_min(1e-30).log())).sum(1)
        scores.append(kl.mean().exp().item())
    scores = torch.tensor(scores)
    return scores.mean().item(), (scores.std().item() if len(scores) > 1 else 0.0)


def _kth_neighbour_radius(features: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    radii = []
    for part in features.split(chunk):
        distances = torch.cdist(part, features)
        radii.append(distances.kthvalue(k + 1, dim=1).values)  # +1: the point itself
    return torch.cat(radii)


def _fraction_inside(
    queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int = 1024
) -> float:
    inside = [
        (torch.cdist(part, centres) <= radii[None, :]).any(dim=1) for part in queries.split(chunk)
    ]
    return torch.cat(inside).double().mean().item()


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall: a sample counts when it falls inside the k-NN ball of
    some sample of the other set (real manifold for precision, fake manifold for recall)."""
    real, fake = real.double(), fake.double()
    precision = _fraction_inside(fake, real, _kth_neighbour_radius(real, k))
    recall = _fraction_inside(real, fake, _kth_neighbour_radius(fake, k))
    return precision, recall


@torch.no_grad()
def nearest_neighbours(
    samples: torch.Tensor, references: torch.Tensor, distance, k: int = 4, batch_size: int = 64
) -> torch.Tensor:
    """Indices (S, k) of the ``k`` references closest to each sample; ``distance(a, b) -> (B,)``."""
    result = []
    for sample in samples:
        distances = []
        for start in range(0, len(references), batch_size):
            refs = references[start : start + batch_size]
            distances.append(distance(sample[None].expand_as(refs), refs).flatten())
        result.append(torch.cat(distances).topk(k, largest=False).indices)
    return torch.stack(result)


@torch.no_grad()
def extract(extractor: Extractor, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Features of uint8 images (N, 3, H, W), in batches."""
    return torch.cat(
        [
            extractor(images[i : i + batch_size]).float().cpu()
            for i in range(0, len(images), batch_size)
        ]
    )


# --- offline metrics: sliced Wasserstein on pyramid patches, energy distance ------------------
_BINOMIAL = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)  # ProGAN's 5x5 Gaussian, separated


def _binomial_blur(x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """5x5 binomial filter with mirrored borders (scipy's ``mode="mirror"``, cv2's default);
    ``gain`` multiplies each axis' kernel. Shifted sums: faster than a depthwise conv on CPU."""
    height, width = x.shape[-2:]
    x = F.pad(x, (2, 2, 2, 2), mode="reflect")
    x = sum(gain * weight * x[..., i : i + width] for i, weight in enumerate(_BINOMIAL))
    return sum(gain * weight * x[..., i : i + height, :] for i, weight in enumerate(_BINOMIAL))


def _pyramid_down(x: torch.Tensor) -> torch.Tensor:  # cv2.pyrDown
    return _binomial_blur(x)[:, :, ::2, ::2]


def _pyramid_up(x: torch.Tensor) -> torch.Tensor:  # cv2.pyrUp: zero insertion, blur, gain 4
    n, c, h, w = x.shape
    up = x.new_zeros(n, c, 2 * h, 2 * w)
    up[:, :, ::2, ::2] = x
    return _binomial_blur(up, gain=2.0)  # 2 per axis


def laplacian_pyramid(images: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """ProGAN's Laplacian pyramid (Karras et al. 2018, ``generate_laplacian_pyramid``).

    ``images`` (N, C, H, W) of any real dtype, converted to float32 without rescaling (uint8
    stays in 0..255); H and W divisible by 2^(levels - 1). Returns ``levels`` float32
    tensors, finest first, level i of shape (N, C, H / 2^i, W / 2^i): level i is
    g_i - up(g_{i+1}) with g_0 the image and g_{i+1} = down(g_i) (5x5 binomial [1,4,6,4,1]/16
    blur, then every second pixel); the last level is the low-pass residual g_{levels-1}.
    Summing up the levels from the coarsest reconstructs the images exactly.
    """
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    factor = 2 ** (levels - 1)
    if images.shape[-2] % factor or images.shape[-1] % factor:
        raise ValueError(f"{levels} levels need H and W divisible by {factor}, got {images.shape}")
    pyramid = [images.float()]
    for _ in range(1, levels):
        pyramid.append(_pyramid_down(pyramid[-1]))
        pyramid[-2] = pyramid[-2] - _pyramid_up(pyramid[-1])
    return pyramid


def swd_resolutions(height: int, width: int) -> list[int]:
    """Pyramid level heights: halving down to a 16-pixel minimum (ProGAN's rule), stopping
    early at an odd size; 64x64 images give [64, 32, 16]."""
    heights, h, w = [], height, width
    while min(h, w) >= 16:
        heights.append(h)
        if h % 2 or w % 2:
            break
        h, w = h // 2, w // 2
    return heights


def _random_patches(
    level: torch.Tensor, per_image: int, size: int, generator: torch.Generator
) -> torch.Tensor:
    """``per_image`` patches (size x size) of each image, uniform positions wholly inside."""
    n, c, h, w = level.shape
    count, half = n * per_image, size // 2
    rows = torch.randint(half, h - size + half + 1, (count,), generator=generator)
    cols = torch.randint(half, w - size + half + 1, (count,), generator=generator)
    offsets = torch.arange(size) - half
    image = torch.arange(n).repeat_interleave(per_image)
    return level[
        image[:, None, None, None],
        torch.arange(c)[None, :, None, None],
        (rows[:, None] + offsets)[:, None, :, None],
        (cols[:, None] + offsets)[:, None, None, :],
    ]  # (count, C, size, size)


def _descriptors(
    images: torch.Tensor, levels: int, per_image: int, size: int, seed: int, batch_size: int = 256
) -> list[torch.Tensor]:
    """Per level, normalised flattened patch descriptors (N * per_image, C * size^2) float32."""
    generator = torch.Generator().manual_seed(2 * seed)  # the same stream for both sets
    patches: list[list[torch.Tensor]] = [[] for _ in range(levels)]
    for start in range(0, len(images), batch_size):
        pyramid = laplacian_pyramid(images[start : start + batch_size], levels)
        for found, level in zip(patches, pyramid):
            found.append(_random_patches(level, per_image, size, generator))
    descriptors = []
    for found in patches:
        desc = torch.cat(found)
        desc = desc - desc.mean(dim=(0, 2, 3), keepdim=True)  # per channel, over the whole set
        desc = desc / desc.std(dim=(0, 2, 3), correction=0, keepdim=True).clamp_min(1e-12)
        descriptors.append(desc.flatten(1))
    return descriptors


def _sliced_distance(
    a: torch.Tensor, b: torch.Tensor, projections: int, generator: torch.Generator
) -> float:
    """Mean over random unit directions of the mean |sorted proj_a - sorted proj_b|; the
    directions are drawn 128 at a time (ProGAN: 4 repeats x 128 directions)."""
    total = 0.0
    for start in range(0, projections, 128):
        directions = torch.randn(a.shape[1], min(128, projections - start), generator=generator)
        directions = directions / directions.norm(dim=0, keepdim=True)
        # NumPy's SIMD sort is several times faster than torch.sort on a CPU
        sorted_a = np.sort((directions.T @ a.T).numpy(), axis=1)
        sorted_b = np.sort((directions.T @ b.T).numpy(), axis=1)
        total += float(np.abs(sorted_a - sorted_b).sum(dtype=np.float64))
    return total / (projections * len(a))


@torch.no_grad()
def sliced_wasserstein(
    images_a: torch.Tensor,
    images_b: torch.Tensor,
    patches_per_image: int = 128,
    patch_size: int = 7,
    projections: int = 512,
    seed: int = 0,
) -> dict:
    """Sliced Wasserstein distance of Laplacian-pyramid patches (Karras et al. 2018, ProGAN).

    ``images_a`` (N, C, H, W) and ``images_b`` (M, C, H, W): uint8 in 0..255, as samples read
    from a folder and the references of ``train/eval_gen.py`` (other dtypes raise); H, W >= 16.
    Per pyramid level (``laplacian_pyramid``; levels from
    ``swd_resolutions``: 64, 32, 16 for 64x64 images), ``patches_per_image`` random
    ``patch_size`` x ``patch_size`` patches of every image are taken, normalised over all
    descriptors of their set (per channel: minus the mean, over the population std) and
    flattened; the larger set's descriptors are subsampled to the smaller's count. The
    distance is the mean over ``projections`` random unit directions of the mean absolute
    difference of the two sorted projections.

    Scale: every value is ProGAN's distance x 1e3 (ProGAN's ``SWDx1e3`` display scale, the
    numbers of its tables). Returns ``{"levels": {"64": v, "32": v, "16": v}, "mean": v}``,
    levels keyed by their height, "mean" the average over levels, all Python floats.

    Deterministic given ``seed`` (CPU ``torch.Generator``s). Both sets draw their patch
    positions from the same seeded stream (common random numbers): a set against itself
    gives exactly 0, and a comparison is not blurred by different patch draws. 184 against
    184 images of 64x64 take about 2 s on one shared CPU core.
    """
    for images in (images_a, images_b):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise TypeError(f"need uint8 images (N, C, H, W), got {images.dtype} {images.shape}")
    if images_a.shape[1:] != images_b.shape[1:] or not len(images_a) or not len(images_b):
        raise ValueError(
            f"need two non-empty sets of one shape, got {images_a.shape}, {images_b.shape}"
        )
    resolutions = swd_resolutions(*images_a.shape[-2:])
    if not resolutions or not 1 <= patch_size <= 16:
        raise ValueError(f"need images of >= 16 pixels and patches of <= 16, got {images_a.shape}")
    desc_a, desc_b = (
        _descriptors(images.cpu(), len(resolutions), patches_per_image, patch_size, seed)
        for images in (images_a, images_b)
    )
    generator = torch.Generator().manual_seed(2 * seed + 1)  # subsampling and directions
    levels = {}
    for resolution, a, b in zip(resolutions, desc_a, desc_b):
        if len(a) != len(b):
            count = min(len(a), len(b))
            a, b = (d[torch.randperm(len(d), generator=generator)[:count]] for d in (a, b))
        levels[str(resolution)] = 1e3 * _sliced_distance(a, b, projections, generator)
    return {"levels": levels, "mean": float(np.mean(list(levels.values())))}


def _mean_distance(x: torch.Tensor, y: torch.Tensor, same: bool, chunk: int = 1024) -> float:
    """Mean Euclidean distance over pairs of x and y; ``same``: x is y, its diagonal left out."""
    total = 0.0
    for start in range(0, len(x), chunk):
        distances = torch.cdist(x[start : start + chunk], y)
        total += distances.sum().item()
        if same:
            total -= distances.diagonal(offset=start).sum().item()
    return total / (len(x) * (len(y) - 1) if same else len(x) * len(y))


@torch.no_grad()
def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| (Székely & Rizzo), Euclidean.

    ``a`` (N, D) and ``b`` (M, D), N, M >= 2, any real dtype (e.g. flattened key codes; more
    dimensions are flattened), computed in float64 with ``torch.cdist`` after subtracting the
    pooled mean (the distance is translation invariant; this keeps the cancellation small).
    The within-set terms are U-statistics (pairs of distinct samples, the zero diagonal left
    out), so the estimate is unbiased: 0 in expectation for equal distributions, hence it
    can come out slightly negative; for the population it is >= 0, and 0 only for equal
    distributions. Two point masses at distance d give 2d.
    """
    a, b = a.flatten(1).double().cpu(), b.flatten(1).double().cpu()
    if len(a) < 2 or len(b) < 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need (N >= 2, D) and (M >= 2, D), got {a.shape} and {b.shape}")
    centre = torch.cat([a, b]).mean(dim=0)
    a, b = a - centre, b - centre
    return (
        2 * _mean_distance(a, b, same=False)
        - _mean_distance(a, a, same=True)
        - _mean_distance(b, b, same=True)
    )


# --- pretrained extractors -------------------------------------------------------------------
def clean_fid_inception(device) -> Extractor:
    """clean-fid's Inception (the TF-FID port) with its PIL-bicubic resize to 299 ("clean")."""
    from cleanfid.inception_torchscript import InceptionV3W
    from cleanfid.resize import build_resizer

    weights = clean_fid_inception_path()
    if not weights.is_file():
        raise MissingInput(
            f"FID needs clean-fid's Inception weights at {weights}; download {CLEAN_FID_URL} there"
        )
    # clean-fid's "clean" extractor, read from our cache (its own reads a fixed temp path).
    model = InceptionV3W(str(weights.parent), download=False).to(device).eval()
    resize = build_resizer("clean")
    return lambda images: model(_resized(images, resize).to(device))


def clean_fid_clip(device) -> Extractor:
    """clean-fid's CLIP ViT-B/32 extractor (``model_name="clip_vit_b_32"``)."""
    try:
        import clip  # noqa: F401  (clean-fid's CLIP features need OpenAI's package)
    except ImportError as error:
        raise ImportError(
            "CLIP-FID needs OpenAI's CLIP package: pip install openai-clip"
        ) from error
    cache = clip_weights_path()
    if not cache.is_file():
        raise MissingInput(f"CLIP-FID needs the CLIP ViT-B/32 weights at {cache}")
    from cleanfid.clip_features import CLIP_fx, img_preprocess_clip

    model = CLIP_fx("ViT-B/32", device=device)
    return lambda images: model(_resized(images, img_preprocess_clip).to(device))


def inception_logits(device) -> Extractor:
    """torchvision's Inception-v3 ImageNet logits of images resized to 299 (for the IS)."""
    from torchvision.models import inception_v3

    path = require_backbone_weights(INCEPTION_V3_URL, "the Inception score")
    model = inception_v3(weights=None, aux_logits=True, init_weights=False)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model = model.eval().to(device)
    return lambda images: model(imagenet_input(images, 299).to(device))


def vgg16_fc2(device) -> Extractor:
    """VGG-16 fc2 features (4096-d), the embedding of Kynkäänniemi et al.'s precision/recall."""
    from torchvision.models import vgg16

    path = require_backbone_weights(VGG16_URL, "precision / recall")
    model = vgg16()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model.classifier = model.classifier[:5]  # up to fc2 + ReLU
    model = model.eval().to(device)
    return lambda images: model(imagenet_input(images, 224).to(device))


def _resized(images: torch.Tensor, resize) -> torch.Tensor:
    arrays = [resize(image.permute(1, 2, 0).cpu().numpy()) for image in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
