"""tiny-cuda-nn's "MLP learning an image" sample as a tinycudann client would write it, run on
gridcodes: the only tcnn-specific line is the import.

    python examples/mlp_learning_an_image.py                     # a generated image
    python examples/mlp_learning_an_image.py --image photo.png --steps 2000 --out fit.png

The model is tcnn's sample model: ``tcnn.NetworkWithInputEncoding`` with tcnn's
``config_hash.json`` (a 16-level HashGrid, 2 features per level, T = 2**15, and a
FullyFusedMLP of width 64 with 2 hidden layers), trained with Adam on tcnn's relative L2
loss at random image positions. Differences from tcnn's script, all mechanical: the device
is chosen here, the image is generated unless ``--image`` is given, and the step count and
batch are flags (tcnn's: 10,000,000 steps of 2**18 points).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

import gridcodes.tcnn as tcnn  # the one line: instead of ``import tinycudann as tcnn``

CONFIG = {  # tiny-cuda-nn's data/config_hash.json (its loss and optimizer are set below)
    "encoding": {
        "otype": "HashGrid",
        "n_levels": 16,
        "n_features_per_level": 2,
        "log2_hashmap_size": 15,
        "base_resolution": 16,
        "per_level_scale": 1.5,
        "fixed_point_pos": False,
    },
    "network": {
        "otype": "FullyFusedMLP",
        "activation": "ReLU",
        "output_activation": "None",
        "n_neurons": 64,
        "n_hidden_layers": 2,
    },
}


def generated_image(size: int) -> torch.Tensor:
    """(size, size, 3) in [0, 1]: rings, stripes and a smooth gradient, detail at every scale."""
    t = torch.linspace(0, 1, size)
    y, x = torch.meshgrid(t, t, indexing="ij")
    r = torch.sqrt((x - 0.4) ** 2 + (y - 0.55) ** 2)
    red = 0.5 + 0.5 * torch.cos(40 * r**1.5)
    green = 0.5 + 0.5 * torch.sin(12 * math.pi * x * (1 + y))
    blue = (x + y) / 2
    return torch.stack([red, green, blue], dim=-1)


def load_image(path: str | None, size: int) -> torch.Tensor:
    if path is None:
        return generated_image(size)
    from PIL import Image

    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"))).float() / 255


class BilinearImage(torch.nn.Module):
    """The image as a function of (x, y) in [0, 1]^2, bilinearly interpolated."""

    def __init__(self, data: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("data", data)

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        height, width = self.data.shape[:2]
        pos = xy * torch.tensor([width, height], device=xy.device, dtype=xy.dtype)
        corner = pos.long()
        frac = pos - corner
        x0 = corner[:, 0].clamp(0, width - 1)
        y0 = corner[:, 1].clamp(0, height - 1)
        x1 = (x0 + 1).clamp(max=width - 1)
        y1 = (y0 + 1).clamp(max=height - 1)
        fx, fy = frac[:, :1], frac[:, 1:]
        top = self.data[y0, x0] * (1 - fx) + self.data[y0, x1] * fx
        bottom = self.data[y1, x0] * (1 - fx) + self.data[y1, x1] * fx
        return top * (1 - fy) + bottom * fy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default=None, help="RGB image to fit (default: generated)")
    parser.add_argument("--size", type=int, default=256, help="side of the generated image")
    parser.add_argument("--steps", type=int, default=1000, help="training steps")
    parser.add_argument("--batch", type=int, default=None, help="points per step (GPU: 2**18)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    parser.add_argument("--backend", default="auto", help="gridcodes backend: auto/triton/cpu")
    parser.add_argument("--interval", type=int, default=10, help="steps between loss prints")
    parser.add_argument("--out", default=None, help="write the fitted image here (PNG)")
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    batch = args.batch or (2**18 if device.type == "cuda" else 2**14)

    image = BilinearImage(load_image(args.image, args.size)).to(device)
    height, width, n_channels = image.data.shape
    model = tcnn.NetworkWithInputEncoding(
        n_input_dims=2,
        n_output_dims=n_channels,
        encoding_config=CONFIG["encoding"],
        network_config=CONFIG["network"],
        backend=args.backend,
    ).to(device)
    model.jit_fusion = tcnn.supports_jit_fusion()
    print(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.9, 0.99), eps=1e-15)

    start = time.perf_counter()
    for step in range(args.steps):
        xy = torch.rand(batch, 2, device=device)
        target = image(xy)
        output = model(xy)
        relative_l2 = (output - target.to(output.dtype)) ** 2 / (output.detach() ** 2 + 0.01)
        loss = relative_l2.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.interval == 0 or step == args.steps - 1:
            print(f"step {step}: loss={loss.item():.6f} ({time.perf_counter() - start:.1f} s)")

    ys, xs = (torch.arange(n, device=device) + 0.5 for n in (height, width))
    grid = torch.stack(torch.meshgrid(xs / width, ys / height, indexing="xy"), dim=-1)
    with torch.no_grad():
        fitted = model(grid.reshape(-1, 2)).float().clamp(0, 1).reshape(height, width, -1)
    mse = (fitted - image.data).square().mean().item()
    print(f"final: loss={loss.item():.6f} psnr={-10 * math.log10(max(mse, 1e-12)):.2f}")
    if args.out:
        from PIL import Image

        Image.fromarray((fitted.cpu().numpy() * 255).round().astype(np.uint8)).save(args.out)
        print(f"wrote {args.out}")
    tcnn.free_temporary_memory()


if __name__ == "__main__":
    main()
