"""Pieces both training scripts share: the Accelerator, the stop flag, the resume choice."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm import tqdm

from train import checkpoint
from train.data import StepBatchSampler
from train.options import to_dict

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


def start_run(t, tracker: str, restore) -> None:
    """Write the run's options, restore the latest checkpoint (``restore(t) -> path``), start
    TensorBoard, and seed this process (fresh run) or replay its generators (resumed run)."""
    acc, options = t.accelerator, t.options
    run_dir = options.output_dir.resolve()
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "options.json").write_text(json.dumps(to_dict(options), indent=2))
        print(f"run folder: {run_dir}", flush=True)
    restored = restore(t)
    acc.init_trackers(tracker, config={k: str(v) for k, v in to_dict(options).items()})
    if restored is None:
        set_seed(options.seed + acc.process_index)  # per-process noise streams
    else:  # replay exactly: this process's generators as they were at the save
        checkpoint.restore_rng(restored, acc.process_index)


def run_steps(t, name: str, dataset, micro_step, after_step, save, lr, hflip: bool = False) -> None:
    """Optimizer steps ``t.step + 1 .. max_steps`` of trainer ``t`` (options, accelerator, step).

    ``micro_step(batch) -> {name: tensor}`` trains on one micro-batch; every ``log_every``
    steps the values, averaged over processes, go to TensorBoard with ``lr()``;
    ``after_step()`` runs after every step (evaluation, samples); ``save()`` every
    ``save_every`` steps, at the end, and on SIGTERM / SIGINT (noticed on the next logging
    step), after which the loop stops.
    """
    acc, options = t.accelerator, t.options
    sampler = StepBatchSampler(
        len(dataset),
        options.batch_size,
        options.seed,
        t.step,
        options.max_steps,
        acc.process_index,
        acc.num_processes,
        options.grad_accum,
        hflip,
    )
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=options.num_workers,
        generator=torch.Generator().manual_seed(options.seed),
    )
    stop = StopFlag()
    progress = tqdm(
        total=options.max_steps,
        initial=t.step,
        desc=name,
        mininterval=5.0,
        disable=not acc.is_main_process,
        file=sys.stdout,
    )
    micro = 0
    for batch in loader:
        terms = micro_step(batch.to(acc.device, non_blocking=True))
        micro += 1
        if micro % options.grad_accum:
            continue
        t.step += 1
        progress.update(1)
        last = t.step == options.max_steps
        if t.step % options.log_every == 0 or last:
            logged = {k: acc.reduce(v, "mean").item() for k, v in terms.items()}
            acc.log({**{f"train/{k}": v for k, v in logged.items()}, "train/lr": lr()}, step=t.step)
            progress.set_postfix(loss=f"{logged['loss']:.4f}", refresh=False)
        after_step()
        # The all-reduce of the stop flag syncs with the device: only on logging steps.
        stopping = (t.step % options.log_every == 0 or last) and stop.agreed(acc)
        if t.step % options.save_every == 0 or last or stopping:
            save()
        maybe_kill(t.step)
        if stopping:
            logging.getLogger(f"train.{name}").info(
                "stopped by signal at step %d; checkpoint saved", t.step
            )
            break
    progress.close()
    acc.end_training()
    if acc.is_main_process:
        print(f"run folder: {options.output_dir.resolve()}", flush=True)
