"""Nothing lost around checkpoints: one timeline per run folder, one run per folder, atomic
re-saves, metadata written once a run is accepted, and divergence stopped before it is saved."""

import json
import os
import subprocess
import sys

import pytest

from tests.test_train_ae import run
from train.core import checkpoint
from train.core.lock import LOCK_FILE, RunFolderInUse, run_folder_lock

QUICK = ["--eval-every", "100", "--save-every", "1", "--keep-last", "2"]


def names(paths) -> list[str]:
    return [p.name for p in paths]


def test_resuming_an_earlier_step_sets_the_later_ones_aside_and_prunes_its_own(tmp_path):
    run(tmp_path, "--max-steps", "3", *QUICK)
    assert names(checkpoint.list_checkpoints(tmp_path)) == ["step_00000002", "step_00000003"]
    resumed = run(
        tmp_path,
        "--max-steps",
        "4",
        *QUICK,
        "--resume",
        str(tmp_path / "checkpoints" / "step_00000002"),
    )
    assert "later checkpoints moved to" in resumed.stderr
    # The new timeline: its own step 3 and 4, pruned by step; the abandoned step 3 kept aside.
    assert names(checkpoint.list_checkpoints(tmp_path)) == ["step_00000003", "step_00000004"]
    (aside,) = (tmp_path / "checkpoints").glob("abandoned_after_step_00000002_*")
    assert names(aside.iterdir()) == ["step_00000003"]
    assert checkpoint.latest_checkpoint(tmp_path).name == "step_00000004"


def test_a_non_finite_weight_stops_the_run_naming_the_last_finite_checkpoint(tmp_path):
    env = {"BRICS_FAULT_NAN_AT_STEP": "3"}
    result = run(tmp_path, "--max-steps", "5", *QUICK, "--log-every", "1", env=env, check=False)
    assert result.returncode == 3, result.stderr[-2000:]
    (line,) = [line for line in result.stderr.splitlines() if "error:" in line]
    assert "non-finite" in line and "at step 3" in line and "step_00000002" in line, line
    assert checkpoint.latest_checkpoint(tmp_path).name == "step_00000002"


