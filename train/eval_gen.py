"""Generation metrics of a folder of samples against a dataset (paper Tables 4-5).

    python train/eval_gen.py --samples runs/diffusion/samples_dpm-solver++_20_seed0 --data embedded

Computes FID and CLIP-FID (clean-fid), the Inception score, precision / recall (k = 3), a
grid of each sample's nearest training images by LPIPS, and the sliced Wasserstein distance
of Laplacian-pyramid patches (ProGAN's SWD, x 1e3; no network weights); writes a JSON and a
PNG. Every requested metric's pretrained weights are checked first: a missing file stops the
run with its path, never a silent zero. ``--metrics`` selects a subset; ``--metrics swd``
runs offline. With ``--codes`` and ``--reference-codes`` it also reports the energy distance
of sampled key codes to the held-out codes (also offline).
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # models/ and train/ of this checkout

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file

from models.errors import MissingInput, UserError
from models.losses import LPIPSLoss
from train.core import gen_metrics
from train.core.data import IMAGE_EXTENSIONS, build_dataset
from train.core.evaluation import save_image_grid
from train.core.metrics import to_uint8
from train.core.options import add_device_arguments, exits_on_user_error

METRICS = ("fid", "clip-fid", "is", "precision-recall", "neighbours", "swd")
OFFLINE = ("swd",)  # metrics that need no pretrained network


def load_samples(folder: Path, limit: int) -> torch.Tensor:
    """uint8 images (N, 3, H, W) of a folder of generated images."""
    if not folder.is_dir():
        raise MissingInput(f"--samples {folder} is not a folder")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)[
        : limit or None
    ]
    if not paths:
        raise MissingInput(f"no images in {folder}")
    arrays = []
    for path in paths:
        try:
            with Image.open(path) as image:
                arrays.append(np.asarray(image.convert("RGB")))
        except (OSError, SyntaxError, ValueError) as error:  # what PIL raises for bad files
            raise UserError(f"{path} is not a readable image: {error}") from None
    if len({a.shape for a in arrays}) > 1:
        raise UserError(
            f"the images in {folder} differ in size: {sorted({a.shape for a in arrays})}"
        )
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def load_references(data: str, split: str, size: int, limit: int) -> torch.Tensor:
    dataset = build_dataset(data, split, size)
    count = min(limit or len(dataset), len(dataset))
    images = torch.stack([dataset[i] for i in range(count)])
    return to_uint8(images)


def load_codes(path: Path) -> torch.Tensor:
    """Key codes (N, ...) of a .safetensors file (its tensor "codes", as in the code cache of
    train/core/codes.py, or its only tensor) or of a .pt file (a tensor or a dict with "codes")."""
    if not path.is_file():
        raise MissingInput(f"codes file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            tensors = load_file(str(path))
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
            tensors = loaded if isinstance(loaded, dict) else {"codes": loaded}
    except (OSError, RuntimeError, SafetensorError, pickle.UnpicklingError) as error:
        raise UserError(f"codes file {path} is unreadable: {error}") from None
    if "codes" in tensors:
        return tensors["codes"]
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    raise UserError(f"{path} holds {sorted(tensors)}, none named 'codes'")


def build_extractors(metrics: list[str], device) -> dict:
    """Pretrained networks of the requested metrics; all missing weights reported at once."""
    builders = {
        "fid": gen_metrics.clean_fid_inception,
        "clip-fid": gen_metrics.clean_fid_clip,
        "is": gen_metrics.inception_logits,
        "precision-recall": gen_metrics.vgg16_fc2,
        "neighbours": lambda d: LPIPSLoss("alex", pretrained=True).to(d),
    }
    extractors, missing = {}, []
    for name in metrics:
        if name in OFFLINE:
            continue
        try:
            extractors[name] = builders[name](device)
        except (UserError, ImportError) as error:  # weights absent or altered, a package
            missing.append(f"{name}: {error}")
    if missing:
        raise UserError("cannot compute the requested metrics: " + "; ".join(missing))
    return extractors


def compute(
    metrics: list[str],
    extractors: dict,
    samples: torch.Tensor,
    references: torch.Tensor,
    grid_path: Path,
    device,
) -> dict:
    results: dict = {"samples": len(samples), "references": len(references)}
    if "fid" in metrics:
        fid = extractors["fid"]
        results["fid"] = gen_metrics.frechet_distance(
            gen_metrics.extract(fid, samples), gen_metrics.extract(fid, references)
        )
    if "clip-fid" in metrics:
        clip = extractors["clip-fid"]
        results["clip_fid"] = gen_metrics.frechet_distance(
            gen_metrics.extract(clip, samples), gen_metrics.extract(clip, references)
        )
    if "is" in metrics:
        mean, std = gen_metrics.inception_score(gen_metrics.extract(extractors["is"], samples))
        results["inception_score"] = {"mean": mean, "std": std}
    if "precision-recall" in metrics:
        vgg = extractors["precision-recall"]
        precision, recall = gen_metrics.precision_recall(
            gen_metrics.extract(vgg, references), gen_metrics.extract(vgg, samples), k=3
        )
        results.update({"precision": precision, "recall": recall})
    if "neighbours" in metrics:
        lpips = extractors["neighbours"]
        to_signed = lambda x: x.float().to(device) / 127.5 - 1
        shown = samples[:8]
        size = shown.shape[-1]
        refs = (
            references
            if references.shape[-1] == size
            else torch.nn.functional.interpolate(
                references.float(), size=(size, size), mode="bilinear", antialias=True
            )
            .round()
            .clamp(0, 255)
            .byte()
        )
        index = gen_metrics.nearest_neighbours(
            to_signed(shown), to_signed(refs), lpips.per_image, k=4
        )
        rows = [torch.cat([to_signed(s)[None], to_signed(refs[i])]) for s, i in zip(shown, index)]
        save_image_grid(torch.cat(rows), grid_path, columns=5)
        results["neighbours_grid"] = str(grid_path)
    if "swd" in metrics:  # ProGAN's SWD x 1e3 per pyramid level and their mean
        results["swd"] = gen_metrics.sliced_wasserstein(samples, references)
    return results


@exits_on_user_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=Path, required=True, help="folder of generated images")
    parser.add_argument(
        "--data", default="embedded", help="reference data: 'embedded', a folder or an LMDB"
    )
    parser.add_argument(
        "--split", default="train", choices=("train", "val"), help="reference split"
    )
    parser.add_argument("--limit", type=int, default=0, help="images per set (0: all)")
    parser.add_argument(
        "--metrics", nargs="+", default=list(METRICS), choices=METRICS, help="metrics to compute"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="metrics JSON (default: <samples>_metrics.json)"
    )
    parser.add_argument(
        "--codes",
        type=Path,
        default=None,
        help="sampled key codes (N, Cz, Hz, Wz) in [0, 1], a .safetensors ('codes' tensor) or "
        ".pt file (train/sample.py writes <samples>_codes.safetensors); with "
        "--reference-codes, adds their energy distance (Euclidean, U-statistic, flattened "
        "codes) to the results",
    )
    parser.add_argument(
        "--reference-codes",
        type=Path,
        default=None,
        help="held-out key codes to compare --codes with, same format, e.g. a code cache "
        "written by train.core.codes.load_or_encode for the val split",
    )
    add_device_arguments(parser, grid_backend=False)
    args = parser.parse_args(argv)
    if (args.codes is None) != (args.reference_codes is None):
        parser.error("--codes and --reference-codes go together")
    extractors = build_extractors(args.metrics, args.device)  # before any slow work
    codes = (
        None if args.codes is None else (load_codes(args.codes), load_codes(args.reference_codes))
    )
    samples = load_samples(args.samples, args.limit)
    references = load_references(args.data, args.split, samples.shape[-1], args.limit)
    out = args.out or args.samples.with_name(args.samples.name + "_metrics.json")
    results = compute(
        args.metrics, extractors, samples, references, out.with_suffix(".png"), args.device
    )
    if codes is not None:
        results["energy_distance"] = gen_metrics.energy_distance(*codes)
        results.update({"codes": str(args.codes), "reference_codes": str(args.reference_codes)})
    results.update({"samples_folder": str(args.samples), "data": args.data, "split": args.split})
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
