"""Pieces both training scripts share: the Accelerator, the stop flag, the resume choice."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import torch
from accelerate import Accelerator

from train import checkpoint

# Fault injection for the resume tests: SIGKILL the training process right after this step.
KILL_AT_STEP = "BRICS_FAULT_KILL_AT_STEP"


def make_accelerator(
    output_dir: Path,
    grad_accum: int,
    mixed_precision: str | None,
    cpu_threads: int,
    deterministic: bool,
) -> Accelerator:
    """Accelerator with TensorBoard logging into ``output_dir``.

    Without CUDA every process runs on the CPU (several processes: gloo DDP) with
    ``cpu_threads`` torch threads (0: logical cores / processes, since ``accelerate launch``
    counts physical cores only).
    """
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        gradient_accumulation_steps=grad_accum,
        mixed_precision=mixed_precision,
        log_with="tensorboard",
        project_dir=str(output_dir),
    )
    if deterministic:
        torch.use_deterministic_algorithms(True)
    if accelerator.device.type == "cpu":
        cores = os.cpu_count() or 1
        torch.set_num_threads(cpu_threads or max(1, cores // accelerator.num_processes))
    return accelerator


def resume_path(resume: str, output_dir: Path) -> Path | None:
    """The checkpoint ``--resume`` names: 'auto' (the run's latest, if any), 'never' or a path."""
    if resume == "never":
        if checkpoint.latest_checkpoint(output_dir) is not None:
            raise FileExistsError(
                f"{output_dir} already holds checkpoints; use another --output-dir or --resume auto"
            )
        return None
    if resume == "auto":
        return checkpoint.latest_checkpoint(output_dir)
    path = Path(resume)
    if not (path / checkpoint.STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume {resume}: not a checkpoint folder")
    return path


def maybe_kill(step: int) -> None:
    """SIGKILL this process after ``step`` when the fault-injection variable names it."""
    if os.environ.get(KILL_AT_STEP) == str(step):
        os.kill(os.getpid(), signal.SIGKILL)


class StopFlag:
    """Set by SIGTERM / SIGINT; the loops check it between steps, save and exit cleanly."""

    def __init__(self) -> None:
        self.raised = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.raised = True

    def agreed(self, accelerator) -> bool:
        """True on every process once any process was signalled."""
        flag = torch.tensor(float(self.raised), device=accelerator.device)
        return accelerator.reduce(flag, "sum").item() > 0
