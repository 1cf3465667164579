"""Evaluate a trained BRICS autoencoder on a dataset split (paper Table 2).

    python train/eval_ae.py --checkpoint runs/ae/checkpoints/step_00000600
    python train/eval_ae.py --checkpoint runs/ae --data /data/church --split val --out church.json

Writes a JSON of PSNR / SSIM / LPIPS (mean ± std over images; LPIPS when its weights are
cached), the two grid usage rates (grid levels; App. E's key values) and key-code
statistics, and a PNG of inputs above their reconstructions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # models/ and train/ of this checkout

from models import BRICSAutoencoder
from train.core.checkpoint import find_autoencoder
from train.core.data import build_dataset
from train.core.evaluation import evaluate_autoencoder, save_reconstruction_grid
from train.core.options import add_device_arguments, exits_on_user_error


@exits_on_user_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        help="checkpoint folder, run folder (latest checkpoint) or save_pretrained folder",
    )
    parser.add_argument("--data", default="embedded", help="'embedded', an image folder or an LMDB")
    parser.add_argument("--split", default="val", choices=("train", "val"), help="dataset split")
    parser.add_argument("--limit", type=int, default=0, help="images to evaluate (0: all)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per batch")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="metrics JSON (default: eval_<split>.json beside the model)",
    )
    add_device_arguments(parser, grid_backend=True)
    args = parser.parse_args(argv)
    if args.limit < 0 or args.batch_size < 1:
        parser.error(
            f"--limit must be >= 0 and --batch-size >= 1, got {args.limit}, {args.batch_size}"
        )

    model_dir = find_autoencoder(args.checkpoint)
    model = BRICSAutoencoder.from_pretrained(
        model_dir, grid_backend=args.grid_backend, device=args.device
    )
    dataset = build_dataset(args.data, args.split, model.config.image_size)
    limit = args.limit or len(dataset)
    metrics = evaluate_autoencoder(model, dataset, limit, args.batch_size, args.device)
    out = args.out or model_dir.parent / f"eval_{args.split}.json"
    grid = out.with_suffix(".png")
    save_reconstruction_grid(model, dataset, grid, args.device)
    metrics.update(
        {"checkpoint": str(model_dir), "data": args.data, "split": args.split, "grid": str(grid)}
    )
    out.write_text(json.dumps(metrics, indent=2))
    lpips = metrics.get("lpips")
    lpips_text = (
        "n/a (weights not cached)" if lpips is None else f"{lpips['mean']:.4f} ± {lpips['std']:.4f}"
    )
    print(
        f"PSNR {metrics['psnr']['mean']:.2f} ± {metrics['psnr']['std']:.2f} dB, "
        f"SSIM {metrics['ssim']['mean']:.4f} ± {metrics['ssim']['std']:.4f}, LPIPS {lpips_text}, "
        f"usage {metrics['usage_rate']:.3f} (grid levels) / "
        f"{metrics['key_value_usage_rate']:.3f} (key values, App. E) "
        f"over {metrics['images']} images"
    )
    print(f"wrote {out} and {grid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
