"""Running the CLI from tests, and what the tests share: the repository's paths, a tiny data set,
the arguments of a short ``fit``. Three ways to run, one helper each:

- ``run_process``: a real ``python -m cifar_lightning`` process that must succeed;
- ``run_in_process``: ``cli_main`` in this process (monkeypatches apply), returning what it returns;
- ``run_failing``: ``main`` in this process for input that must fail with one line and status 2.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cifar_lightning.cli import cli_main, main

from conftest import REPO

TESTS = Path(__file__).resolve().parent
BASE = str(REPO / "configs" / "base.yaml")
FAST = str(REPO / "configs" / "fast.yaml")
STEPS = 3  # training batches of 4 images per epoch: one step takes about a second on a busy 2-core CI machine


def run_process(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """A real ``python -m cifar_lightning`` process, which must exit 0."""
    result = subprocess.run([sys.executable, "-m", "cifar_lightning", *args], cwd=cwd, capture_output=True,
                            text=True, timeout=timeout, env=subprocess_env())
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def run_in_process(monkeypatch: pytest.MonkeyPatch, *args: str, run: bool = True):
    """``cli_main(args)`` in this process; ``run=False`` only builds trainer, model and data from the config."""
    monkeypatch.setattr(sys, "argv", ["cifar_lightning"])  # LightningCLI warns when argv and args both hold arguments
    return cli_main(list(args), run=run)


def run_failing(args: list[str], capsys: pytest.CaptureFixture) -> str:
    """What ``main`` printed on stderr for input it must refuse: one message, no traceback, status 2."""
    with pytest.raises(SystemExit) as stop:
        main(args)
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    assert "Traceback" not in err
    return err


def fit_args(data: Path, cache: Path, *extra: str) -> list[str]:
    return [
        "fit", "--config", BASE,
        "--data.data_dir", str(data), "--data.cache_dir", str(cache),
        "--data.val_size", "10", "--data.batch_size", "4", "--trainer.limit_train_batches", str(STEPS),
        "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", *extra,
    ]


def subprocess_env() -> dict[str, str]:
    # The worktree's package and the tests' fault_points module, ahead of any installed copy.
    path = os.pathsep.join([str(REPO), str(TESTS), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def start_fit(cwd: Path, args: list[str]) -> subprocess.Popen:
    # Ctrl-C's default action in the child even where the tests run in the background, whose
    # processes a shell starts with SIGINT ignored (and children inherit that).
    return subprocess.Popen(
        [sys.executable, "-m", "cifar_lightning", *args], cwd=cwd, env=subprocess_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
