"""Training options: frozen dataclasses filled from defaults < a YAML/JSON file < flags.

:class:`RunOptions` holds what every training run has (run folder, recipe, checkpoints,
logging, devices); each stage extends it with its own fields. Each field carries its help
text (``field(metadata={"help": ...})``); :func:`parse_options` turns the fields into
command-line flags (``--max-steps``), so every flag documents itself.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from gridcodes.module import BACKENDS as GRID_BACKENDS
from models.errors import MissingInput, ReportedError, UserError


def option(default, help: str, choices: tuple | None = None):
    """A dataclass field with help text (and optional choices) for the command line."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class RunOptions:
    """Options every training stage shares. ``None`` recipe fields take the stage's recipe
    (``models.recipes``) in :meth:`with_recipe`; batches count images per optimizer step over
    all processes, so a run means the same on 1 or 8 GPUs."""

    output_dir: Path = option(Path("runs/run"), "run folder: checkpoints, logs, samples")
    resume: str = option(
        "auto", "'auto' (latest checkpoint in the run folder), 'never', or a checkpoint folder"
    )
    max_steps: int | None = option(None, "optimizer steps to train for (default: the recipe's)")
    batch_size: int | None = option(
        None,
        "images per optimizer step, all processes and accumulated micro-steps together "
        "(default: the recipe's)",
    )
    grad_accum: int = option(1, "micro-steps accumulated per optimizer step")
    lr: float | None = option(None, "peak learning rate (default: the recipe's)")
    warmup_steps: int | None = option(0, "linear learning-rate warm-up steps")
    mixed_precision: str | None = option(
        None,
        "no / fp16 / bf16 (default: accelerate launch's setting)",
        (None, "no", "fp16", "bf16"),
    )
    grid_backend: str = option(
        "auto", "feature-grid backend (auto: triton on CUDA, cpu on the CPU)", GRID_BACKENDS
    )
    seed: int = option(0, "random seed (process r uses seed + r for its noise)")
    deterministic: bool = option(False, "torch.use_deterministic_algorithms(True)")
    save_every: int = option(100, "checkpoint every this many steps")
    keep_last: int = option(3, "checkpoints to keep")
    log_every: int = option(10, "log losses every this many steps")
    num_workers: int | None = option(
        None, "data-loader worker processes (default: 0 on the CPU, 4 per process on CUDA)"
    )
    allow_tf32: bool = option(True, "TF32 matrix products and convolutions on CUDA")
    compile: bool = option(
        False, "torch.compile the generator side (the discriminator stays eager)"
    )
    channels_last: bool | None = option(
        None,
        "keep images and feature maps in channels-last layout (default: on under bf16 or fp16 "
        "mixed precision, as StyleGAN2-ADA's fp16 layers, off in float32)",
    )
    cpu_threads: int = option(
        0, "torch threads per process when training on the CPU (0: logical cores / processes)"
    )

    # Options a checkpoint must be resumed with (restore names the saved value otherwise):
    # the restored random generators continue the streams of the saved seed, so a new one
    # would change the data order only, in a run no seed replays.
    RESUME_FIXED: ClassVar[tuple[str, ...]] = ("seed",)
    POSITIVE: ClassVar[tuple[str, ...]] = (
        "max_steps",
        "batch_size",
        "grad_accum",
        "save_every",
        "keep_last",
        "log_every",
    )
    # Options that are >= 0 (0 meaning "all" or "automatic").
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = ("num_workers", "cpu_threads")

    def __post_init__(self) -> None:
        for name in self.POSITIVE:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"{_flag(name)} must be >= 1, got {value}")
        for name in self.NON_NEGATIVE:
            value = getattr(self, name)
            if value is not None and value < 0:
                raise UserError(f"{_flag(name)} must be >= 0, got {value}")
        if self.lr is not None and not 0 < self.lr < math.inf:
            raise UserError(f"--lr must be a positive finite number, got {self.lr}")

    def with_recipe(self, recipe) -> RunOptions:
        """These options with ``lr``, ``batch_size``, ``max_steps`` from ``recipe`` if unset."""
        unset = {k: getattr(recipe, k) for k in ("lr", "batch_size", "max_steps")}
        return dataclasses.replace(
            self, **{k: v for k, v in unset.items() if getattr(self, k) is None}
        )

    def micro_batch(self, processes: int) -> int:
        """Images per process and micro-step: ``batch_size / (processes * grad_accum)``."""
        shares = processes * self.grad_accum
        if self.batch_size % shares:
            raise UserError(
                f"--batch-size {self.batch_size} (images per optimizer step) must be divisible "
                f"by processes x --grad-accum = {processes} x {self.grad_accum}"
            )
        return self.batch_size // shares


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parser_type(annotation):
    """The argparse ``type`` of a field annotation (str, int, float, bool, optional variants)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        inner = _parser_type(args[0])
        return lambda text: None if text.lower() in ("none", "null", "") else inner(text)
    if annotation is bool:
        return parse_bool
    return annotation


def parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {text!r}")


def load_config_file(path: Path) -> dict:
    """Values from a ``.yaml``/``.yml`` or ``.json`` file (a flat mapping of field names)."""
    if not path.is_file():
        raise MissingInput(f"config file {path} does not exist")
    if path.suffix not in (".yaml", ".yml", ".json"):
        raise UserError(f"config file must be .yaml, .yml or .json, got {path}")
    import yaml

    try:
        text = path.read_text()
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text) or {}
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as error:
        kind = "JSON" if path.suffix == ".json" else "YAML"  # JSONDecodeError is a ValueError
        raise UserError(f"config file {path} is unreadable or not valid {kind}: {error}") from None
    if not isinstance(values, dict):
        raise UserError(f"config file {path} must hold a mapping, got {type(values).__name__}")
    return {str(key).replace("-", "_"): value for key, value in values.items()}


def config_value(name: str, value, annotation, choices: tuple | None, path: Path):
    """A config file's ``value`` for field ``name`` as the flag's type would give it; a
    string is parsed as on the command line (YAML reads ``1e-4`` as a string)."""
    where = f"{name}: {value!r} in config file {path}"
    kinds = typing.get_args(annotation) or (annotation,)  # with NoneType when optional
    if isinstance(value, str) and str not in kinds:  # a number, boolean or path as text
        try:
            value = _parser_type(annotation)(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            raise UserError(f"{where} is not {_type_name(annotation)}") from None
    elif type(value) is int and float in kinds:
        value = float(value)  # 1 is a number too
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise UserError(f"{where} must be {_type_name(annotation)}")
    if choices is not None and value not in choices:
        raise UserError(f"{where} must be one of {', '.join(map(str, filter(None, choices)))}")
    return value


def _type_name(annotation) -> str:
    args = typing.get_args(annotation) or (annotation,)
    (kind,) = [a for a in args if a is not type(None)]
    words = {int: "an integer", float: "a number", bool: "a boolean (true/false)", str: "a string"}
    return words.get(kind, "a path") + (" or null" if type(None) in args else "")


def parse_options(cls, description: str, argv: list[str] | None = None):
    """Build ``cls`` from its defaults, an optional ``--config`` file and flags.

    Returns ``(options, dry_run)``.
    """
    hints = typing.get_type_hints(cls)
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="YAML or JSON file of options; flags given too override it",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the resolved options and exit"
    )
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, f in fields.items():
        parser.add_argument(
            _flag(name),
            dest=name,
            type=_parser_type(hints[name]),
            default=argparse.SUPPRESS,
            choices=f.metadata.get("choices"),
            help=f"{f.metadata.get('help', '')} (default: {f.default!r})",
        )
    args = vars(parser.parse_args(argv))
    dry_run = args.pop("dry_run")
    config = args.pop("config", None)
    try:  # a bad config file or value: one line and exit code 2, as a bad flag
        values = load_config_file(config) if config else {}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise UserError(f"unknown option(s) in config file {config}: {', '.join(unknown)}")
        values = {
            name: config_value(
                name, value, hints[name], fields[name].metadata.get("choices"), config
            )
            for name, value in values.items()
        }
        return cls(**{**values, **args}), dry_run
    except UserError as error:  # a value out of range, or options that do not go together
        parser.error(" ".join(str(error).split()))


def to_dict(options) -> dict:
    """JSON-serialisable dict of an options dataclass (paths as strings)."""
    return {
        k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(options).items()
    }


def parse_device(text: str) -> str:
    """A ``--device`` that exists here (``cuda`` needs a GPU), refused when parsed."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"not a torch device: {text!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: this machine has no CUDA GPU")
    return text


def add_device_arguments(parser: argparse.ArgumentParser, grid_backend: bool = True) -> None:
    """``--device`` (default CUDA when available) and, for models with grids, ``--grid-backend``."""
    import torch

    default = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default, type=parse_device, help="torch device")
    if grid_backend:
        parser.add_argument(
            "--grid-backend",
            default="auto",
            choices=GRID_BACKENDS,
            help="feature-grid backend (auto: triton on CUDA, cpu on the CPU)",
        )


@contextlib.contextmanager
def user_errors():
    """Inside the block, a :class:`~models.errors.ReportedError` (the user's input at fault:
    an option, a path, the data, a checkpoint, the disk; or a diverged run) ends the program
    with one line on stderr, ``<script>: error: <message>``, and the error's exit code (2
    for input, as argparse's usage errors). Any other exception is a bug: its traceback
    stays."""
    try:
        yield
    except ReportedError as error:
        message = " ".join(str(error).split())  # one line, whatever the message holds
        print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(error.exit_code) from None


def exits_on_user_error(main):
    """An entry point's ``main`` run inside :func:`user_errors`."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        with user_errors():
            return main(*args, **kwargs)

    return wrapped
