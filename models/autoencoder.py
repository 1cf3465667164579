"""The BRICS autoencoder: encoder -> key code -> feature retrieval -> StyleGAN2 decoder."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import BRICSConfig
from .encoder import Encoder
from .persistence import PretrainedMixin
from .retrieval import FeatureRetrieval
from .synthesis import SynthesisDecoder


@dataclass
class AutoencoderOutput:
    """What the losses need from one forward pass."""

    reconstruction: torch.Tensor  # (B, 3, H, W), trained towards [-1, 1]
    key_code: torch.Tensor  # (B, Cz, Hz, Wz) in [0, 1]
    mean: torch.Tensor | None = None  # KL variant: posterior mean (B, Cz, Hz, Wz), pre-sigmoid
    logvar: torch.Tensor | None = None  # KL variant: posterior log-variance
    extra_loss: torch.Tensor | None = None  # another model's own term (a VQ codebook loss), x 1


class BRICSAutoencoder(PretrainedMixin, nn.Module):
    """BRICS (Yang et al. 2023): images in [-1, 1] <-> key codes in [0, 1].

    Args:
        config: the model's hyper-parameters (see :mod:`models.presets` for presets).
        grid_backend: backend of the feature grids, ``"auto"``, ``"triton"``, ``"cpu"`` or
            ``"torch"`` (see :class:`gridcodes.MultiResGrid`).
    """

    config_class = BRICSConfig

    def __init__(self, config: BRICSConfig, grid_backend: str = "auto") -> None:
        super().__init__()
        self.config = config
        kl = config.key_regularization == "kl"
        self.encoder = Encoder(
            config.image_size,
            config.code_size,
            config.code_channels * (2 if kl else 1),
            config.encoder_channels,
            config.encoder_res_blocks,
        )
        self.retrieval = FeatureRetrieval(config, grid_backend)
        self.decoder = SynthesisDecoder(
            config.decoder_channels,
            config.tile_size,
            config.image_size,
            config.mapping_layers,
            config.decoder_channel_rule,
            config.decoder_extra_conv,
            config.demodulation_eps,
        )

    # --- the paper's three stages -----------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Key codes of ``images`` (B, 3, H, W) in [-1, 1]: (B, Cz, Hz, Wz) in [0, 1], no noise."""
        return self._encode(images)[0]

    def feature_block(self, key_codes: torch.Tensor) -> torch.Tensor:
        """Feature block f (B, Cd, Hd, Wd) of key codes (B, Cz, Hz, Wz) in [0, 1]."""
        self._check_key_codes(key_codes)
        return self.retrieval(key_codes)

    def decode(self, key_codes: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) of key codes (B, Cz, Hz, Wz) in [0, 1]."""
        return self.decoder(self.feature_block(key_codes))

    def forward(self, images: torch.Tensor) -> AutoencoderOutput:
        """Reconstruct ``images`` (B, 3, H, W) in [-1, 1]; returns what the losses need.

        In training mode the key code carries the relaxed-precision noise (or the KL
        posterior sample); in eval mode the pass is deterministic.
        """
        key_code, mean, logvar = self._encode(images)
        reconstruction = self.decoder(self.retrieval(key_code))
        return AutoencoderOutput(reconstruction, key_code, mean, logvar)

    def _encode(self, images: torch.Tensor):
        self._check_images(images)
        h = self.encoder(images)
        if self.config.key_regularization != "kl":
            return torch.sigmoid(h), None, None
        # App. A.4: z = sigmoid(mu + sigma * eps), sampled in training only.
        mean, logvar = h.chunk(2, dim=1)
        logvar = logvar.clamp(-30.0, 20.0)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean) if self.training else mean
        return torch.sigmoid(z), mean, logvar

    # --- statistics (App. E) ----------------------------------------------------
    def grid_hit_counts(
        self, key_codes: torch.Tensor, counts: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-entry hits of the grid queries of key codes (B, Cz, Hz, Wz) in [0, 1], in the
        current mode: int64 (Nh, entries). Pass ``counts`` back in to accumulate batches."""
        self._check_key_codes(key_codes)
        return self.retrieval.grids.hit_counts(self.retrieval.queries(key_codes), counts)

    def grid_usage_rate(self, counts: torch.Tensor) -> torch.Tensor:
        """Grid occupancy: fraction of each level's entries hit, (Nh, Nr), in [0, 1] (ours; the
        coarse levels are trivially full. App. E's figure is :meth:`key_value_usage_rate`)."""
        return self.retrieval.grids.usage_rate(counts)

    def key_value_hits(
        self, key_codes: torch.Tensor, counts: torch.Tensor | None = None
    ) -> torch.Tensor:
        """App. E / Fig. 3b's statistic (the authors' ``analysize_hitting_rate.py``): per code
        channel, a histogram of key values at the finest resolution, each value z hitting
        slots floor(z r_max) (at most r_max - 1) and the one after: int64 (Cz, r_max + 1).
        Pass ``counts`` back in to accumulate batches."""
        self._check_key_codes(key_codes)
        r_max = self.config.r_max
        slot = (key_codes.detach().clamp(0, 1) * r_max).floor().long().clamp(0, r_max - 1)
        slot = slot.transpose(0, 1).flatten(1)  # (Cz, B * Hz * Wz)
        if counts is None:
            counts = torch.zeros(slot.shape[0], r_max + 1, dtype=torch.long, device=slot.device)
        ones = torch.ones_like(slot)
        return counts.scatter_add_(1, slot, ones).scatter_add_(1, slot + 1, ones)

    @staticmethod
    def key_value_usage_rate(counts: torch.Tensor) -> torch.Tensor:
        """Fraction of the r_max + 1 key-value slots of :meth:`key_value_hits` hit, (Cz,)."""
        return (counts > 0).float().mean(dim=1)

    def compile(self, *args, **kwargs) -> None:
        """``nn.Module.compile`` in place (the state dict keeps its names), static shapes by
        default: training shapes are fixed, and inductor's dynamic-shape guards fail on torch
        2.11 (``cannot determine truth value of Relational``)."""
        super().compile(*args, **{"dynamic": False, **kwargs})

    def parameter_counts(self) -> dict[str, int]:
        """Parameters of the encoder, the grids, the retrieval MLP and the decoder."""
        count = lambda module: sum(p.numel() for p in module.parameters())
        return {
            "encoder": count(self.encoder),
            "grids": self.retrieval.grids.params.numel(),
            "mlp": count(self.retrieval.mlp),
            "decoder": count(self.decoder),
        }

    # --- input checks -------------------------------------------------------------------
    def _check_images(self, images: torch.Tensor) -> None:
        size = self.config.image_size
        _check_tensor("images", images, (3, size, size), "(B, 3, H, W) with H = W = image_size")

    def _check_key_codes(self, key_codes: torch.Tensor) -> None:
        c = self.config
        expected = (c.code_channels, c.code_size, c.code_size)
        _check_tensor("key_codes", key_codes, expected, "(B, Cz, Hz, Wz)")


def _check_tensor(name: str, x, trailing: tuple[int, ...], layout: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() != 4 or tuple(x.shape[1:]) != trailing:
        raise ValueError(
            f"{name} must have shape {layout} = (B, {', '.join(map(str, trailing))}), "
            f"got {tuple(x.shape)}"
        )
