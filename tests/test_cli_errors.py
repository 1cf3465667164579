"""Errors in what the user gives the entry points: one line naming the problem, exit code 2."""

import functools
import re
from pathlib import Path

import pytest
import torch

from gridcodes import ops
from tests.helpers import run_script

CASES = [
    ("ae.py", ["--data", "/nonexistent/photos"], "image folder /nonexistent/photos does not exist"),
    ("ae.py", ["--data", "{empty}"], "no readable images under"),
    ("ae.py", ["--batch-size", "3", "--grad-accum", "2"], "--batch-size 3 (images per optimizer"),
    ("ae.py", ["--max-steps", "0"], "--max-steps must be >= 1, got 0"),
    ("diffusion.py", ["--ae", "/nonexistent/run"], "no stage-1 autoencoder under /nonexistent/run"),
    ("sample.py", ["--run", "/nonexistent/run"], "no diffusion checkpoint under /nonexistent/run"),
    ("eval_ae.py", ["--checkpoint", "/nonexistent/run"], "no stage-1 autoencoder under"),
]


@pytest.mark.parametrize("script, args, message", CASES, ids=[" ".join(c[1]) for c in CASES])
def test_a_bad_input_is_one_line_and_exit_code_2(tmp_path, script, args, message):
    (tmp_path / "empty").mkdir()
    args = [a.replace("{empty}", str(tmp_path / "empty")) for a in args]
    if script == "ae.py":
        args += ["--output-dir", str(tmp_path / "run")]
        args += [] if "--max-steps" in args else ["--max-steps", "1"]
    result = run_script(script, *args, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith(f"{script}: error:"), errors


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("cpu_threads", -1, "--cpu-threads must be >= 0, got -1"),
        ("eval_images", -1, "--eval-images must be >= 0, got -1"),  # failed at the 1st eval
        ("lr", float("inf"), "--lr must be a positive finite number, got inf"),
    ],
)
def test_numeric_options_are_checked_when_parsed(field, value, message):
    from train.ae import AEOptions

    with pytest.raises(ValueError, match=re.escape(message)):
        AEOptions(**{field: value})


def bad_config(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# Stage 1's entry point in this process: each input below fails before a model is built.
IN_PROCESS = {
    "missing config": (["--config", "{tmp}/absent.yaml"], "config file {tmp}/absent.yaml does"),
    "broken YAML": (["--config", "{broken.yaml}"], "is unreadable or not valid YAML"),
    "broken JSON": (["--config", "{broken.json}"], "broken.json is unreadable or not valid JSON"),
    "a list": (["--config", "{list.yaml}"], "must hold a mapping, got list"),
    "max_steps 2.5": (["--config", "{float.yaml}"], "max_steps: 2.5 in config file"),
    "lr a word": (["--config", "{word.yaml}"], "lr: 'fast' in config file"),
    "a preset that is not": (["--config", "{preset.yaml}"], "preset: 'nope' in config"),
    "an unknown key": (["--config", "{unknown.yaml}"], "unknown option(s) in config file"),
    "ema decay 1.5": (["--ema-decay", "1.5"], "need 0 <= --ema-decay < 1, got 1.5"),
    "table size 0": (["--log2-table-size", "0"], "--preset small-64 with these options:"),
    "output a file": (["--output-dir", "{file}"], "--output-dir {tmp}/file is a file"),
    "output under a file": (["--output-dir", "{file}/run"], "cannot be created: Not a directory"),
}
CONFIGS = {
    "broken.yaml": "max_steps: [1\n",
    "broken.json": '{"max_steps": 1,',
    "list.yaml": "- 1\n- 2\n",
    "float.yaml": "max_steps: 2.5\n",
    "word.yaml": "lr: fast\n",
    "preset.yaml": "preset: nope\n",
    "unknown.yaml": "max_step: 3\n",
}


@pytest.mark.parametrize("case", IN_PROCESS)
def test_bad_config_files_options_and_folders_are_one_line(tmp_path, case, capsys):
    from train.ae import main

    args, message = IN_PROCESS[case]
    names = {"{tmp}": str(tmp_path), "{file}": str(tmp_path / "file")}
    names.update({f"{{{n}}}": bad_config(tmp_path, n, text) for n, text in CONFIGS.items()})
    (tmp_path / "file").write_text("not a folder")
    fill = lambda text: functools.reduce(lambda t, kv: t.replace(*kv), names.items(), text)
    with pytest.raises(SystemExit) as exit_:
        main([fill(a) for a in args] + ["--max-steps", "1"] * ("max_steps" not in case))
    stderr = capsys.readouterr().err
    assert exit_.value.code == 2, stderr
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and fill(message) in errors[0], stderr


def test_only_user_errors_lose_their_traceback(capsys):
    from models.errors import MissingInput, UserError
    from train.core.loop import Diverged
    from train.core.options import user_errors

    cases = [(UserError("bad\n  --x 3"), 2), (MissingInput("no"), 2), (Diverged("nan"), 3)]
    for error, code in cases:
        with pytest.raises(SystemExit) as exit_, user_errors():
            raise error
        assert exit_.value.code == code
    assert capsys.readouterr().err.splitlines()[0].endswith("error: bad --x 3")
    with pytest.raises(ValueError, match="a bug deep in the model"), user_errors():
        raise ValueError("a bug deep in the model")  # not the input's fault: traceback kept
    with pytest.raises(FileNotFoundError), user_errors():
        Path("/nonexistent/internal/file").read_text()


def test_the_triton_grid_backend_without_a_gpu_is_refused_at_start(tmp_path, capsys, monkeypatch):
    from train.ae import main

    monkeypatch.setattr(ops, "INTERPRET", False)  # the tests run Triton's interpreter
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_:
        main(["--grid-backend", "triton", "--output-dir", str(tmp_path), "--max-steps", "1"])
    assert exit_.value.code == 2
    assert "--grid-backend triton needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "checkpoints").exists()


def test_a_device_that_is_not_here_is_refused_when_parsed(monkeypatch):
    import argparse

    from train.core.options import parse_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert parse_device("cpu") == "cpu"
    with pytest.raises(argparse.ArgumentTypeError, match="cuda:1: this machine has no CUDA GPU"):
        parse_device("cuda:1")
    with pytest.raises(argparse.ArgumentTypeError, match="not a torch device: 'gpu0'"):
        parse_device("gpu0")
