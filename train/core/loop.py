"""The training lifecycle both stages share: a :class:`Stage` says what to train, :func:`train`
runs it.

A stage builds its models, optimizers and data, trains on one micro-batch
(:meth:`Stage.train_step`), evaluates on its own schedule (:meth:`Stage.evaluate`) and
names what a checkpoint holds (:meth:`Stage.networks`, :meth:`Stage.state_dict`). The
lifecycle writes the run's options, restores the latest checkpoint, seeds or replays the
random generators, iterates optimizer steps with logging, EMA updates, checkpoints and
SIGTERM / SIGINT handling, and ends the run.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import signal
import sys
from abc import ABC, abstractmethod
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from gridcodes import ops as grid_ops
from models.errors import MissingInput, ReportedError, UserError
from train.core import checkpoint
from train.core.cpu_memory import keep_freed_memory
from train.core.data import StepBatchSampler
from train.core.lock import run_folder_lock
from train.core.options import RunOptions, to_dict, user_errors

# Fault injection for the resume tests: SIGKILL the training process right after this step.
KILL_AT_STEP = "BRICS_FAULT_KILL_AT_STEP"
# ... and for the divergence tests: make one weight NaN after this optimizer step.
NAN_AT_STEP = "BRICS_FAULT_NAN_AT_STEP"


class EMA:
    """Exponential moving average of ``source``'s weights, updated on optimizer steps only
    (decay warm-up ``min(decay, (1 + n) / (10 + n))`` after n updates)."""

    def __init__(self, source: nn.Module, decay: float) -> None:
        self.source = source
        self.model = copy.deepcopy(source).eval().requires_grad_(False)
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self) -> None:
        """One update: a foreach lerp over all parameters, a foreach copy of the buffers."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema, current = list(self.model.parameters()), list(self.source.parameters())
        torch._foreach_lerp_(ema, [p.detach() for p in current], 1 - decay)
        buffers = list(self.model.buffers())
        if buffers:  # foreach ops refuse empty lists
            torch._foreach_copy_(buffers, list(self.source.buffers()))


