"""Generation-metric arithmetic on random-weight features, and the missing-weights errors."""

import pytest
import torch

from train.core import gen_metrics
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
    with pytest.raises(SystemExit) as error:
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
