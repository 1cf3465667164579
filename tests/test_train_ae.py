"""Stage-1 training script end to end on the CPU: outputs, exact resume, crash safety, DDP."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from models.presets import ae_recipe
from tests.helpers import run_script
from train.core.checkpoint import (
    find_autoencoder,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
)

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "train" / "ae.py"
# A tiny model on the built-in photos; the GAN starts at step 2 so both updates are covered,
# and its penalty runs on the even steps (lazy R1 every 2 steps): both kinds of D step.
FAST = [
    "--preset",
    "tiny-32",
    "--batch-size",
    "4",
    "--gan-start",
    "2",
    "--reg-interval",
    "2",
    "--eval-images",
    "8",
    "--grid-backend",
    "torch",
    "--perceptual",
    "none",
    "--deterministic",
    "true",
    "--cpu-threads",
    "1",
]


def run(output, *args, env=None, check=True, launcher=None):
    return run_script(
        "ae.py", "--output-dir", str(output), *FAST, *args, env=env, check=check, launcher=launcher
    )


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = latest_checkpoint(run_dir)
    weights = load_file(str(ckpt / "autoencoder" / "model.safetensors"))
    weights.update(
        {f"D.{k}": v for k, v in load_file(str(ckpt / "discriminator.safetensors")).items()}
    )
    return weights


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    assert worst <= 1e-6, f"largest parameter difference {worst}"


def test_short_run_writes_logs_grids_metrics_and_checkpoints(tmp_path):
    result = run(
        tmp_path, "--max-steps", "6", "--eval-every", "3", "--save-every", "2", "--keep-last", "2"
    )
    assert f"run folder: {tmp_path.resolve()}" in result.stdout
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000004", "step_00000006"]
    assert list(tmp_path.rglob("events.out.tfevents.*")), "no TensorBoard log"
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [
        "step_00000003.png",
        "step_00000006.png",
    ]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["step"] == 6 and metrics["images"] == 8
    for key in ("psnr", "ssim"):
        assert set(metrics[key]) == {"mean", "std"}
    assert (
        0 < metrics["usage_rate"] <= 1
        and 0 < metrics["key_value_usage_rate"] <= 1
        and len(metrics["key_value_histogram"]) == 4
        and 0 <= metrics["key_code_min"] <= metrics["key_code_max"] <= 1
    )
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    ckpt = latest_checkpoint(tmp_path)
    saved = json.loads((ckpt / "options.json").read_text())
    assert saved["max_steps"] == 6 and saved["preset"] == "tiny-32"
    state = load_checkpoint(ckpt, {})
    assert state["step"] == 6 and {"ae_optimizer", "disc_optimizer", "scheduler"} <= set(state)
    # Stage 1 keeps EMA weights; evaluation, the codes cache and sampling use them.
    assert find_autoencoder(tmp_path) == ckpt / "ema" and state["ema_updates"] == 6
    ema = load_file(str(ckpt / "ema" / "model.safetensors"))
    current = load_file(str(ckpt / "autoencoder" / "model.safetensors"))
    assert ema.keys() == current.keys()
    assert any(not torch.equal(ema[k], current[k]) for k in ema)


def test_checkpoints_without_ema_weights_name_what_is_missing(tmp_path):
    run(tmp_path, "--max-steps", "2", "--save-every", "2", "--eval-every", "100")
    ckpt = latest_checkpoint(tmp_path)
    assert find_autoencoder(tmp_path) == ckpt / "ema"
    shutil.rmtree(ckpt / "ema")  # as written before stage 1 kept EMA weights
    (ckpt / "manifest.json").unlink()  # (and before checkpoints had a manifest)
    with pytest.raises(FileNotFoundError, match="holds no EMA weights") as error:
        find_autoencoder(tmp_path)
    assert str(ckpt / "autoencoder") in str(error.value)
    assert find_autoencoder(ckpt / "autoencoder") == ckpt / "autoencoder"
    resumed = run(tmp_path, "--max-steps", "3", check=False)
    assert resumed.returncode == 2 and "holds no EMA weights" in resumed.stderr


def test_paper_presets_start_the_gan_at_step_0():
    from train.ae import AEOptions

    for preset, start in (("church-64x64x4", 0), ("ffhq-16x16x8", 0), ("tiny-32", 30000)):
        options = AEOptions(preset=preset).with_recipe(ae_recipe(preset))
        assert options.gan_start == start, preset
    flagged = AEOptions(preset="church-64x64x4", gan_start=500)
    assert flagged.with_recipe(ae_recipe("church-64x64x4")).gan_start == 500


def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    args = ["--max-steps", "7", "--save-every", "2", "--eval-every", "100"]
    run(straight, *args)
    killed = run(interrupted, *args, env={"BRICS_FAULT_KILL_AT_STEP": "5"}, check=False)
    assert killed.returncode == -signal.SIGKILL
    assert latest_checkpoint(interrupted).name == "step_00000004"  # step 5 was never saved
    resumed = run(interrupted, *args)
    assert "resumed from" in resumed.stderr and "at step 4" in resumed.stderr
    assert_same_weights(final_weights(straight), final_weights(interrupted))


def test_sigkill_during_a_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    args = ["--max-steps", "6", "--save-every", "2", "--eval-every", "100"]
    killed = run(tmp_path, *args, env={"BRICS_FAULT_KILL_DURING_SAVE": "4"}, check=False)
    assert killed.returncode == -signal.SIGKILL
    assert (tmp_path / "checkpoints" / "step_00000004.tmp").is_dir()  # the interrupted save
    previous = latest_checkpoint(tmp_path)
    assert previous.name == "step_00000002"
    assert load_checkpoint(previous, {})["step"] == 2
    run(tmp_path, *args)  # resumes from step 2 and replaces the partial save
    assert [p.name for p in list_checkpoints(tmp_path)][-1] == "step_00000006"
    assert not (tmp_path / "checkpoints" / "step_00000004.tmp").exists()


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    command = [
        sys.executable,
        str(SCRIPT),
        "--output-dir",
        str(tmp_path),
        *FAST,
        "--max-steps",
        "100000",
        "--save-every",
        "1000",
        "--eval-every",
        "1000",
    ]
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 120
    while not list((tmp_path).rglob("events.out.tfevents.*")) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(2.0)  # a few steps
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-2000:]
    assert "stopped by signal" in stderr
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt is not None and 0 < load_checkpoint(ckpt, {})["step"] < 100000


def test_missing_lpips_weights_fail_at_start_with_the_cache_path(tmp_path):
    result = run(
        tmp_path / "run", "--perceptual", "lpips", env={"TORCH_HOME": str(tmp_path)}, check=False
    )
    assert result.returncode != 0
    assert str(tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth") in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_empty_folder_fails_before_building_a_model(tmp_path):
    (tmp_path / "images").mkdir()
    result = run(tmp_path / "run", "--data", str(tmp_path / "images"), check=False)
    assert result.returncode != 0 and "no readable images" in result.stderr


def test_dry_run_prints_the_resolved_config(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("max_steps: 42\nlr: 0.001\n")
    result = run(tmp_path / "run", "--config", str(config), "--lr", "0.0005", "--dry-run")
    resolved = json.loads(result.stdout)
    assert resolved["options"]["max_steps"] == 42 and resolved["options"]["lr"] == 0.0005
    assert resolved["model"]["image_size"] == 32 and resolved["learning_rate"] == 0.0005
    assert not (tmp_path / "run").exists()
    bad = run(tmp_path / "run", "--max-steps", "0", check=False)
    assert bad.returncode == 2 and "--max-steps must be >= 1, got 0" in bad.stderr


TWO_PROCESSES = [
    sys.executable,
    "-m",
    "accelerate.commands.launch",
    "--multi_gpu",
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
]


def test_two_processes_on_cpu(tmp_path):
    # accelerate's multi-process launcher; without CUDA the script runs gloo DDP on the CPU.
    # Warm-up over 8 optimizer steps: the lr of every step equals the one-process run's (a
    # prepared scheduler would step once per process and end the warm-up at step 4).
    args = ["--max-steps", "3", "--save-every", "3", "--eval-every", "3", "--log-every", "1"]
    args += ["--warmup-steps", "8"]
    run(tmp_path / "two", *args, launcher=TWO_PROCESSES)
    run(tmp_path / "one", *args)
    ckpt = latest_checkpoint(tmp_path / "two")
    assert {p.name for p in ckpt.glob("rng_rank*.pt")} == {"rng_rank0.pt", "rng_rank1.pt"}
    state = load_checkpoint(ckpt, {})
    assert state["step"] == 3 and state["scheduler"]["last_epoch"] == 3
    lrs = logged_lr(tmp_path / "two")
    assert lrs == logged_lr(tmp_path / "one") == pytest.approx([5e-4 * k / 8 for k in (2, 3, 4)])


def test_two_processes_with_the_gan_penalty_resume_exactly(tmp_path):
    # DDP and the penalty's double backward: the GAN from step 2, R1 on steps 2 and 4 (its
    # own D update), both processes' D gradients all-reduced; a run stopped after 3 steps
    # and resumed ends with the weights of one that was not.
    args = ["--save-every", "1", "--eval-every", "100", "--log-every", "1"]
    run(tmp_path / "straight", "--max-steps", "5", *args, launcher=TWO_PROCESSES)
    run(tmp_path / "resumed", "--max-steps", "3", *args, launcher=TWO_PROCESSES)
    resumed = run(tmp_path / "resumed", "--max-steps", "5", *args, launcher=TWO_PROCESSES)
    assert "resumed from" in resumed.stderr and "at step 3" in resumed.stderr
    assert_same_weights(final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed"))
    scalars = logged(tmp_path / "straight")  # step s is logged as s + 1
    assert sorted(scalars["train/r1"]) == [3, 5] and sorted(scalars["train/gan_d"]) == [3, 4, 5]


SYNC_PROBE = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import torch
from models.presets import ae_recipe
from train.ae import AEOptions, AutoencoderStage
from train.core.options import parse_options

options, _ = parse_options(AEOptions, "probe", sys.argv[2:])
stage = AutoencoderStage(options.with_recipe(ae_recipe(options.preset)))
acc = stage.accelerator
generator = torch.Generator().manual_seed(acc.process_index)  # each process its own images
flat = lambda module: torch.cat([p.detach().flatten() for p in module.parameters()])
start = flat(stage.disc)
for step in (0, 1):  # a penalty step (its own D update), then a plain one
    stage.step = step
    stage.train_step(torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1)
for name, module in (("D", stage.disc), ("autoencoder", stage.autoencoder)):
    mine = flat(module)
    both = acc.gather(mine[None])
    assert torch.equal(both[0], both[1]), f"{name}: the processes' weights differ"
assert not torch.equal(flat(stage.disc), start)
print("in sync", acc.process_index)
"""


