"""Errors in what the user gives the entry points: one line naming the problem, exit code 2."""

import re

import pytest

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
