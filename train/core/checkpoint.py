"""Crash-safe training checkpoints.

A checkpoint is a folder ``<run>/checkpoints/step_00001234/`` holding the models (a
``save_pretrained`` folder or ``<name>.safetensors``), ``training_state.pt`` (optimizers,
schedulers, step, anything else; loaded with ``weights_only=True``), one ``rng_rank<r>.pt``
per process, and ``options.json``. It is written under a temporary name and renamed into
place, so a crash or ``kill -9`` during a save never damages the last good checkpoint.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import random
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from models.errors import MissingInput, UserError
from models.persistence import WEIGHTS_FILE, is_saved_model, load_config

STATE_FILE = "training_state.pt"
# Recorded in every checkpoint's options.json. Checkpoints without it were written while
# --batch-size counted images per process and micro-step (now: per optimizer step, in all).
RUN_FORMAT = 2
NAME = re.compile(r"^step_(\d{8})$")
# Fault injection for the crash-safety tests: SIGKILL this process in the middle of the
# save of that step (after the weights, before the rename).
KILL_DURING_SAVE = "BRICS_FAULT_KILL_DURING_SAVE"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:08d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run's current timeline, oldest first. A save killed between
    moving an older copy of its step aside and renaming the new one in leaves only the
    older copy (``step_K.replaced``): it is put back."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    for replaced in folder.glob("step_*.replaced"):
        final = replaced.with_suffix("")
        if NAME.match(final.name) and not final.exists():
            os.replace(replaced, final)
    found = [p for p in folder.iterdir() if NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(NAME.match(p.name).group(1)))


def set_timeline_aside(run_dir: Path, resumed: Path) -> Path | None:
    """Resuming from ``resumed`` while later checkpoints exist starts a new timeline: the
    later ones move to ``checkpoints/abandoned_after_step_<S>_<n>/`` (kept, never pruned,
    never resumed by ``--resume auto``). Returns that folder, or None when none was later."""
    resumed = Path(resumed).resolve()
    later = [
        p for p in list_checkpoints(run_dir) if p.resolve() != resumed and p.name > resumed.name
    ]
    if not later or resumed.parent != (Path(run_dir) / "checkpoints").resolve():
        return None
    n = 1
    while (aside := resumed.parent / f"abandoned_after_{resumed.name}_{n}").exists():
        n += 1
    aside.mkdir()
    for path in later:
        os.replace(path, aside / path.name)
    _fsync_dir(resumed.parent)
    return aside


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


MANIFEST = "manifest.json"


def write_manifest(folder: Path) -> None:
    """Record every file of checkpoint ``folder`` with its size (checked before a resume)."""
    files = {
        str(path.relative_to(folder)): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }
    (folder / MANIFEST).write_text(json.dumps(files, indent=1))


def damage(path: Path) -> str | None:
    """What is wrong with checkpoint ``path`` (a file missing or of another size than at the
    save, an unreadable safetensors header), or None when it is intact."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        try:
            files = json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError):
            return f"its {MANIFEST} is unreadable"
    else:  # written before checkpoints had a manifest: the files there, sizes unknown
        files = {str(f.relative_to(path)): None for f in path.rglob("*") if f.is_file()}
        files.setdefault(STATE_FILE, None)
    for name, size in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if size is not None and file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, {size} when saved"
        if name.endswith(".safetensors"):
            try:
                with safe_open(str(file), framework="pt") as f:
                    f.metadata()
            except Exception as error:  # safetensors raises its own error types
                return f"{name} has an unreadable header ({error})"
    return None


def latest_intact_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint that passes :func:`damage`; damaged newer ones are named in a
    warning and skipped (kept for inspection)."""
    for path in reversed(list_checkpoints(run_dir)):
        reason = damage(path)
        if reason is None:
            return path
        logging.getLogger("train").warning("skipping damaged checkpoint %s: %s", path, reason)
    return None


def rng_state() -> dict:
    """Every random generator a training process uses, as tensors and ints."""
    state = {"torch": torch.get_rng_state(), "python": _python_state(), "numpy": _numpy_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def _python_state():
    version, internal, gauss = random.getstate()
    return version, torch.tensor(internal, dtype=torch.int64), gauss


def _numpy_state():
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)


def save_checkpoint(
    run_dir: Path,
    step: int,
    accelerator,
    models: dict[str, nn.Module],
    state: dict,
    options: dict,
    keep_last: int,
) -> Path | None:
    """Write checkpoint ``step`` atomically (all processes must call this); prune to ``keep_last``.

    ``models`` are unwrapped modules; ``state`` holds state dicts (optimizers, schedulers)
    and plain values. Returns the checkpoint folder on the main process.
    """
    final = checkpoint_dir(run_dir, step)
    temporary = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        write_file(temporary / f"rng_rank{accelerator.process_index}.pt", torch_bytes(rng_state()))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            for name, model in models.items():
                if hasattr(model, "save_pretrained"):
                    model.save_pretrained(temporary / name)
                else:
                    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
                    write_file(temporary / f"{name}.safetensors", safetensors_bytes(tensors))
            write_file(temporary / "options.json", json.dumps(options, indent=2).encode())
            if os.environ.get(KILL_DURING_SAVE) == str(step):
                os.kill(os.getpid(), signal.SIGKILL)
            write_file(temporary / STATE_FILE, torch_bytes({**state, "step": step}))
            write_manifest(temporary)
            _fsync_tree(temporary)
    except OSError as error:
        shutil.rmtree(temporary, ignore_errors=True)
        resume = "the earlier checkpoints are intact: free some space and run again to resume"
        if (message := write_failure(error, final, resume)) is None:
            raise  # not the disk: a bug keeps its traceback
        raise UserError(message) from None
    if accelerator.is_main_process:
        # A checkpoint of this step already there (an earlier run's): moved aside first, so
        # a crash at any point leaves one of the two under a name a resume finds.
        replaced = final.with_name(final.name + ".replaced")
        if final.exists():
            shutil.rmtree(replaced, ignore_errors=True)
            os.replace(final, replaced)
        if os.environ.get(KILL_DURING_SAVE) == f"{step}:replace":
            os.kill(os.getpid(), signal.SIGKILL)
        os.replace(temporary, final)
        _fsync_dir(final.parent)
        shutil.rmtree(replaced, ignore_errors=True)
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final if accelerator.is_main_process else None


def torch_bytes(obj) -> memoryview:
    """``torch.save`` of ``obj`` in memory (its own file writer reports a full disk as
    "unexpected pos", without the cause)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getbuffer()