def test_two_processes_train_the_gan_with_all_reduced_gradients(tmp_path):
    """DDP with D's two passes per step (the generator's pass on the reconstruction serving
    D's update too) and the penalty's double backward: processes that train on different
    images end every update with the same weights, so every gradient was all-reduced."""
    probe = tmp_path / "probe.py"
    probe.write_text(SYNC_PROBE)
    options = [*FAST, "--gan-start", "0", "--output-dir", str(tmp_path / "run")]
    command = [*TWO_PROCESSES, str(probe), str(ROOT), *options]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("in sync") == 2


def logged(run_dir: Path) -> dict[str, dict[int, float]]:
    """Every ``train/*`` scalar of a run's TensorBoard log: {tag: {step: value}}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = {}
    for events in run_dir.rglob("events.out.tfevents.*"):
        log = EventAccumulator(str(events))
        log.Reload()
        for tag in log.Tags()["scalars"]:
            scalars.setdefault(tag, {}).update({e.step: e.value for e in log.Scalars(tag)})
    return scalars


def logged_lr(run_dir: Path) -> list[float]:
    """The ``train/lr`` values of a run's TensorBoard log, by step."""
    lr = logged(run_dir)["train/lr"]
    return [lr[step] for step in sorted(lr)]


def test_channels_last_gives_the_same_losses(tmp_path):
    args = ["--max-steps", "3", "--eval-every", "100", "--log-every", "1", "--save-every", "3"]
    run(tmp_path / "nchw", *args)
    run(tmp_path / "cl", *args, "--channels-last", "true")
    plain, cl = logged(tmp_path / "nchw"), logged(tmp_path / "cl")
    for tag in ("train/loss", "train/gan_d", "train/r1"):
        assert plain[tag].keys() == cl[tag].keys(), tag
        for step in plain[tag]:  # the same math: only the convolutions' rounding differs
            assert cl[tag][step] == pytest.approx(plain[tag][step], rel=1e-3), (tag, step)


