"""The Makefile's two commands as `make -n` prints them: what `make train` and `make test` would run on a
machine without .venv, and how TORCH_INDEX, DATA_DIR and ARGS reach those commands. (CI runs `make
test` itself, through .ci/run.)"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


# The Makefile's variables, which make also takes from the environment (.ci/run exports TORCH_INDEX=).
MAKE_VARIABLES = ("PYTHON", "VENV", "DATA_DIR", "TORCH_INDEX", "ARGS", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")


def dry_run(*args: str) -> list[str]:
    env = {name: value for name, value in os.environ.items() if name not in MAKE_VARIABLES}
    result = subprocess.run(["make", "--no-print-directory", "-n", *args], cwd=REPO, capture_output=True, text=True, check=True, env=env)
    return result.stdout.splitlines()


def test_make_train_creates_the_venv_installs_cpu_torch_first_then_trains_base_yaml(tmp_path):
    venv = tmp_path / "venv"
    lines = dry_run("train", f"VENV={venv}", "DATA_DIR=/cifar", "ARGS=--trainer.max_epochs 1")
    py = f"{venv}/bin/python"
    assert lines[0] == f"python3 -m venv {venv}"
    # PyTorch only where the venv has none, from the CPU index, before the package (which would pull CUDA's).
    assert lines[1] == (f'{py} -c "import torch" 2>/dev/null || {py} -m pip install torch torchvision '
                        "--index-url https://download.pytorch.org/whl/cpu")
    assert lines[2] == f'{py} -m pip install -e ".[export,serve]"'
    assert lines[3] == f"{py} -m cifar_lightning fit --config configs/base.yaml --data.data_dir /cifar --trainer.max_epochs 1"


def test_an_empty_torch_index_leaves_the_choice_to_pip(tmp_path):
    lines = dry_run("test", f"VENV={tmp_path / 'venv'}", "TORCH_INDEX=")
    torch_line = next(line for line in lines if "pip install torch" in line)
    assert "--index-url" not in torch_line
    assert lines[-2:] == [f'{tmp_path}/venv/bin/python -m pip install -e ".[dev]"', f"{tmp_path}/venv/bin/python -m pytest"]


def test_an_existing_venv_is_reused(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(shutil.which("python3"))
    assert not any("-m venv" in line for line in dry_run("train", f"VENV={venv}"))
