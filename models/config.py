"""BRICS autoencoder configuration and the named presets of the paper (Tables 2, 3, 7, 8; App. K).

Symbols follow the paper's Table 1: key code z in [0,1]^{Hz x Wz x Cz}, Cz = Nh * Ckey,
tiled key code of size Hd x Wd, feature block of Cd channels, Nr grid levels of Cv features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .persistence import ConfigMixin

KEY_REGULARIZATIONS = ("relaxed", "kl", "none")
GRID_RESOLUTION_RULES = ("authors", "text")
NOISE_PLACEMENTS = ("code", "tiled")
DECODER_CHANNEL_RULES = ("absolute", "relative")
DEMODULATION_EPS_ON = ("raw", "scaled")


@dataclass(frozen=True)
class BRICSConfig(ConfigMixin):
    """Hyper-parameters of :class:`models.BRICSAutoencoder` (docs/fidelity.md)."""

    image_size: int = 256  # H = W
    code_size: int = 64  # Hz = Wz
    code_channels: int = 4  # Cz = Nh * Ckey
    key_length: int = 1  # Ckey: key values per group and cell
    tile_size: int = 64  # Hd = Wd, spatial size of the tiled key code and feature block
    decoder_channels: int = 512  # Cd, channels of the feature block (and style code)
    # Multi-resolution grids, one group per key slice (App. A.1)
    n_levels: int = 16  # Nr
    n_features: int = 4  # Cv
    # Grid geometry. "authors": level l has ceil(r_min b^l) cells, + 1 vertices per axis, the
    # geometry behind the parameter counts of Tables 3, 7, 8; "text": round(r_min b^l) vertices
    # and r_min 4 (App. A.1). r_max None: the text's 32 if Hz <= 32 else 64.
    base_resolution: int = 16  # r_min
    max_resolution: int | None = 64  # r_max
    grid_resolution_rule: str = "authors"
    log2_table_size: int = 18  # T = 2**18
    grid_type: str = "tiled"  # eq. 6, index = (sum_k x_k tau_k) mod T; "hash" for App. K
    # Encoder: taming-transformers' VQGAN encoder (App. A.1)
    encoder_channels: int = 32  # unit channel
    encoder_res_blocks: int = 2
    # Retrieval MLP F_mlp (Fig. 8): Nr*Cv -> hidden -> hidden -> Cd/Nh
    mlp_hidden: int = 64
    # StyleGAN2 decoder
    mapping_layers: int = 8  # MLPs of the style code w = MLPs(normalize(avg_pool(f)))
    # Key-code regularisation: relaxed precision noise (Sec. 3.2) or KL (App. A.4)
    key_regularization: str = "relaxed"
    # Relaxed-precision noise drawn per code cell before tiling ("code", the authors') or per
    # tiled cell after tiling ("tiled", Sec. 3.2's text)
    noise_placement: str = "code"
    # StyleGAN2 decoder channels: "absolute", min(32768 / res, Cd) by absolute resolution (the
    # authors'); "relative", Cd at Hd halved per doubling, at least 32
    decoder_channel_rule: str = "absolute"
    # One more modulated 3x3 conv at every upsampled resolution (--additional_decoder_conv)
    decoder_extra_conv: bool = True
    # Demodulation's 1e-8 added to the sum of squares of the raw weight ("raw", the authors'
    # PyTorch StyleGAN2) or of the equalized-lr scaled one ("scaled", TensorFlow StyleGAN2)
    demodulation_eps: str = "raw"
    # Discriminator (StyleGAN2): channels at full resolution, doubling per halving up to max
    disc_channels: int = 128
    disc_max_channels: int = 512

    def __post_init__(self) -> None:
        for name in (
            "image_size",
            "code_size",
            "code_channels",
            "key_length",
            "tile_size",
            "decoder_channels",
            "n_levels",
            "n_features",
            "base_resolution",
            "log2_table_size",
            "encoder_channels",
            "encoder_res_blocks",
            "mlp_hidden",
            "mapping_layers",
            "disc_channels",
            "disc_max_channels",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("image_size", "code_size", "tile_size"):
            if not _is_power_of_two(getattr(self, name)):
                raise ValueError(f"{name} must be a power of two, got {getattr(self, name)}")
        if not self.code_size <= self.tile_size <= self.image_size:
            raise ValueError(
                "need code_size <= tile_size <= image_size (Hz <= Hd <= H), got "
                f"{self.code_size}, {self.tile_size}, {self.image_size}"
            )
        if self.code_channels % self.key_length:
            raise ValueError(
                f"code_channels={self.code_channels} must be a multiple of "
                f"key_length={self.key_length} (Cz = Nh * Ckey)"
            )
        if self.decoder_channels % self.n_groups:
            raise ValueError(
                f"decoder_channels={self.decoder_channels} must be a multiple of the number of "
                f"groups Nh={self.n_groups} (each group fills Cd / Nh channels)"
            )
        if self.key_regularization not in KEY_REGULARIZATIONS:
            raise ValueError(
                f"key_regularization must be one of {KEY_REGULARIZATIONS}, "
                f"got {self.key_regularization!r}"
            )
        for name, valid in (
            ("grid_resolution_rule", GRID_RESOLUTION_RULES),
            ("noise_placement", NOISE_PLACEMENTS),
            ("decoder_channel_rule", DECODER_CHANNEL_RULES),
            ("demodulation_eps", DEMODULATION_EPS_ON),
        ):
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} must be one of {valid}, got {getattr(self, name)!r}")
        if self.encoder_channels % 32:
            raise ValueError(
                f"encoder_channels must be a multiple of 32 (GroupNorm(32)), "
                f"got {self.encoder_channels}"
            )

    @property
    def n_groups(self) -> int:
        """Nh: groups of feature grids, one per key slice."""
        return self.code_channels // self.key_length

    @property
    def r_max(self) -> int:
        """Finest grid resolution r_max: 32 if Hz <= 32 else 64 unless set (App. A.1)."""
        if self.max_resolution is not None:
            return self.max_resolution
        return 32 if self.code_size <= 32 else 64

    @property
    def grid_resolutions(self) -> tuple[int, ...]:
        """Vertices per axis of each grid level, b = (r_max / r_min)^(1 / (Nr - 1)).

        "authors": ceil(r_min b^l) + 1 (cells of size 1 / r, hashed with r + 1 vertices);
        "text": round(r_min b^l) (``gridcodes.MultiResGrid``'s own rule).
        """
        r_min, r_max, n = self.base_resolution, self.r_max, self.n_levels
        b = math.exp((math.log(r_max) - math.log(r_min)) / (n - 1)) if n > 1 else 1.0
        if self.grid_resolution_rule == "authors":
            return tuple(math.ceil(r_min * b**level - 1e-9) + 1 for level in range(n))
        return tuple(round(r_min * b**level) for level in range(n))

    @property
    def n_downsamplings(self) -> int:
        return int(math.log2(self.image_size // self.code_size))

    @property
    def n_upsamplings(self) -> int:
        return int(math.log2(self.image_size // self.tile_size))

    @property
    def relaxed_precision_std(self) -> float:
        """Std of the relaxed-precision noise, 1 / (4 r_max) (Sec. 3.2)."""
        return 1.0 / (4 * self.r_max)


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0
