"""Generation-metric arithmetic on random-weight features, and the missing-weights errors;
the offline metrics (sliced Wasserstein on pyramid patches, energy distance) on real photos."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.errors import UserError
from train.core import gen_metrics
from train.core.data import EmbeddedPhotos
from train.eval_gen import build_extractors


def random_features(n: int = 300, d: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(d, d, generator=generator)
    return torch.randn(n, d, generator=generator) @ mixing


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    a = random_features()
    assert gen_metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # Same covariance, mean shifted by 1 in every one of 16 dimensions: FID = 16.
    assert gen_metrics.frechet_distance(a, a + 1.0) == pytest.approx(16.0, rel=1e-6)
    b = random_features(seed=1)
    assert gen_metrics.frechet_distance(a, b) > 1.0


def test_fid_with_random_weight_networks():
    # A random convolutional "extractor" in place of Inception: identical sets give ~0.
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten()
    )
    images = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8)
    extractor = lambda x: net(x.float() / 255)
    features = gen_metrics.extract(extractor, images, batch_size=10)
    assert features.shape == (64, 32)
    assert gen_metrics.frechet_distance(features, features) == pytest.approx(0.0, abs=1e-5)


def test_precision_and_recall():
    real = random_features()
    assert gen_metrics.precision_recall(real, real.clone(), k=3) == (1.0, 1.0)
    far = real + 1000.0
    assert gen_metrics.precision_recall(real, far, k=3) == (0.0, 0.0)
    # fakes collapsed onto the first 10 real points: every fake is real-looking (precision 1),
    # but they cover only a small part of the real manifold (low recall)
    collapsed = real[:10].repeat(30, 1)
    precision, recall = gen_metrics.precision_recall(real, collapsed, k=3)
    assert precision == 1.0 and recall < 0.2


def test_inception_score():
    uniform = torch.zeros(100, 10)
    assert gen_metrics.inception_score(uniform, splits=5) == pytest.approx((1.0, 0.0))
    confident = torch.full((100, 10), -1e4)
    confident[torch.arange(100), torch.arange(100) % 10] = 0.0  # each class equally often
    mean, _ = gen_metrics.inception_score(confident, splits=5)
    assert mean == pytest.approx(10.0, rel=1e-6)


def test_nearest_neighbours():
    references = torch.arange(10.0).view(10, 1, 1, 1).expand(10, 3, 2, 2)
    samples = torch.tensor([2.2, 7.9]).view(2, 1, 1, 1).expand(2, 3, 2, 2)
    distance = lambda a, b: (a - b).abs().flatten(1).mean(1)
    index = gen_metrics.nearest_neighbours(samples, references, distance, k=2, batch_size=3)
    assert index.tolist() == [[2, 3], [8, 7]]


def test_missing_weights_stop_with_their_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError) as error:  # printed as one line by the entry point
        build_extractors(["is", "precision-recall", "neighbours"], "cpu")
    message = str(error.value)
    for name in (
        "inception_v3_google-0cc3c7bd.pth",
        "vgg16-397923af.pth",
        "alexnet-owt-7be5be79.pth",
    ):
        assert str(tmp_path / "hub" / "checkpoints" / name) in message


def test_eval_gen_computes_every_metric_with_random_weight_networks(tmp_path):
    from models.losses import LPIPSLoss
    from train.eval_gen import METRICS, compute

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten()
    )
    features = lambda x: net(x.float() / 255)
    extractors = {
        "fid": features,
        "clip-fid": features,
        "is": features,
        "precision-recall": features,
        "neighbours": LPIPSLoss("alex", pretrained=False),
    }
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8)
    results = compute(list(METRICS), extractors, images, images.clone(), tmp_path / "nn.png", "cpu")
    assert results["fid"] == pytest.approx(0.0, abs=1e-4)
    assert results["clip_fid"] == pytest.approx(0.0, abs=1e-4)
    assert results["precision"] == results["recall"] == 1.0
    assert results["inception_score"]["mean"] >= 1.0
    assert (tmp_path / "nn.png").is_file()
    assert results["swd"] == {"levels": {"32": 0.0, "16": 0.0}, "mean": 0.0}


# --- offline metrics -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """The embedded validation patches as uint8 (184, 3, 64, 64)."""
    return to_uint8(EmbeddedPhotos("val", 64).patches)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).byte()


def blurred(images: torch.Tensor, sigma: float) -> torch.Tensor:
    from torchvision.transforms.functional import gaussian_blur

    size = 2 * math.ceil(3 * sigma) + 1
    return gaussian_blur(images.float(), [size, size], [sigma, sigma]).round().byte()


def noised(images: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    noise = std * torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    return (images.float() + noise).round().clamp(0, 255).byte()


def test_laplacian_pyramid_matches_progan_and_reconstructs():
    from scipy.ndimage import convolve

    images = to_uint8(EmbeddedPhotos("val", 32).patches[:4])
    # ProGAN's metrics/sliced_wasserstein.py: pyr_down / pyr_up with scipy, mode "mirror"
    kernel = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]).astype(np.float32)[None, None] / 256

    def pyr_up(x):
        up = np.zeros((*x.shape[:2], 2 * x.shape[2], 2 * x.shape[3]), np.float32)
        up[:, :, ::2, ::2] = x
        return convolve(up, kernel * 4, mode="mirror")

    expected = [images.numpy().astype(np.float32)]
    for _ in range(2):
        expected.append(convolve(expected[-1], kernel, mode="mirror")[:, :, ::2, ::2])
        expected[-2] = expected[-2] - pyr_up(expected[-1])
    pyramid = gen_metrics.laplacian_pyramid(images, 3)
    assert [tuple(level.shape[-2:]) for level in pyramid] == [(32, 32), (16, 16), (8, 8)]
    for level, reference in zip(pyramid, expected):
        np.testing.assert_allclose(level.numpy(), reference, atol=1e-3)
    image = pyramid[2]
    for level in (pyramid[1], pyramid[0]):
        image = level + gen_metrics._pyramid_up(image)
    torch.testing.assert_close(image, images.float(), atol=1e-3, rtol=0)
    assert gen_metrics.swd_resolutions(64, 64) == [64, 32, 16]
    assert gen_metrics.swd_resolutions(256, 256) == [256, 128, 64, 32, 16]


@pytest.fixture(scope="module")
def degraded_swd(photos) -> dict:
    """SWD of the photos against blurred (sigma px) and noised (std grey levels) copies."""
    return {
        "blur": {
            s: gen_metrics.sliced_wasserstein(photos, blurred(photos, s)) for s in (0.5, 1, 2)
        },
        "noise": {
            s: gen_metrics.sliced_wasserstein(photos, noised(photos, s)) for s in (4, 16, 48)
        },
    }


def test_swd_of_a_set_with_itself_is_zero(photos, degraded_swd):
    same = gen_metrics.sliced_wasserstein(photos, photos.clone())
    assert same == {"levels": {"64": 0.0, "32": 0.0, "16": 0.0}, "mean": 0.0}
    assert degraded_swd["noise"][4]["mean"] > 10  # x 1e3 scale; measured 58.8


@pytest.mark.parametrize("degradation", ["blur", "noise"])
def test_swd_grows_monotonically_with_blur_and_noise(degraded_swd, degradation):
    results = list(degraded_swd[degradation].values())  # increasing sigma / std
    for key in ("64", "32", "16"):  # every level, the residual 16 included
        values = [r["levels"][key] for r in results]
        assert values == sorted(values) and len(set(values)) == 3, (key, values)
    means = [r["mean"] for r in results]
    assert means == sorted(means) and len(set(means)) == 3
    for r in results:
        assert r["mean"] == pytest.approx(np.mean(list(r["levels"].values())))


def test_swd_is_deterministic_per_seed(photos):
    a, b = photos[:48], noised(photos[:32], 16)  # different counts: the larger is subsampled
    swd = lambda seed: gen_metrics.sliced_wasserstein(a, b, projections=128, seed=seed)
    first = swd(3)
    assert swd(3) == first
    other = swd(4)
    assert other != first
    assert other["mean"] == pytest.approx(first["mean"], rel=0.1)
    with pytest.raises(TypeError):
        gen_metrics.sliced_wasserstein(a.float(), b)


def test_energy_distance():
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(500, 16, generator=generator) for _ in range(2))
    shifted = [gen_metrics.energy_distance(a, b + shift) for shift in (0.25, 0.5, 1.0, 2.0)]
    assert shifted == sorted(shifted)
    # same distribution: 0 in expectation (U-statistic), tiny against a 0.25-per-dim shift
    assert abs(gen_metrics.energy_distance(a, b)) < 0.05 * shifted[0]
    # two point masses at distance d: 2 E|X - Y| = 2d, both within-set terms 0
    x, y = torch.randn(2, 8, generator=generator)
    d = (x - y).norm().item()
    points = gen_metrics.energy_distance(x.expand(5, 8), y.expand(7, 8))
    assert points == pytest.approx(2 * d, rel=1e-6)
    # U-statistic: {0, 1} against itself gives 2 * 0.5 - 1 - 1 = -1 (a V-statistic: 0)
    pair = torch.tensor([[0.0], [1.0]])
    assert gen_metrics.energy_distance(pair, pair) == pytest.approx(-1.0)


def test_eval_gen_swd_and_energy_distance_offline(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from train.eval_gen import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-weights"))
    assert build_extractors(["swd"], "cpu") == {}  # nothing to download
    references = to_uint8(EmbeddedPhotos("val", 64).patches[:24])
    for name, images in (("copies", references), ("noised", noised(references, 32))):
        folder = tmp_path / name
        folder.mkdir()
        for i, image in enumerate(images):
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:06d}.png")
    codes = torch.rand(30, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.save(codes, tmp_path / "codes.pt")
    save_file({"codes": codes[:20] + 0.5}, str(tmp_path / "reference.safetensors"))
    common = ["--data", "embedded", "--split", "val", "--limit", "24", "--metrics", "swd"]
    common += ["--device", "cpu"]
    assert (
        main(["--samples", str(tmp_path / "copies"), "--out", str(tmp_path / "a.json"), *common])
        == 0
    )
    copies = json.loads((tmp_path / "a.json").read_text())
    assert copies["samples"] == copies["references"] == 24
    assert copies["swd"] == {"levels": {"64": 0.0, "32": 0.0, "16": 0.0}, "mean": 0.0}
    codes_args = ["--codes", str(tmp_path / "codes.pt")]
    codes_args += ["--reference-codes", str(tmp_path / "reference.safetensors")]
    out = tmp_path / "b.json"
    assert (
        main(["--samples", str(tmp_path / "noised"), "--out", str(out), *common, *codes_args]) == 0
    )
    noisy = json.loads(out.read_text())
    assert min(noisy["swd"]["levels"].values()) > 0 and noisy["swd"]["mean"] > 10, noisy["swd"]
    expected = gen_metrics.energy_distance(codes.flatten(1), codes[:20].flatten(1) + 0.5)
    assert noisy["energy_distance"] == pytest.approx(expected)
    assert expected > 1.0
    with pytest.raises(SystemExit):
        main(["--samples", str(tmp_path / "noised"), "--codes", str(tmp_path / "codes.pt")])


def test_weights_are_read_from_the_user_cache_and_checked_against_their_hash(tmp_path, monkeypatch):
    """A file planted at clean-fid's shared temp path is never loaded: FID reads the per-user
    torch cache; a torchvision file whose SHA-256 does not start with the digits in its name
    is refused in one line naming it and the expected digits."""
    from models.backbones import VGG16_URL, backbone_weights_path, require_backbone_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    planted = Path("/tmp/inception-2015-12-05.pt")  # clean-fid's own fixed path
    if planted.exists():
        pytest.skip(f"{planted} exists on this machine; not overwriting it")
    planted.write_bytes(b"planted: must never be loaded")
    try:
        cache = tmp_path / "home" / "hub" / "checkpoints"
        with pytest.raises(FileNotFoundError, match=str(cache)):
            gen_metrics.clean_fid_inception("cpu")
    finally:
        planted.unlink()
    forged = backbone_weights_path(VGG16_URL)
    forged.parent.mkdir(parents=True)
    forged.write_bytes(b"not the published weights")
    with pytest.raises(
        ValueError, match=r"vgg16-397923af\.pth has SHA-256 [0-9a-f]{64}, .*397923af"
    ):
        require_backbone_weights(VGG16_URL, "precision / recall")
