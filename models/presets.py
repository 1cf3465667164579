"""The presets, in one table: each names its autoencoder configuration (``BRICSConfig``) and
its stage-1 training recipe (``Recipe``: learning rate, batch, duration, GAN start).

``accelerate launch train/ae.py --preset NAME`` trains the one named here; stage 2 picks
its UNet and recipe from the key-code size (``models.recipes``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .config import BRICSConfig
from .recipes import Recipe


@dataclass(frozen=True)
class Preset:
    model: BRICSConfig
    recipe: Recipe


# Stage 1. App. A.2: Adam lr 2e-3; supp. B: batch 12 on one GPU. The paper states no step
# count: the default is a short run, to be set with --max-steps. The authors' StyleGAN2 loss
# applies the adversarial term from step 0.
PAPER_AE = Recipe(lr=2e-3, batch_size=12, max_steps=800, gan_start=0)
# The CPU presets: lr 5e-4 (held-out PSNR falls at 2e-3), 1000 steps (the measurements:
# bench/results/cpu_notes.md). The GAN starts at 30000 as taming-transformers' VQGAN, i.e.
# not within the default duration.
CPU_AE = Recipe(lr=5e-4, batch_size=8, max_steps=1000, gan_start=30000)

# The paper text's grid geometry (App. A.1): r_min 4, r_max 32 if Hz <= 32 else 64.
TEXT_GRID = {"base_resolution": 4, "max_resolution": None, "grid_resolution_rule": "text"}
# The CPU presets keep the first release's decoder (no extra conv, channels relative to Hd).
SMALL_DECODER = {"decoder_channel_rule": "relative", "decoder_extra_conv": False}

TABLE: dict[str, Preset] = {
    # Table 2/3, LSUN-Church 256^2 (the default is 64x64x4). Grid geometry: r_max 64 and the
    # r_min that reproduces the paper's grid parameter counts (bench/results/complexity.md):
    # 16 for 64x64 codes, 4 for 32x32 and 16x16 codes.
    "church-64x64x4": Preset(BRICSConfig(), PAPER_AE),
    "church-32x32x4": Preset(
        BRICSConfig(code_size=32, code_channels=4, base_resolution=4), PAPER_AE
    ),
    "church-32x32x8": Preset(
        BRICSConfig(code_size=32, code_channels=8, base_resolution=4), PAPER_AE
    ),
    # Table 2/3, FFHQ 256^2
    "ffhq-16x16x8": Preset(BRICSConfig(code_size=16, code_channels=8, base_resolution=4), PAPER_AE),
    "ffhq-16x16x16": Preset(
        BRICSConfig(code_size=16, code_channels=16, base_resolution=4), PAPER_AE
    ),
    # Table 7: Ckey = 2 (two groups of 4-D grids)
    "church-64x64x4-ckey2": Preset(BRICSConfig(key_length=2), PAPER_AE),
    # Table 8: Hd = Wd = 32
    "church-32x32x8-hd32": Preset(
        BRICSConfig(code_size=32, code_channels=8, tile_size=32, base_resolution=4), PAPER_AE
    ),
    # The default preset with the paper text's grid geometry (App. A.1)
    "church-64x64x4-text-grid": Preset(BRICSConfig(**TEXT_GRID), PAPER_AE),
    # App. K: hashed grids with a smaller table (2^14 .. 2^18)
    "church-64x64x4-hash14": Preset(BRICSConfig(grid_type="hash", log2_table_size=14), PAPER_AE),
    # App. A.4: KL-regularised key codes instead of relaxed precision
    "church-64x64x4-kl": Preset(BRICSConfig(key_regularization="kl"), PAPER_AE),
    # Small presets that train in minutes on a CPU
    "small-64": Preset(
        BRICSConfig(
            image_size=64,
            code_size=16,
            code_channels=4,
            tile_size=32,
            decoder_channels=128,
            log2_table_size=14,
            encoder_res_blocks=1,
            mapping_layers=2,
            disc_channels=32,
            disc_max_channels=128,
            **TEXT_GRID,
            **SMALL_DECODER,
        ),
        CPU_AE,
    ),
    "tiny-32": Preset(
        BRICSConfig(
            image_size=32,
            code_size=8,
            code_channels=4,
            tile_size=16,
            decoder_channels=64,
            n_levels=8,
            log2_table_size=12,
            encoder_res_blocks=1,
            mlp_hidden=32,
            mapping_layers=2,
            disc_channels=32,
            disc_max_channels=64,
            **TEXT_GRID,
            **SMALL_DECODER,
        ),
        CPU_AE,
    ),
}
DEFAULT_PRESET = "church-64x64x4"
# The model configurations alone, by preset name.
PRESETS: dict[str, BRICSConfig] = {name: preset.model for name, preset in TABLE.items()}


def _preset(name: str) -> Preset:
    if name not in TABLE:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(TABLE)}")
    return TABLE[name]


def get_preset(name: str, **overrides) -> BRICSConfig:
    """The model configuration of preset ``name``, with fields replaced by ``overrides``."""
    return dataclasses.replace(_preset(name).model, **overrides)


def ae_recipe(name: str) -> Recipe:
    """The stage-1 training recipe of preset ``name``."""
    return _preset(name).recipe