def write_file(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` through Python's file API: a full disk raises OSError(ENOSPC)."""
    with open(path, "wb") as f:
        f.write(data)


def write_failure(error: OSError, target: Path, then: str) -> str | None:
    """The one-line message of a write of ``target`` that failed for want of disk space or
    permission (its partial files already removed), ending with ``then`` (what to do), or
    None for any other error."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        free = shutil.disk_usage(target.parent).free / 2**20
        return (
            f"no space left on device while saving to {target} ({free:.0f} MiB free with the "
            f"partial files removed); {then}"
        )
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {target}: {error.strerror} ({error.filename}); {then}"
    return None


def has_network(path: Path, name: str) -> bool:
    """Whether checkpoint ``path`` holds the weights of network ``name``."""
    path = Path(path)
    return (path / name / WEIGHTS_FILE).is_file() or (path / f"{name}.safetensors").is_file()


def load_checkpoint(path: Path, models: dict[str, nn.Module]) -> dict:
    """Load weights into ``models`` (unwrapped modules); returns the training state."""
    path = Path(path)
    for name, model in models.items():
        folder_weights = path / name / WEIGHTS_FILE
        weights = folder_weights if folder_weights.is_file() else path / f"{name}.safetensors"
        model.load_state_dict(load_file(str(weights), device="cpu"), strict=True)
    return torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)


def restore_rng(path: Path, process_index: int) -> None:
    """Set this process's generators to their state at the save of checkpoint ``path``."""
    rng_file = Path(path) / f"rng_rank{process_index}.pt"
    if not rng_file.is_file():
        raise MissingInput(
            f"{rng_file} is missing: the checkpoint was written by fewer processes than resume it"
        )
    set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=True))


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def find_autoencoder(path: Path) -> Path:
    """The ``save_pretrained`` folder of an autoencoder: itself, a checkpoint's or a run's.

    In a stage-1 checkpoint, its EMA weights (``ema`` beside ``autoencoder``): evaluation,
    the codes cache and sampling use the EMA weights, as the authors' G_ema.
    """
    path = Path(path)
    if is_saved_model(path):
        return path
    latest = path if is_saved_model(path / "autoencoder") else latest_intact_checkpoint(path)
    if latest is None:
        raise MissingInput(
            f"no stage-1 autoencoder under {path} (a run, checkpoint or model folder)"
        )
    if not is_saved_model(latest / "ema"):
        raise MissingInput(
            f"checkpoint {latest} holds no EMA weights (written before stage 1 kept them); "
            f"pass {latest / 'autoencoder'} to use its trained weights"
        )
    return latest / "ema"


def check_saved_config(path: Path, name: str, expected) -> None:
    """Raise naming every field where the config of network ``name`` in checkpoint ``path``
    differs from ``expected``."""
    saved = load_config(Path(path) / name, type(expected))
    differences = expected.differences(saved)
    if differences:
        raise UserError(
            f"checkpoint {path} has another {name} configuration: {'; '.join(differences)}"
        )


def check_run_format(path: Path) -> None:
    """Raise when checkpoint ``path`` was written by an earlier run format (format 1 counted
    ``--batch-size`` per process and micro-step)."""
    saved = json.loads((Path(path) / "options.json").read_text())
    if saved.get("run_format", 1) != RUN_FORMAT:
        raise UserError(
            f"checkpoint {path} was written by an earlier version (run format "
            f"{saved.get('run_format', 1)}, when --batch-size counted images per process and "
            f"micro-step); this version resumes run format {RUN_FORMAT}: start a new run in "
            "another --output-dir"
        )


def check_saved_options(path: Path, options, names: tuple[str, ...]) -> None:
    """Raise when checkpoint ``path`` was trained with other values of the options ``names``
    (say, a run begun when another GAN loss was the default), naming the saved value."""
    saved = json.loads((Path(path) / "options.json").read_text())
    for name in names:
        value = saved.get(name)
        if name in saved and value != getattr(options, name):
            flag = "--" + name.replace("_", "-")
            raise UserError(
                f"checkpoint {path} was trained with {flag} {value} (this run asks for "
                f"{getattr(options, name)}): resume with {flag} {value}, or start a new run "
                "in another --output-dir"
            )
