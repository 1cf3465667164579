"""Decoder complexity: GMACs and parameters of BRICS decoder + retrieval vs VQGAN decoders.

    pip install -e ".[bench]" && python bench/complexity.py

Every model is counted by the same counter in the same run: PyTorch's
``torch.utils.flop_counter.FlopCounterMode`` (convolutions, matrix products, attention),
on meta tensors (nothing is allocated or run). MACs = counted FLOPs / 2 — the paper's
"GFlops" are multiply-accumulates. The grid interpolation itself is not a matrix product,
so its MACs are added from the paper's App. B formula: Hd Wd Nh 2**(Ckey+2) Cv Nr.

BRICS: decoder + retrieval of every preset at its resolution, decoding one key code.
VQGAN: diffusers' ``Decoder`` (a benchmark-only dependency) built as taming-transformers'
f16 config (ch 128, ch_mult (1,1,2,2,4), 2 res blocks, attention at 16, z 256) and
latent-diffusion's vq-f8 config (ch 128, ch_mult (1,2,2,4), 2 res blocks, attention at 32,
z 4), decoding one latent of a 256x256 image. Writes bench/results/complexity.{json,md}.
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # models/ of this checkout

import torch
from torch.utils.flop_counter import FlopCounterMode

from models import PRESETS, BRICSAutoencoder

RESULTS = Path(__file__).parent / "results"
VQGAN_CONFIGS = {
    "VQGAN f16 (taming)": dict(channels=(128, 128, 256, 256, 512), attention_at_lowest=True, z=256),
    "VQGAN f8 (LDM vq-f8)": dict(channels=(128, 256, 256, 512), attention_at_lowest=True, z=4),
}


def count_macs(module: torch.nn.Module, *inputs: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*inputs)
    return counter.get_total_flops() // 2


def brics_row(name: str) -> dict:
    config = PRESETS[name]
    with torch.device("meta"):
        model = BRICSAutoencoder(config, grid_backend="torch").eval()
        key_code = torch.empty(1, config.code_channels, config.code_size, config.code_size)
        conv_macs = count_macs(model.decode, key_code)
    d = config.key_length + 2
    interpolation = (
        config.tile_size**2 * config.n_groups * 2**d * config.n_features * config.n_levels
    )
    params = model.parameter_counts()
    return {
        "model": f"BRICS {name}",
        "resolution": config.image_size,
        "gmacs": (conv_macs + interpolation) / 1e9,
        "grid_interpolation_gmacs": interpolation / 1e9,
        "decoder_params_m": (params["decoder"] + params["mlp"]) / 1e6,
        "grid_params_m": params["grids"] / 1e6,
    }


def vqgan_row(name: str, channels: tuple[int, ...], attention_at_lowest: bool, z: int) -> dict:
    from diffusers.models.autoencoders.vae import Decoder

    n = len(channels)
    up_blocks = ["UpDecoderBlock2D"] * n
    if attention_at_lowest:  # diffusers' first up block works at the latent resolution
        up_blocks[0] = "AttnUpDecoderBlock2D"
    with torch.device("meta"):
        decoder = Decoder(
            in_channels=z,
            out_channels=3,
            up_block_types=tuple(up_blocks),
            block_out_channels=channels,
            layers_per_block=2,
        ).eval()
        latent = torch.empty(1, z, 256 // 2 ** (n - 1), 256 // 2 ** (n - 1))
        macs = count_macs(decoder, latent)
    return {
        "model": name,
        "resolution": 256,
        "gmacs": macs / 1e9,
        "grid_interpolation_gmacs": 0.0,
        "decoder_params_m": sum(p.numel() for p in decoder.parameters()) / 1e6,
        "grid_params_m": 0.0,
    }


def main() -> None:
    rows = [vqgan_row(name, **cfg) for name, cfg in VQGAN_CONFIGS.items()]
    rows += [brics_row(name) for name in PRESETS]
    f16 = rows[0]["gmacs"]
    env = {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "counter": "torch.utils.flop_counter.FlopCounterMode, MACs = FLOPs / 2",
    }
    lines = [
        "# Decoder complexity (one image / key code)",
        "",
        f"{env['date']}; torch {env['torch']}; {env['counter']}. Grid parameters are not part of "
        "the decoder column (the paper reports them separately, marked *).",
        "",
        "| model | res | GMACs | vs VQGAN f16 | decoder params (M) | grid params (M) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['resolution']} | {r['gmacs']:.2f} | {r['gmacs'] / f16:.2f}x | "
            f"{r['decoder_params_m']:.2f} | {r['grid_params_m']:.2f} |"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "complexity.json").write_text(
        json.dumps({"environment": env, "rows": rows}, indent=1)
    )
    (RESULTS / "complexity.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
