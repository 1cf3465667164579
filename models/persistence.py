"""Configs as frozen dataclasses, and models saved as ``config.json`` + ``model.safetensors``.

Loading never unpickles; a checkpoint whose config differs from the one asked for raises
an error naming every differing field, and a config saved without some of today's fields
(by an earlier version) raises naming them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from models.errors import MissingInput, UserError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class ConfigMixin:
    """``to_dict`` / ``from_dict`` / ``differences`` for frozen config dataclasses."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"unknown {cls.__name__} fields {unknown}")
        missing = sorted(known - set(values))
        if missing:
            raise UserError(
                f"this {cls.__name__} was saved by an earlier version, without the fields "
                f"{missing} that models have had since; it cannot be loaded by this one"
            )
        return cls(**values)

    def differences(self, other) -> list[str]:
        """``field: self != other`` for every differing field."""
        return [
            f"{f.name}: {getattr(self, f.name)!r} != {getattr(other, f.name)!r}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]


def is_saved_model(directory: str | Path) -> bool:
    """Whether ``directory`` holds a model written by ``save_pretrained``."""
    directory = Path(directory)
    return (directory / CONFIG_FILE).is_file() and (directory / WEIGHTS_FILE).is_file()


def model_files(directory: str | Path) -> tuple[Path, Path]:
    """The config and weights files of a ``save_pretrained`` folder."""
    return Path(directory) / CONFIG_FILE, Path(directory) / WEIGHTS_FILE


def load_config(directory: str | Path, config_class: type):
    """The ``config_class`` instance saved in a ``save_pretrained`` folder."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise MissingInput(f"{path} does not exist")
    try:
        values = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UserError(f"{path} is damaged: {error}") from None
    if not isinstance(values, dict):
        raise UserError(f"{path} is damaged: it holds no mapping of config fields")
    return config_class.from_dict(values)


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` for modules built from ``self.config``.

    Subclasses set ``config_class`` and accept the config as first constructor argument.
    """

    config_class: type

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` to ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2))
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        # Written by Python's file API: a full disk raises OSError(ENOSPC), not a Rust error.
        weights = save(state, metadata={"format": type(self).__name__})
        (directory / WEIGHTS_FILE).write_bytes(weights)

    @classmethod
    def load_config(cls, directory: str | Path):
        """The config of a model written by :meth:`save_pretrained` in ``directory``."""
        return load_config(directory, cls.config_class)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, config=None, device: torch.device | str = "cpu", **kwargs
    ):
        """Load a model written by :meth:`save_pretrained`; ``config``, if given, must match."""
        directory = Path(directory)
        saved = cls.load_config(directory)
        if config is not None and config != saved:
            raise UserError(
                f"checkpoint {directory} was saved with a different config: "
                + "; ".join(f"{d} (expected != saved)" for d in config.differences(saved))
            )
        model = cls(saved, **kwargs)
        weights = directory / WEIGHTS_FILE
        try:
            model.load_state_dict(load_file(str(weights), device=str(device)), strict=True)
        except (OSError, SafetensorError) as error:
            raise UserError(f"{weights} is damaged: {error}") from None
        except RuntimeError as error:  # load_state_dict: other tensor names or shapes
            raise UserError(f"{weights} does not hold this model's weights: {error}") from None
        return model.to(device)
