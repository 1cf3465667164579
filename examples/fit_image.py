"""Fit a photograph with a hashed multi-resolution grid and a tiny MLP (Instant-NGP style).

    python examples/fit_image.py                       # scikit-image's astronaut, CPU or GPU
    python examples/fit_image.py --image my.png --steps 2000

A ``MultiResGrid(in_dim=2)`` maps pixel coordinates to 32 features, a 2-layer MLP maps
those to RGB. Prints the PSNR of the whole image as training goes and writes the
reconstruction beside the original as a PNG.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # train/ of this checkout

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from gridcodes import MultiResGrid
from train.core.metrics import psnr


def load_image(path: str | None) -> torch.Tensor:
    """(H, W, 3) float32 in [0, 1]."""
    if path is None:
        from skimage import data

        array = data.astronaut()
    else:
        array = np.asarray(Image.open(path).convert("RGB"))
    return torch.from_numpy(array).float() / 255.0


def pixel_coords(height: int, width: int) -> torch.Tensor:
    """(H*W, 1, 2) pixel centres in [0, 1]: one group of 2-D points."""
    ys = (torch.arange(height) + 0.5) / height
    xs = (torch.arange(width) + 0.5) / width
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)
    return grid.reshape(-1, 1, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default=None, help="RGB image to fit (default: astronaut)")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps")
    parser.add_argument("--batch", type=int, default=2**14, help="random pixels per step")
    parser.add_argument("--log2-table-size", type=int, default=16, help="T = 2**this")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("fit_image.png"), help="PNG of original | reconstruction"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args()
    if args.steps < 1 or args.batch < 1:
        parser.error(f"--steps and --batch must be positive, got {args.steps}, {args.batch}")

    torch.manual_seed(args.seed)
    image = load_image(args.image).to(args.device)
    height, width, _ = image.shape
    coords = pixel_coords(height, width).to(args.device)
    colors = image.reshape(-1, 3)

    grid = MultiResGrid(
        2,
        n_levels=16,
        n_features=2,
        log2_table_size=args.log2_table_size,
        base_resolution=16,
        max_resolution=max(height, width),
    ).to(args.device)
    mlp = nn.Sequential(nn.Linear(grid.out_features, 64), nn.ReLU(), nn.Linear(64, 3)).to(
        args.device
    )
    model = lambda x: mlp(grid(x).flatten(1))
    optimizer = torch.optim.Adam(
        [{"params": grid.parameters(), "eps": 1e-15}, {"params": mlp.parameters()}], lr=1e-2
    )
    print(grid)

    def render() -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([model(c) for c in coords.split(2**16)]).reshape(height, width, 3)

    progress = tqdm(range(args.steps), desc="fit")
    for step in progress:
        index = torch.randint(0, coords.shape[0], (args.batch,), device=args.device)
        loss = torch.mean((model(coords[index]) - colors[index]) ** 2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        progress.set_postfix(mse=f"{loss.item():.2e}")
        if (step + 1) % max(1, args.steps // 5) == 0:
            score = psnr(render()[None], image[None], (0, 1)).item()
            tqdm.write(f"step {step + 1}: PSNR {score:.2f} dB")

    result = render()
    side_by_side = torch.cat([image, result.clamp(0, 1)], dim=1)
    Image.fromarray((side_by_side * 255).round().byte().cpu().numpy()).save(args.out)
    score = psnr(result[None], image[None], (0, 1)).item()
    print(f"PSNR {score:.2f} dB (data range 1); wrote {args.out}")


if __name__ == "__main__":
    main()
