"""Training recipes: how each preset is trained (NVlabs/edm2's ``config_presets``).

A recipe bundles the learning rate, the batch and the duration. The batch counts images
per optimizer step over all processes and accumulation steps, and the duration counts
optimizer steps, so a recipe trains on the same images whether it runs on 1 or 8 GPUs
(each process then takes ``batch_size / (processes * accumulation)`` per micro-step).
Stage 1 has one recipe per autoencoder preset (``models.presets``); stage 2 one per
UNet size, picked from the key-code size unless named.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    lr: float  # peak learning rate
    batch_size: int  # images (or codes) per optimizer step, all processes together
    max_steps: int  # optimizer steps; max_steps * batch_size images in all
    unet: str | None = None  # stage 2: the UNet preset (models.unet.UNET_PRESETS)
    gan_start: int | None = None  # stage 1: step at which the adversarial loss starts


# Stage 2. App. A.6: batch 64, lr 8e-4, 400k iterations (warm-up 10k, cosine decay over 1e6).
# The CPU recipes train the small UNets for minutes on the codes of the CPU presets.
DIFFUSION_RECIPES: dict[str, Recipe] = {
    "paper": Recipe(lr=8e-4, batch_size=64, max_steps=400_000, unet="paper"),
    "small": Recipe(lr=8e-4, batch_size=32, max_steps=1500, unet="small"),
    "tiny": Recipe(lr=8e-4, batch_size=32, max_steps=1500, unet="tiny"),
}
# The UNet for key codes of each size (App. A.5: the paper's for 64x64 codes).
RECIPE_FOR_CODE_SIZE = {64: "paper", 16: "small", 8: "tiny"}


def diffusion_recipe(name: str, code_size: int | None = None) -> Recipe:
    """The stage-2 recipe ``name``; ``"auto"`` picks it by ``code_size`` ("small" if unlisted)."""
    if name == "auto":
        if code_size is None:
            raise ValueError("the 'auto' diffusion recipe needs the key-code size")
        name = RECIPE_FOR_CODE_SIZE.get(code_size, "small")
    if name not in DIFFUSION_RECIPES:
        raise ValueError(
            f"unknown diffusion recipe {name!r}; valid: {', '.join(DIFFUSION_RECIPES)}"
        )
    return DIFFUSION_RECIPES[name]
