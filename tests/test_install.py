"""Installing the project puts only ``gridcodes`` into site-packages; the entry points find
``models/`` and ``train/`` from the checkout they live in, from any working directory."""

import importlib.metadata
import importlib.util
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.helpers import ROOT


def installed_setuptools_builds_it() -> bool:
    """Whether this environment's setuptools meets pyproject's build requirement (a plain
    venv's setuptools 65 cannot read ``license = "MIT"``)."""
    if importlib.util.find_spec("setuptools") is None:
        return False
    text = (ROOT / "pyproject.toml").read_text()
    needed = int(re.search(r'requires = \["setuptools>=(\d+)', text).group(1))
    return int(importlib.metadata.version("setuptools").split(".")[0]) >= needed


def test_the_wheel_installs_only_the_gridcodes_package(tmp_path):
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("gridcodes", "models", "train"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(tmp_path / "d")]
    if installed_setuptools_builds_it():  # else pip fetches the build requirement, as pip would
        build.append("--no-build-isolation")
    result = subprocess.run([*build, str(source)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = (tmp_path / "d").glob("gridcodes-*.whl")
    top_level = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {name for name in top_level if not name.endswith(".dist-info")} == {"gridcodes"}


def test_entry_points_run_from_another_directory_without_the_checkout_on_the_path(tmp_path):
    # -I: no PYTHONPATH and no working directory on sys.path, only the script's own checkout.
    for script in ("ae.py", "diffusion.py", "sample.py", "eval_ae.py", "eval_gen.py"):
        command = [sys.executable, "-I", str(ROOT / "train" / script), "--help"]
        result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 0, (script, result.stderr[-2000:])
        assert "usage:" in result.stdout
    probe = (
        f"import runpy; runpy.run_path({str(ROOT / 'train' / 'ae.py')!r}); "
        "import models; print(models.__file__)"
    )
    command = [sys.executable, "-I", "-c", probe]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert Path(result.stdout.splitlines()[-1]).parent == ROOT / "models"