def test_one_run_per_folder_and_a_dead_holders_lock_is_taken_over(tmp_path, caplog):
    with run_folder_lock(tmp_path):
        holder = json.loads((tmp_path / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid()
        refused = pytest.raises(RunFolderInUse, match=rf"in use by pid {os.getpid()} on host")
        with refused, run_folder_lock(tmp_path):
            pass
    assert not (tmp_path / LOCK_FILE).exists()  # released
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": int(dead.stdout), "host": holder["host"]}))
    with run_folder_lock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert "taking over the lock" in caplog.text


def test_a_save_killed_between_its_renames_keeps_the_older_copy(tmp_path):
    # The window of a re-save: the old step_K moved aside, the new one not yet renamed in.
    folder = tmp_path / "checkpoints" / "step_00000004.replaced"
    folder.mkdir(parents=True)
    (folder / checkpoint.STATE_FILE).write_bytes(b"state")
    assert names(checkpoint.list_checkpoints(tmp_path)) == ["step_00000004"]
    assert not folder.exists()


def fake_checkpoint(run_dir, step: int):
    import torch
    from safetensors.torch import save_file

    folder = checkpoint.checkpoint_dir(run_dir, step)
    folder.mkdir(parents=True)
    save_file({"w": torch.ones(64)}, str(folder / "discriminator.safetensors"))
    torch.save({"step": step}, folder / checkpoint.STATE_FILE)
    torch.save({"torch": torch.get_rng_state()}, folder / "rng_rank0.pt")
    checkpoint.write_manifest(folder)
    return folder


def truncate(path):
    path.write_bytes(path.read_bytes()[:-10])


def edit_header(path):
    data = bytearray(path.read_bytes())
    data[8] = ord("!")  # the first byte of the JSON header
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated safetensors": ("discriminator.safetensors", truncate),
    "zero-byte safetensors": ("discriminator.safetensors", lambda p: p.write_bytes(b"")),
    "edited header": ("discriminator.safetensors", edit_header),
    "truncated training state": (checkpoint.STATE_FILE, truncate),
    "missing rng file": ("rng_rank0.pt", lambda p: p.unlink()),
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_resume_auto_falls_back_past_a_damaged_checkpoint(tmp_path, kind, caplog):
    from train.core.loop import resume_path

    fake_checkpoint(tmp_path, 1)
    intact = fake_checkpoint(tmp_path, 2)
    damaged = fake_checkpoint(tmp_path, 3)
    name, spoil = DAMAGE[kind]
    spoil(damaged / name)
    assert checkpoint.damage(intact) is None
    assert name in checkpoint.damage(damaged)
    assert resume_path("auto", tmp_path) == intact
    assert f"skipping damaged checkpoint {damaged}" in caplog.text
    with pytest.raises(ValueError, match=r"--resume .*step_00000003: the checkpoint is damaged"):
        resume_path(str(damaged), tmp_path)
    for path in checkpoint.list_checkpoints(tmp_path)[:-1]:
        spoil(path / name)
    with pytest.raises(ValueError, match=r"every checkpoint under .* is damaged"):
        resume_path("auto", tmp_path)


def test_a_resume_with_changed_options_trains_with_them_and_records_them(tmp_path):
    import torch

    run(tmp_path, "--max-steps", "1", *QUICK)
    saved = json.loads((checkpoint.latest_checkpoint(tmp_path) / "options.json").read_text())["lr"]
    changed = ["--batch-size", "2", "--ema-decay", "0.99"]
    resumed = run(tmp_path, "--max-steps", "2", *QUICK, "--lr", str(saved / 4), *changed)
    assert f"--lr {saved / 4:g} applied (the checkpoint trained with {saved:g})" in resumed.stderr
    applied = "applied from here on: --batch-size 2 (was 4), --ema-decay 0.99 (was 0.999)"
    assert applied in resumed.stderr, resumed.stderr[-3000:]
    recorded = json.loads((tmp_path / "options.json").read_text())
    assert (recorded["batch_size"], recorded["ema_decay"]) == (2, 0.99)
    latest = checkpoint.latest_checkpoint(tmp_path)
    state = torch.load(latest / checkpoint.STATE_FILE, weights_only=True)
    assert state["scheduler"]["base_lrs"] == [pytest.approx(saved / 4)]
    assert json.loads((tmp_path / "options.json").read_text())["lr"] == pytest.approx(saved / 4)


def test_stage_2_resumes_only_on_its_autoencoder_and_replaced_images_are_re_encoded(tmp_path):
    from PIL import Image

    from train.core.codes import data_identity
    from train.diffusion import check_same_autoencoder

    saved = {"autoencoder": "/runs/a/ema", "autoencoder_sha256": "a" * 64}
    check_same_autoencoder(saved, "a" * 64, "/runs/a")  # the same weights resume
    with pytest.raises(ValueError, match=r"another autoencoder \(/runs/a/ema, SHA-256 aaaa"):
        check_same_autoencoder(saved, "b" * 64, "/runs/b")
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (8, 8), (0, 0, 0)).save(folder / "0.png")
    before = data_identity(str(folder), "train")
    Image.new("RGB", (16, 16), (255, 0, 0)).save(folder / "0.png")  # replaced, same name
    assert data_identity(str(folder), "train") != before


class OneProcess:
    """What ``save_checkpoint`` asks of an accelerator, for one process."""

    is_main_process, process_index = True, 0

    def wait_for_everyone(self) -> None:
        pass


def test_a_full_disk_during_a_save_is_one_line_and_leaves_no_partial_folder(tmp_path, monkeypatch):
    import torch

    from models.errors import UserError

    intact = fake_checkpoint(tmp_path, 1)
    real_write = checkpoint.write_file

    def full_disk(path, data):  # the kernel's own ENOSPC: /dev/full accepts nothing
        real_write("/dev/full" if path.name == checkpoint.STATE_FILE else path, data)

    monkeypatch.setattr(checkpoint, "write_file", full_disk)
    net = {"discriminator": torch.nn.Linear(4, 4)}
    final = checkpoint.checkpoint_dir(tmp_path, 2)
    with pytest.raises(UserError, match=rf"no space left on device while saving to {final} "):
        checkpoint.save_checkpoint(tmp_path, 2, OneProcess(), net, {}, {"lr": 1.0}, 3)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [intact.name]
    assert checkpoint.damage(intact) is None and checkpoint.latest_checkpoint(tmp_path) == intact
    monkeypatch.setattr(checkpoint, "write_file", real_write)  # space freed: the save works
    checkpoint.save_checkpoint(tmp_path, 2, OneProcess(), net, {}, {"lr": 1.0}, 3)
    assert checkpoint.latest_checkpoint(tmp_path) == final and checkpoint.damage(final) is None


def test_a_resume_with_another_seed_is_refused_naming_the_saved_one(tmp_path):
    from models.errors import UserError
    from train.ae import AEOptions

    folder = fake_checkpoint(tmp_path, 1)
    (folder / "options.json").write_text(json.dumps({"seed": 0, "gan": "nonsaturating-r1"}))
    checkpoint.check_saved_options(folder, AEOptions(seed=0), AEOptions.RESUME_FIXED)
    with pytest.raises(UserError, match=r"trained with --seed 0 \(this run asks for 5\)"):
        checkpoint.check_saved_options(folder, AEOptions(seed=5), AEOptions.RESUME_FIXED)
