"""Generate images with a stage-2 diffusion model's EMA weights and the stage-1 decoder.

    python train/sample.py --run runs/diffusion --n 64 --sampler dpm-solver++ --steps 20 --seed 0
    python train/sample.py --run runs/diffusion --n 50000 --sampler ddpm --steps 1000  # paper

The paper names no sampler; the authors' evaluation script samples with Imagen's 1000-step
ancestral sampler, x_0 clipped to [-1, 1] at every step (``--clip-x0``, on by default).

Writes ``--n`` PNGs (``000000.png`` ...) to ``--out``, a grid of them and their key codes
(``<out>_codes.safetensors``, for ``train/eval_gen.py --codes``) beside the folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # models/ and train/ of this checkout

from PIL import Image
from safetensors.torch import save_file

from models import BRICSAutoencoder
from models.diffusion import KeyCodePipeline
from models.errors import MissingInput
from models.persistence import is_saved_model
from models.samplers import SAMPLERS
from models.schedules import get_schedule
from models.unet import UNet
from train.core.checkpoint import find_autoencoder, latest_checkpoint
from train.core.evaluation import save_image_grid
from train.core.metrics import to_unit
from train.core.options import add_device_arguments, exits_on_user_error, parse_bool


def find_diffusion_checkpoint(path: Path) -> Path:
    if is_saved_model(path / "ema"):
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise MissingInput(f"no diffusion checkpoint under {path}")
    return latest


@exits_on_user_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--run", type=Path, required=True, help="diffusion run or checkpoint folder"
    )
    parser.add_argument(
        "--ae",
        type=Path,
        default=None,
        help="stage-1 autoencoder (default: the one the diffusion model was trained on)",
    )
    parser.add_argument("--n", type=int, default=64, help="number of images")
    parser.add_argument("--sampler", default="dpm-solver++", choices=SAMPLERS, help="sampler")
    parser.add_argument(
        "--steps",
        type=int,
        default=20,
        help="sampler steps (the authors' evaluation: 1000 ancestral 'ddpm' steps)",
    )
    parser.add_argument(
        "--clip-x0",
        type=parse_bool,
        default=True,
        help="clip each step's x_0 prediction to [-1, 1] (true/false; the authors: true)",
    )
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0: deterministic)")
    parser.add_argument(
        "--order",
        type=int,
        default=2,
        choices=(2, 3),
        help="DPM-Solver++ order: 2 (2M) or 3 (3M, more accurate from ~20 steps; docs/fidelity.md)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the initial noise")
    parser.add_argument("--batch-size", type=int, default=64, help="samples per batch")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: <run>/samples_<sampler>[3m]_<steps>_seed<seed>)",
    )
    add_device_arguments(parser, grid_backend=True)
    args = parser.parse_args(argv)
    if args.n < 1 or args.steps < 1 or args.batch_size < 1:
        parser.error(
            "--n, --steps and --batch-size must be >= 1, "
            f"got {args.n}, {args.steps}, {args.batch_size}"
        )

    ckpt = find_diffusion_checkpoint(args.run)
    options = json.loads((ckpt / "options.json").read_text())
    unet = UNet.from_pretrained(ckpt / "ema", device=args.device).eval()
    ae_dir = find_autoencoder(args.ae or Path(options["autoencoder"]))
    autoencoder = BRICSAutoencoder.from_pretrained(
        ae_dir, grid_backend=args.grid_backend, device=args.device
    ).eval()
    if (autoencoder.config.code_channels, autoencoder.config.code_size) != (
        unet.config.code_channels,
        unet.config.code_size,
    ):
        parser.error(
            f"the autoencoder's codes {autoencoder.config.code_channels}x"
            f"{autoencoder.config.code_size}^2 do not match the UNet's"
        )
    pipeline = KeyCodePipeline(unet, autoencoder, get_schedule(options["schedule"]))
    codes = pipeline.sample_codes(
        args.n,
        args.sampler,
        args.steps,
        args.seed,
        args.eta,
        args.batch_size,
        args.clip_x0,
        args.order,
    )
    images = pipeline.decode(codes, args.batch_size)
    name = args.sampler + ("3m" if args.sampler == "dpm-solver++" and args.order == 3 else "")
    out = args.out or ckpt.parent.parent / f"samples_{name}_{args.steps}_seed{args.seed}"
    out.mkdir(parents=True, exist_ok=True)
    save_file({"codes": codes.cpu().contiguous()}, out.with_name(out.name + "_codes.safetensors"))
    for i, image in enumerate(to_unit(images)):
        array = (image * 255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(array).save(out / f"{i:06d}.png")
    grid = out.with_suffix(".png")
    save_image_grid(images[:64], grid, columns=8)
    print(
        f"wrote {args.n} images to {out}, their key codes to {out.name}_codes.safetensors "
        f"and a grid to {grid}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
