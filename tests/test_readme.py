"""Every shell command in README.md runs as written on a fresh clone, so the README cannot rot.

The commands run in order, in one scratch copy of what a clone holds (configs, the shipped
checkpoint, docs, benchmarks) with ``../shared`` beside it, so that they write nowhere in this
checkout. Each gets only small overrides that keep it short (``--trainer.limit_*``, a benchmark's
quick mode); ``serve`` is started, asked for its health route and stopped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli_runner import REPO, subprocess_env
from serving import Server, free_port, stop, wait_until_healthy

RUN = ("python -m cifar_lightning ", "python benchmarks/", "bash benchmarks/")
# Shown in the README but not run here: installs, the test suite itself, external tools.
NOT_RUN = ("pip ", "python -m venv", "python -m pytest", "tensorboard ", "$ curl")
SHORT = {
    "fit": ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2",
            "--trainer.limit_test_batches", "2", "--trainer.enable_progress_bar", "false"],
    "validate": ["--trainer.limit_val_batches", "2", "--trainer.enable_progress_bar", "false"],
    "test": ["--trainer.limit_test_batches", "2", "--trainer.enable_progress_bar", "false"],
    "predict": ["--trainer.limit_predict_batches", "2", "--trainer.enable_progress_bar", "false"],
    "report": ["--num_predictions", "8"],
    "export": [],
    "serve": [],
    "benchmarks/throughput.py": ["--steps", "2", "--repeats", "1", "--predict_batches", "1"],
    "benchmarks/onnx_throughput.py": ["--synthetic", "--repeats", "1"],
    "benchmarks/gpu_check.sh": ["--quick"],
}


def readme_commands() -> list[str]:
    """Shell lines of the README's code blocks (indented or fenced) that run this project."""
    commands, fenced = [], False
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        text = line.strip() if (fenced or line.startswith("    ")) else ""
        if text.startswith(RUN) and not text.startswith(NOT_RUN):
            commands.append(re.sub(r"\s+#.*$", "", text))
    return commands


def kind(command: str) -> str:
    words = command.split()
    return words[3] if words[:3] == ["python", "-m", "cifar_lightning"] else words[1]


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory, decode_cache: Path) -> Path:
    """What a fresh clone holds, beside a link to ``../shared``, sharing the session's decode cache."""
    root = tmp_path_factory.mktemp("readme")
    repo = root / "repo"
    repo.mkdir()
    for folder in ("configs", "docs", "benchmarks"):
        shutil.copytree(REPO / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "checkpoints").mkdir()
    for shipped in (REPO / "checkpoints").glob("*.ckpt"):
        shutil.copy(shipped, repo / "checkpoints")
    (repo / ".cache").mkdir()
    (repo / ".cache" / "cifar_lightning").symlink_to(decode_cache)
    (root / "shared").symlink_to(REPO.parent / "shared")
    return repo


def serve_answers_health(args: list[str], cwd: Path) -> None:
    """Start the README's ``serve`` on a free port, wait for LitServe's health route, stop it."""
    port = free_port()
    args = [str(port) if previous == "--port" else arg for previous, arg in zip(["", *args], args)]
    log = cwd / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, *args[1:]], cwd=cwd, env=subprocess_env(), stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until_healthy(Server(port, process, log))
    finally:
        stop(process)


def test_the_readme_shows_the_commands_a_newcomer_needs():
    kinds = {kind(command) for command in readme_commands()}
    assert {"fit", "test", "predict", "report", "export", "serve", "benchmarks/throughput.py"} <= kinds


@pytest.mark.slow
@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_runs_as_written(command: str, clone: Path, real_data: Path):
    args = command.split() + SHORT[kind(command)]
    if kind(command) == "serve":
        return serve_answers_health(args, clone)
    args = [sys.executable if arg == "python" and i == 0 else arg for i, arg in enumerate(args)]
    result = subprocess.run(args, cwd=clone, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{command}\nexit {result.returncode}\n{output[-4000:]}"
    assert "Traceback" not in output
