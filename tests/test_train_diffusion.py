"""Stage 2 end to end on the CPU: codes cache, training, exact resume, sampling to images."""

import logging
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from models import BRICSAutoencoder, get_preset
from models.errors import UserError
from tests.helpers import run_script
from train.core.checkpoint import find_autoencoder, latest_checkpoint, load_checkpoint
from train.core.codes import load_or_encode

ROOT = Path(__file__).parents[1]
AE_FAST = [
    "--preset",
    "tiny-32",
    "--batch-size",
    "4",
    "--gan-start",
    "1000",
    "--eval-images",
    "8",
    "--grid-backend",
    "torch",
    "--perceptual",
    "none",
    "--cpu-threads",
    "1",
    "--max-steps",
    "2",
    "--save-every",
    "2",
    "--eval-every",
    "2",
]
DIFFUSION_FAST = [
    "--batch-size",
    "8",
    "--grid-backend",
    "torch",
    "--cpu-threads",
    "1",
    "--deterministic",
    "true",
    "--sample-steps",
    "3",
    "--encode-batch",
    "64",
]


@pytest.fixture(scope="module")
def autoencoder_run(tmp_path_factory):
    """A stage-1 run of the tiny preset (two steps are enough for the pipeline)."""
    folder = tmp_path_factory.mktemp("ae")
    run_script("ae.py", "--output-dir", str(folder), *AE_FAST)
    return folder


def test_pipeline_autoencoder_codes_diffusion_samples_images(autoencoder_run, tmp_path):
    out = tmp_path / "diffusion"
    run_script(
        "diffusion.py",
        "--ae",
        str(autoencoder_run),
        "--output-dir",
        str(out),
        *DIFFUSION_FAST,
        "--max-steps",
        "4",
        "--save-every",
        "2",
        "--sample-every",
        "4",
    )
    assert (out / "codes_train.safetensors").is_file()
    assert (out / "samples" / "step_00000004.png").is_file()
    assert list(out.rglob("events.out.tfevents.*"))
    ckpt = latest_checkpoint(out)
    assert ckpt.name == "step_00000004" and (ckpt / "ema" / "config.json").is_file()
    assert load_checkpoint(ckpt, {})["ema_updates"] == 4
    result = run_script(
        "sample.py",
        "--run",
        str(out),
        "--n",
        "5",
        "--steps",
        "3",
        "--sampler",
        "ddim",
        "--batch-size",
        "2",
        "--grid-backend",
        "torch",
        "--out",
        str(tmp_path / "images"),
    )
    images = sorted((tmp_path / "images").glob("*.png"))
    assert [p.name for p in images] == [f"{i:06d}.png" for i in range(5)]
    assert np.asarray(Image.open(images[0])).shape == (32, 32, 3)
    assert (tmp_path / "images.png").is_file() and "wrote 5 images" in result.stdout
    # The key codes of those images, for eval_gen.py --codes: decoding them gives the images.
    codes = load_file(str(tmp_path / "images_codes.safetensors"))["codes"]
    assert codes.shape == (5, 4, 8, 8) and codes.min() >= 0 and codes.max() <= 1
    autoencoder = BRICSAutoencoder.from_pretrained(
        find_autoencoder(autoencoder_run), grid_backend="torch"
    ).eval()
    with torch.no_grad():
        decoded = autoencoder.decode(codes[:1]).clamp(-1, 1)
    pixels = (decoded[0].permute(1, 2, 0) + 1) * 127.5
    assert (pixels.round() - torch.from_numpy(np.array(Image.open(images[0])))).abs().max() <= 1


def test_diffusion_resume_after_sigkill_equals_an_uninterrupted_run(autoencoder_run, tmp_path):
    args = [
        *DIFFUSION_FAST,
        "--ae",
        str(autoencoder_run),
        "--max-steps",
        "6",
        "--save-every",
        "2",
        "--sample-every",
        "100",
    ]
    run_script("diffusion.py", "--output-dir", str(tmp_path / "a"), *args)
    env = {"BRICS_FAULT_KILL_AT_STEP": "3"}
    killed = run_script(
        "diffusion.py", "--output-dir", str(tmp_path / "b"), *args, env=env, check=False
    )
    assert killed.returncode == -signal.SIGKILL
    run_script("diffusion.py", "--output-dir", str(tmp_path / "b"), *args)
    for name in ("unet", "ema"):
        a = load_file(str(latest_checkpoint(tmp_path / "a") / name / "model.safetensors"))
        b = load_file(str(latest_checkpoint(tmp_path / "b") / name / "model.safetensors"))
        worst = max((a[k] - b[k]).abs().max().item() for k in a)
        assert worst <= 1e-6, (name, worst)


def test_stale_code_cache_is_detected_and_reencoded(tmp_path, caplog):
    config = get_preset("tiny-32")
    folders = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        folder = tmp_path / f"ae{seed}"
        BRICSAutoencoder(config, grid_backend="torch").save_pretrained(folder)
        folders.append(folder)
    cache = tmp_path / "codes.safetensors"
    first = load_or_encode(folders[0], "embedded", "val", cache, 64, "cpu", "torch")
    assert first.shape[1:] == (4, 8, 8) and first.min() >= 0 and first.max() <= 1
    assert first.dtype == torch.float32  # float16's step (up to 4.9e-4) blurs KL codes
    assert torch.equal(
        load_or_encode(folders[0], "embedded", "val", cache, 64, "cpu", "torch"), first
    )
    with caplog.at_level(logging.WARNING):
        second = load_or_encode(folders[1], "embedded", "val", cache, 64, "cpu", "torch")
    assert "stale" in caplog.text
    assert not torch.equal(first, second)
    cache.write_bytes(cache.read_bytes()[:-100])  # a damaged cache is encoded again
    with caplog.at_level(logging.WARNING):
        again = load_or_encode(folders[1], "embedded", "val", cache, 64, "cpu", "torch")
    assert f"code cache {cache} is damaged" in caplog.text and torch.equal(again, second)
    weights = folders[1] / "model.safetensors"  # a damaged autoencoder: one user error
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(UserError, match=rf"{weights} is damaged"):
        load_or_encode(folders[1], "embedded", "val", cache, 64, "cpu", "torch")
    (folders[1] / "config.json").write_text("{not json")
    with pytest.raises(UserError, match=r"config.json is damaged"):
        BRICSAutoencoder.load_config(folders[1])


def test_diffusion_dry_run_and_bad_flags(tmp_path):
    result = run_script("diffusion.py", "--dry-run", "--max-steps", "200")
    assert '"warmup_steps": 20' in result.stdout  # min(10000, max_steps // 10)
    bad = run_script("diffusion.py", "--ema-decay", "1.5", check=False)
    assert bad.returncode == 2 and "--ema-decay" in bad.stderr
    missing = run_script(
        "diffusion.py",
        "--ae",
        str(tmp_path / "nothing"),
        "--output-dir",
        str(tmp_path / "d"),
        check=False,
    )
    assert missing.returncode != 0 and "no stage-1 autoencoder" in missing.stderr
