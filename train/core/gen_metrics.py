"""Generation metrics (paper Tables 4-5, App. F; SPEC §4).

- FID and CLIP-FID: Fréchet distance of clean-fid's Inception (``mode="clean"``) or CLIP
  ViT-B/32 (``model_name="clip_vit_b_32"``) features.
- Inception score (Salimans et al. 2016) from torchvision's Inception-v3 logits.
- Precision / recall (Kynkäänniemi et al. 2019, k = 3) on VGG-16 fc2 features.
- Nearest training neighbours of samples by LPIPS.

The metric arithmetic takes features or logits, so it is tested with random-weight
networks; the extractors load pretrained weights and name the missing file when absent.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
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


# --- pretrained extractors -------------------------------------------------------------------
def clean_fid_inception(device) -> Extractor:
    """clean-fid's Inception (the TF-FID port) with its PIL-bicubic resize to 299 ("clean")."""
    from cleanfid.features import build_feature_extractor
    from cleanfid.resize import build_resizer

    weights = clean_fid_inception_path()
    if not weights.is_file():
        raise FileNotFoundError(
            f"FID needs clean-fid's Inception weights at {weights}; download {CLEAN_FID_URL} there"
        )
    model = build_feature_extractor("clean", device=torch.device(device), use_dataparallel=False)
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
        raise FileNotFoundError(f"CLIP-FID needs the CLIP ViT-B/32 weights at {cache}")
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