class Stage(ABC):
    """One training stage. Subclasses set ``name`` and build everything in ``__init__``."""

    name: str  # TensorBoard project and progress-bar label
    hflip: bool = False  # random horizontal flips of the training data
    ema: EMA | None = None  # saved as network "ema", updated by the lifecycle

    def __init__(self, options: RunOptions, accelerator: Accelerator, dataset: Dataset) -> None:
        self.options, self.accelerator, self.dataset = options, accelerator, dataset
        self.step = 0

    @abstractmethod
    def networks(self) -> dict[str, nn.Module]:
        """The unwrapped modules a checkpoint holds, by name."""

    @abstractmethod
    def configs(self) -> dict[str, object]:
        """The configs a checkpoint's networks must have to resume, by network name."""

    @abstractmethod
    def stateful(self) -> dict[str, object]:
        """Optimizers and schedulers a checkpoint holds (anything with ``state_dict``), by name.
        The stage's learning-rate scheduler is ``self.scheduler``, NOT passed to
        ``accelerator.prepare`` (a prepared scheduler steps once per process per optimizer
        step): the lifecycle steps it once per optimizer step, so a schedule counts optimizer
        steps whatever the number of processes."""

    @abstractmethod
    def train_step(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """Train on one micro-batch; returns the detached loss terms, ``"loss"`` included."""

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def evaluate(self) -> None:  # noqa: B027 (optional hook)
        """Called after every optimizer step: evaluate / write samples when due."""

    def check_resume(self, saved: dict) -> None:  # noqa: B027 (optional hook)
        """Raise ValueError when a checkpoint with these saved options cannot resume."""

    def saved_options(self) -> dict:
        """The options written to the run folder and into every checkpoint."""
        return {**to_dict(self.options), "run_format": checkpoint.RUN_FORMAT}


def lr_factor(warmup: int, decay: int | None = None):
    """``LambdaLR`` factor: linear warm-up to 1 over ``warmup`` steps, then constant
    (``decay`` None) or a cosine decay to 0 over ``decay`` steps."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if decay is None:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / decay)))

    return factor


def make_accelerator(options: RunOptions) -> Accelerator:
    """Accelerator with TensorBoard logging into the run folder.

    Without CUDA every process runs on the CPU (several processes: gloo DDP) with
    ``cpu_threads`` torch threads (0: logical cores / processes, since ``accelerate launch``
    counts physical cores only), and keeps the memory each step frees for the next
    (:func:`train.core.cpu_memory.keep_freed_memory`). On CUDA, cuDNN autotunes every
    convolution shape once and TF32 is on unless ``--allow-tf32 false``.
    """
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        gradient_accumulation_steps=options.grad_accum,
        mixed_precision=options.mixed_precision,
        log_with="tensorboard",
        project_dir=str(options.output_dir),
    )
    if options.deterministic:
        torch.use_deterministic_algorithms(True)
    if accelerator.device.type == "cpu":
        cores = os.cpu_count() or 1
        torch.set_num_threads(options.cpu_threads or max(1, cores // accelerator.num_processes))
        keep_freed_memory()
    elif accelerator.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: autotune each convolution once
        torch.backends.cuda.matmul.allow_tf32 = options.allow_tf32
        torch.backends.cudnn.allow_tf32 = options.allow_tf32
    return accelerator


def data_workers(options: RunOptions, accelerator: Accelerator) -> int:
    """``--num-workers``, by default 0 on the CPU (the cores train) and 4 per process on CUDA
    (at most the cores per process)."""
    if options.num_workers is not None:
        return options.num_workers
    if accelerator.device.type != "cuda":
        return 0
    return min(4, max(1, (os.cpu_count() or 1) // accelerator.num_processes))


def launch(stage_class: type[Stage], options: RunOptions, dry_run: bool, resolved: dict) -> int:
    """An entry point's end: print the resolved options (``--dry-run``) or train the stage."""
    if dry_run:
        print(json.dumps({"options": to_dict(options), **resolved}, indent=2))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    with user_errors():  # bad input (exit 2) or a diverged run (exit 3): one line
        check_output_dir(options.output_dir)  # before anything is built or read
        check_grid_backend(options.grid_backend, "cuda" if torch.cuda.is_available() else "cpu")
        train(stage_class(options))
    return 0


def check_output_dir(run_dir: Path) -> None:
    """Refuse, before anything is built, a run folder that is a file or cannot be written."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"--output-dir {run_dir} is a file, not a folder") from None
    except OSError as error:  # under a file, read-only, no permission
        raise UserError(f"--output-dir {run_dir} cannot be created: {error.strerror}") from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise UserError(f"--output-dir {run_dir} is not writable")


def check_grid_backend(backend: str, device: str) -> None:
    """Refuse at start a ``--grid-backend triton`` that cannot run on ``device`` (the
    accelerator's: CUDA when there is a GPU)."""
    if backend != "triton":
        return
    if reason := grid_ops.triton_missing():
        raise UserError(f"--grid-backend triton: {reason}")
    if device != "cuda" and not grid_ops.INTERPRET:
        raise UserError(
            "--grid-backend triton needs a CUDA GPU (or Triton's interpreter, TRITON_INTERPRET=1,"
            f" slow) and this run is on the {device}: use --grid-backend auto or cpu"
        )


def train(stage: Stage) -> None:
    """Run ``stage`` from its latest checkpoint (or from scratch) to ``max_steps``."""
    acc, options = stage.accelerator, stage.options
    run_dir = options.output_dir.resolve()
    with contextlib.ExitStack() as held:
        if acc.is_main_process:
            held.enter_context(run_folder_lock(run_dir))  # one run per folder
        options.micro_batch(acc.num_processes)  # the batch splits over processes, micro-steps
        restored = restore(stage)
        if acc.is_main_process:  # written once the run is accepted
            (run_dir / "options.json").write_text(json.dumps(stage.saved_options(), indent=2))
            print(f"run folder: {run_dir}", flush=True)
        _train(stage, restored)
        if acc.is_main_process:
            print(f"run folder: {run_dir}", flush=True)


def _train(stage: Stage, restored: Path | None) -> None:
    acc, options = stage.accelerator, stage.options
    acc.init_trackers(stage.name, config={k: str(v) for k, v in to_dict(options).items()})
    if restored is None:
        set_seed(options.seed + acc.process_index)  # per-process noise streams
    else:  # replay exactly: this process's generators as they were at the save
        checkpoint.restore_rng(restored, acc.process_index)
    run_steps(stage)
    acc.end_training()


def run_steps(stage: Stage) -> None:
    """Optimizer steps ``stage.step + 1 .. max_steps``: every ``log_every`` steps the loss
    terms, averaged over processes, go to TensorBoard; a checkpoint every ``save_every``
    steps, at the end, and on SIGTERM / SIGINT (noticed on the next logging step), after
    which the loop stops."""
    acc, options = stage.accelerator, stage.options
    sampler = StepBatchSampler(
        len(stage.dataset),
        options.micro_batch(acc.num_processes),
        options.seed,
        stage.step,
        options.max_steps,
        acc.process_index,
        acc.num_processes,
        options.grad_accum,
        stage.hflip,
    )
    workers = data_workers(options, acc)
    loader = DataLoader(
        stage.dataset,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=acc.device.type == "cuda",
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(options.seed),
    )
    stop = StopFlag()
    progress = tqdm(
        total=options.max_steps,
        initial=stage.step,
        desc=stage.name,
        mininterval=5.0,
        disable=not acc.is_main_process,
        file=sys.stdout,
    )
    micro = 0
    for batch in loader:
        terms = stage.train_step(batch.to(acc.device, non_blocking=True))
        micro += 1
        if micro % options.grad_accum:
            continue
        stage.step += 1
        stage.scheduler.step()
        if stage.ema is not None:
            stage.ema.update()
        progress.update(1)
        maybe_poison(stage)
        last = stage.step == options.max_steps
        if stage.step % options.log_every == 0 or last:
            logged = {k: acc.reduce(v, "mean").item() for k, v in terms.items()}
            if not all(math.isfinite(v) for v in logged.values()):
                diverged(stage, f"loss terms {logged}")
            train_log = {f"train/{k}": v for k, v in logged.items()}
            acc.log({**train_log, "train/lr": stage.lr()}, step=stage.step)
            progress.set_postfix(loss=f"{logged['loss']:.4f}", refresh=False)
        stage.evaluate()
        # The all-reduce of the stop flag syncs with the device: only on logging steps.
        stopping = (stage.step % options.log_every == 0 or last) and stop.agreed(acc)
        if stage.step % options.save_every == 0 or last or stopping:
            if not finite_weights(stage):  # never saved: no non-finite checkpoint is latest
                diverged(stage, "weights")
            save(stage)
        maybe_kill(stage.step)
        if stopping:
            logging.getLogger(f"train.{stage.name}").info(
                "stopped by signal at step %d; checkpoint saved", stage.step
            )
            break
    progress.close()


class Diverged(ReportedError, RuntimeError):
    """Training reached non-finite values; the message names the checkpoint to resume."""

    exit_code = 3


def finite_weights(stage: Stage) -> bool:
    """Whether every weight of the stage's networks is finite (one host sync)."""
    flags = [p.isfinite().all() for net in stage.networks().values() for p in net.parameters()]
    return bool(torch.stack(flags).all()) if flags else True


def diverged(stage: Stage, what: str) -> None:
    """Stop the run: non-finite ``what`` at this step (checked on logging and saving steps,
    where the loop syncs with the device anyway)."""
    latest = checkpoint.latest_checkpoint(stage.options.output_dir)
    resume = (
        f"resume from {latest} (the last checkpoint, all finite) with a lower --lr"
        if latest is not None
        else "no checkpoint was saved: start again with a lower --lr"
    )
    raise Diverged(f"non-finite {what} at step {stage.step}; nothing saved; {resume}")


def save(stage: Stage) -> None:
    networks = stage.networks()
    state = {name: obj.state_dict() for name, obj in stage.stateful().items()}
    if stage.ema is not None:
        networks["ema"], state["ema_updates"] = stage.ema.model, stage.ema.updates
    checkpoint.save_checkpoint(
        stage.options.output_dir,
        stage.step,
        stage.accelerator,
        networks,
        state,
        stage.saved_options(),
        stage.options.keep_last,
    )


def restore(stage: Stage) -> Path | None:
    """Load the checkpoint ``--resume`` names (default: the run's latest); returns its path."""
    options = stage.options
    path = resume_path(options.resume, options.output_dir)
    if path is None:
        return None
    for name, config in stage.configs().items():
        checkpoint.check_saved_config(path, name, config)
    checkpoint.check_run_format(path)
    checkpoint.check_saved_options(path, options, options.RESUME_FIXED)
    saved_options = json.loads((path / "options.json").read_text())
    stage.check_resume(saved_options)
    networks = stage.networks()
    if stage.ema is not None:
        if not checkpoint.has_network(path, "ema"):
            raise UserError(
                f"checkpoint {path} holds no EMA weights (written before the stage kept "
                "them); this version resumes checkpoints that have them: start a new run in "
                "another --output-dir"
            )
        networks["ema"] = stage.ema.model
    state = checkpoint.load_checkpoint(path, networks)
    for name, obj in stage.stateful().items():
        obj.load_state_dict(state[name])
    if stage.ema is not None:
        stage.ema.updates = int(state["ema_updates"])
    stage.step = int(state["step"])
    apply_new_lr(stage, saved_options.get("lr"))
    report_changed_options(stage, saved_options)
    if stage.accelerator.is_main_process:
        aside = checkpoint.set_timeline_aside(options.output_dir, path)
        if aside is not None:
            logging.getLogger(f"train.{stage.name}").warning(
                "resumed from an earlier step: the later checkpoints moved to %s", aside
            )
    if stage.accelerator.is_main_process:
        logging.getLogger(f"train.{stage.name}").info(
            "resumed from %s at step %d", path, stage.step
        )
    return path


def apply_new_lr(stage: Stage, saved_lr: float | None) -> None:
    """A resume with another ``--lr`` (say, after a divergence) trains with it: every
    optimizer's learning rates and the schedule's base scale by new / saved."""
    new_lr = stage.options.lr
    if not saved_lr or saved_lr == new_lr:
        return
    ratio = new_lr / saved_lr
    for obj in stage.stateful().values():
        for group in getattr(obj, "param_groups", ()):
            group["lr"] *= ratio
            if "initial_lr" in group:
                group["initial_lr"] *= ratio
    stage.scheduler.base_lrs = [base * ratio for base in stage.scheduler.base_lrs]
    if stage.accelerator.is_main_process:
        logging.getLogger(f"train.{stage.name}").info(
            "--lr %g applied (the checkpoint trained with %g)", new_lr, saved_lr
        )


def report_changed_options(stage: Stage, saved: dict) -> None:
    """Name the options this resume changes (docs/training.md, "Options on resume"): each
    is applied from this step on and recorded in the run's ``options.json``. Those a
    checkpoint cannot change (``RESUME_FIXED``, the model configuration) were refused before."""
    now = to_dict(stage.options)
    changed = [
        f"{'--' + name.replace('_', '-')} {now[name]} (was {saved[name]})"
        for name in sorted(now)
        if name not in ("resume", "lr") and name in saved and saved[name] != now[name]
    ]
    if changed and stage.accelerator.is_main_process:
        logging.getLogger(f"train.{stage.name}").info(
            "resumed with changed options, applied from here on: %s", ", ".join(changed)
        )


def resume_path(resume: str, output_dir: Path) -> Path | None:
    """The checkpoint ``--resume`` names: 'auto' (the run's latest, if any), 'never' or a path."""
    if resume == "never":
        if checkpoint.latest_checkpoint(output_dir) is not None:
            raise UserError(
                f"{output_dir} already holds checkpoints; use another --output-dir or --resume auto"
            )
        return None
    if resume == "auto":
        latest = checkpoint.latest_intact_checkpoint(output_dir)
        if latest is None and checkpoint.latest_checkpoint(output_dir) is not None:
            raise UserError(
                f"every checkpoint under {output_dir} is damaged (see the warnings); start a "
                "new run in another --output-dir"
            )
        return latest
    path = Path(resume)
    if not (path / checkpoint.STATE_FILE).is_file():
        raise MissingInput(f"--resume {resume}: not a checkpoint folder")
    if reason := checkpoint.damage(path):
        raise UserError(f"--resume {resume}: the checkpoint is damaged: {reason}")
    return path


def maybe_kill(step: int) -> None:
    """SIGKILL this process after ``step`` when the fault-injection variable names it."""
    if os.environ.get(KILL_AT_STEP) == str(step):
        os.kill(os.getpid(), signal.SIGKILL)


def maybe_poison(stage: Stage) -> None:
    """Make a weight NaN after this step when the fault-injection variable names it."""
    if os.environ.get(NAN_AT_STEP) == str(stage.step):
        with torch.no_grad():
            network = next(iter(stage.networks().values()))
            next(network.parameters()).fill_(float("nan"))


class StopFlag:
    """Set by SIGTERM / SIGINT; the loop checks it between steps, saves and exits cleanly."""

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