@pytest.mark.parametrize(
    "precision, flag, expected",
    [("no", None, False), ("bf16", None, True), ("bf16", False, False), ("no", True, True)],
)
def test_channels_last_defaults_to_on_under_mixed_precision(tmp_path, precision, flag, expected):
    from accelerate.state import AcceleratorState

    from train.ae import AEOptions, AutoencoderStage

    AcceleratorState._reset_state(reset_partial_state=True)  # a process-wide singleton
    options = AEOptions(
        output_dir=tmp_path,
        preset="tiny-32",
        perceptual="none",
        mixed_precision=precision,
        channels_last=flag,
    )
    try:
        stage = AutoencoderStage(options.with_recipe(ae_recipe("tiny-32")))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    weight = stage.accelerator.unwrap_model(stage.disc).blocks[0].conv1.weight  # 3 x 3
    layout = weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    assert stage.channels_last == expected == layout


def test_eval_entry_point_writes_metrics_and_a_grid(tmp_path):
    run(tmp_path, "--max-steps", "2", "--eval-every", "100", "--save-every", "2")
    out = tmp_path / "eval.json"
    command = [
        sys.executable,
        str(ROOT / "train" / "eval_ae.py"),
        "--checkpoint",
        str(tmp_path),
        "--limit",
        "10",
        "--batch-size",
        "4",
        "--grid-backend",
        "torch",
        "--out",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads(out.read_text())
    assert metrics["images"] == 10 and set(metrics["psnr"]) == {"mean", "std"}
    assert metrics["lpips_available"] in (True, False) and "PSNR" in result.stdout
    assert out.with_suffix(".png").is_file()


def test_resuming_with_another_model_names_the_field(tmp_path):
    run(tmp_path, "--max-steps", "1", "--eval-every", "100", "--save-every", "1")
    before = (tmp_path / "options.json").read_text()
    result = run(tmp_path, "--max-steps", "2", "--log2-table-size", "10", check=False)
    assert result.returncode == 2 and "log2_table_size: 10 != 12" in result.stderr
    assert (tmp_path / "options.json").read_text() == before  # a rejected resume writes nothing


def test_resuming_with_another_gan_loss_names_the_saved_one(tmp_path):
    # Runs begun when WGAN-GP was the default resume only with it, and say so.
    run(tmp_path, "--max-steps", "1", "--eval-every", "100", "--gan", "wgan-gp")
    result = run(tmp_path, "--max-steps", "2", check=False)
    assert result.returncode != 0
    assert "trained with --gan wgan-gp" in result.stderr and "resume with --gan wgan-gp" in (
        result.stderr
    )
    run(tmp_path, "--max-steps", "2", "--gan", "wgan-gp")


def test_checkpoint_of_an_earlier_run_format_names_it(tmp_path):
    # Run format 1 counted --batch-size per process and micro-step.
    run(tmp_path, "--max-steps", "2", "--eval-every", "100", "--save-every", "2")
    options_file = latest_checkpoint(tmp_path) / "options.json"
    saved = json.loads(options_file.read_text())
    assert saved["run_format"] == 2 and saved["batch_size"] == 4
    del saved["run_format"]
    options_file.write_text(json.dumps(saved))  # as written before
    (options_file.parent / "manifest.json").unlink()  # (and before checkpoints had a manifest)
    result = run(tmp_path, "--max-steps", "3", check=False)
    assert result.returncode == 2
    assert "run format 1, when --batch-size counted images per process" in result.stderr


def test_batch_size_is_per_optimizer_step_and_must_split_over_processes(tmp_path):
    result = run(
        tmp_path, "--max-steps", "1", "--batch-size", "3", "--grad-accum", "2", check=False
    )
    assert result.returncode != 0 and "--batch-size 3" in result.stderr


FAULTS_PROBE = """
import resource, sys, torch
from train.core.cpu_memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
def step():  # a step's activations: 24 blocks of 8 MiB and 2 of 64 MiB (above glibc's
    # largest mmap threshold, 32 MiB), written, then all freed
    blocks = [torch.ones(2**21) for _ in range(24)] + [torch.ones(2**24) for _ in range(2)]
    del blocks
for _ in range(4):  # the heap grows to the step's peak over the first steps
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_cpu_runs_keep_freed_memory_for_the_next_step():
    """After keep_freed_memory a step's freed blocks serve the next step without page
    faults (by default glibc trims or unmaps them: all 24 x 2048 + 2 x 16384 pages faulted
    in again per step; with it, one small block's worth at most)."""
    out = subprocess.run(
        [sys.executable, "-c", FAULTS_PROBE, "keep"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if out[0] != "True":
        pytest.skip("the C library is not glibc")
    assert int(out[1]) < 2048
