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
from safetensors.torch import load_file, save_file

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
            raise ValueError(f"unknown {cls.__name__} fields {unknown}")
        missing = sorted(known - set(values))
        if missing:
            raise ValueError(
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
        raise FileNotFoundError(f"{path} does not exist")
    return config_class.from_dict(json.loads(path.read_text()))


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
        save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": type(self).__name__})

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
            raise ValueError(
                f"checkpoint {directory} was saved with a different config: "
                + "; ".join(f"{d} (expected != saved)" for d in config.differences(saved))
            )
        model = cls(saved, **kwargs)
        model.load_state_dict(
            load_file(str(directory / WEIGHTS_FILE), device=str(device)), strict=True
        )
        return model.to(device)
