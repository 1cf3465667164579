"""Held-out evaluation of an autoencoder: metrics (paper Table 2, App. E) and image grids."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from train.core.metrics import mean_std, psnr, ssim, to_unit, try_lpips

GRID_IMAGES = 8


@torch.no_grad()
def evaluate_autoencoder(
    model, dataset, limit: int, batch_size: int, device, lpips_module="auto"
) -> dict:
    """PSNR / SSIM / LPIPS (mean ± std over images), grid usage rate, key-code statistics.

    ``model`` is an unwrapped :class:`models.BRICSAutoencoder`, evaluated in eval mode (no
    key-code noise). ``lpips_module``: a module, None (skip), or "auto" (LPIPS-alex when
    its weights are cached). Two usage rates: ``usage_rate``, the fraction of grid entries
    hit by the held-out key codes averaged over groups and levels (ours), and
    ``key_value_usage_rate``, App. E / Fig. 3b's fraction of key-value slots hit at the finest
    resolution (floor(z r_max) and the next), averaged over code channels, with its histogram.
    """
    was_training = model.training
    model.eval()
    if lpips_module == "auto":
        lpips_module = try_lpips("alex", device)
    counts = key_hits = None
    scores = {"psnr": [], "ssim": [], "lpips": []}
    codes = []
    n = min(limit, len(dataset))
    for start in range(0, n, batch_size):
        images = torch.stack([dataset[i] for i in range(start, min(n, start + batch_size))]).to(
            device
        )
        out = model(images)
        rec = out.reconstruction.float()
        scores["psnr"].append(psnr(rec, images))
        scores["ssim"].append(ssim(rec, images))
        if lpips_module is not None:
            scores["lpips"].append(lpips_module.per_image(rec.clamp(-1, 1), images))
        codes.append(out.key_code.float().cpu())
        counts = model.grid_hit_counts(out.key_code, counts)
        key_hits = model.key_value_hits(out.key_code, key_hits)
    model.train(was_training)
    code = torch.cat(codes)
    rates = model.grid_usage_rate(counts)
    metrics = {name: mean_std(torch.cat(v).cpu()) for name, v in scores.items() if v}
    metrics.update(
        {
            "lpips_available": lpips_module is not None,
            "images": n,
            "data_range": "PSNR and SSIM on images in [0, 1], data range 1",
            "usage_rate": rates.mean().item(),
            "usage_rate_per_level": rates.mean(dim=0).tolist(),
            "key_value_usage_rate": model.key_value_usage_rate(key_hits).mean().item(),
            "key_value_histogram": key_hits.tolist(),
            "key_code_min": code.min().item(),
            "key_code_max": code.max().item(),
            "key_code_mean": code.mean().item(),
            "key_code_variance": code.var().item(),
        }
    )
    return metrics


@torch.no_grad()
def save_reconstruction_grid(model, dataset, path: Path, device, count: int = GRID_IMAGES) -> None:
    """PNG of ``count`` evenly spaced held-out images (top row) above their reconstructions."""
    was_training = model.training
    model.eval()
    picks = torch.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().long().tolist()
    images = torch.stack([dataset[i] for i in picks]).to(device)
    rec = model(images).reconstruction.float()
    model.train(was_training)
    save_image_grid(torch.cat([images, rec]), path, columns=len(images))


def save_image_grid(images: torch.Tensor, path: Path, columns: int) -> None:
    """PNG of images (N, 3, H, W) in [-1, 1], ``columns`` per row (the last row padded black)."""
    n, _, h, w = images.shape
    rows = -(-n // columns)
    canvas = torch.zeros(3, rows * h, columns * w)
    for i, image in enumerate(to_unit(images.detach().float().cpu())):
        r, c = divmod(i, columns)
        canvas[:, r * h : (r + 1) * h, c * w : (c + 1) * w] = image
    array = (canvas * 255).round().byte().permute(1, 2, 0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_metrics(run_dir: Path, step: int, metrics: dict) -> dict[str, float]:
    """Append ``metrics`` of ``step`` to ``metrics.jsonl``, write them as ``metrics.json`` and
    print a summary; returns the scalars (means of mean ± std entries) under ``eval/`` names."""
    record = {"step": step, **metrics}
    psnr_db, ssim_index = metrics["psnr"]["mean"], metrics["ssim"]["mean"]
    tqdm.write(
        f"step {step}: PSNR {psnr_db:.2f} dB, SSIM {ssim_index:.3f}, "
        f"usage {metrics['usage_rate']:.3f} (grid levels), "
        f"{metrics['key_value_usage_rate']:.3f} (key values, App. E)",
        file=sys.stdout,
    )
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    (run_dir / "metrics.json").write_text(json.dumps(record, indent=2))
    return {
        f"eval/{k}": v["mean"] if isinstance(v, dict) else v
        for k, v in metrics.items()
        if isinstance(v, (int, float, dict)) and (not isinstance(v, dict) or "mean" in v)
    }
