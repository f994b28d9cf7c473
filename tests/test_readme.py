"""README.md as a newcomer runs it: a fresh clone, the README's commands in order, nothing left behind.

The clone is ``git clone`` of this repository into a temporary folder, at this checkout's HEAD, so
it holds only committed files. Its ``data/`` holds links to the real CIFAR-10 image folders
(``CIFAR10_DIR``, which CI provides; the tests skip without them), so the commands find their data
where the README says and download nothing. Every line of the README's ``bash`` blocks either runs,
literally as printed, in the clone, or is one a test cannot run (installs, the test suite,
TensorBoard: ``NOT_RUN``). Only the commands that train or score the whole data set get small
limits appended (``SHORT``: one epoch of two batches for ``fit``, two test batches for ``test``,
eight prediction pictures for ``report``), and ``serve`` a free port and the CPU, so its answer
compares with the README's to float32 rounding; none of them changes where a command writes.
``serve`` is sent the README's ``curl`` request, and must answer what the README prints; the
README's Python example runs as written and must print what its closing comments show. Last,
``git status --porcelain`` in the clone must be empty: nothing tracked changed, nothing untracked
left.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REAL_DATA, REPO
from serving import Client, Server, free_port, stop, wait_until_healthy

README = REPO / "README.md"
RUN = "python -m cifar_lightning "
# Shown in the README but not run here: installs, the test suite itself, TensorBoard's server, and
# the Makefile's set-up-and-run targets (`make test` is what CI runs, .ci/run).
NOT_RUN = ("python -m venv ", "pip ", "python -m pytest", "tensorboard ", "make ")
SHORT = {
    "fit": ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2",
            "--trainer.limit_test_batches", "2", "--trainer.enable_progress_bar", "false"],
    "validate": ["--trainer.limit_val_batches", "2", "--trainer.enable_progress_bar", "false"],
    "test": ["--trainer.limit_test_batches", "2", "--trainer.enable_progress_bar", "false"],
    "predict": ["--trainer.enable_progress_bar", "false"],
    "calibrate": [],
    "report": ["--num_predictions", "8"],
    "export": [],
    "serve": ["--accelerator", "cpu"],  # and --port, a free one
}
SERVE_DEFAULT_PORT = "8000"
CURL = re.compile(r"^\$ curl -F image=@(\S+) http://127\.0\.0\.1:(\d+)/predict$")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def fenced_blocks(language: str) -> list[list[str]]:
    """The lines of each of the README's fenced blocks in ``language``, in order."""
    blocks, current = [], None
    for line in README.read_text().splitlines():
        if current is None and line.strip() == f"```{language}":
            current = []
        elif current is not None and line.strip() == "```":
            blocks.append(current)
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def shell_lines() -> list[str]:
    """Every command line of the README's ``bash`` blocks: continuations joined, comments dropped."""
    lines, pending = [], ""
    for block in fenced_blocks("bash"):
        for line in block:
            line, pending = pending + line.strip(), ""
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            line = re.sub(r"\s+#.*$", "", line)
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def readme_commands() -> list[str]:
    return [line for line in shell_lines() if line.startswith(RUN)]


def kind(command: str) -> str:
    return command.split()[3]


def curl_example() -> tuple[str, str, str]:
    """(file, port, the answer printed) of the README's ``$ curl`` example."""
    for block in fenced_blocks("console"):
        for i, line in enumerate(block):
            if match := CURL.match(line.strip()):
                return match.group(1), match.group(2), block[i + 1].strip()
    raise AssertionError("the README shows no `$ curl -F image=@FILE http://127.0.0.1:PORT/predict` example")


def clone_env(clone: Path) -> dict[str, str]:
    # The clone's package, not this checkout's or an installed copy: what a user of the clone runs.
    return {**os.environ, "PYTHONPATH": str(clone), "OMP_NUM_THREADS": "1"}


def git(*args: str, cwd: Path) -> str:
    # safe.directory: CI may check the repository out as another user than the one running the tests.
    result = subprocess.run(["git", "-c", "safe.directory=*", *args], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, f"git {' '.join(args)}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh clone at this checkout's HEAD, with the real image folders linked into its ``data/``."""
    if not (REAL_DATA / "train").is_dir() or not (REAL_DATA / "test").is_dir():
        pytest.skip(f"real CIFAR-10 image folders not found at {REAL_DATA} (set CIFAR10_DIR)")
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a git checkout of the repository to clone")
    root = tmp_path_factory.mktemp("readme")
    repo = root / "repo"
    head = git("rev-parse", "HEAD", cwd=REPO).strip()
    git("clone", "--quiet", "--no-checkout", str(REPO), str(repo), cwd=root)
    git("checkout", "--quiet", head, cwd=repo)
    (repo / "data").mkdir()  # a folder, as a user's download makes it: git ignores data/
    for split in ("train", "test"):
        (repo / "data" / split).symlink_to(REAL_DATA / split, target_is_directory=True)
    return repo


def test_every_readme_command_runs_here_or_is_an_install():
    """No command of the README is silently skipped, and the newcomer's commands are all there."""
    for line in shell_lines():
        assert line.startswith(RUN) or line.startswith(NOT_RUN), f"README command neither run nor known: {line}"
        if line.startswith(RUN):
            assert kind(line) in SHORT, f"no SHORT entry for {kind(line)}: {line}"
    assert {"fit", "test", "predict", "report", "export", "serve"} <= {kind(c) for c in readme_commands()}


def serve_answers_the_readme_curl(args: list[str], clone: Path) -> None:
    """Start the README's ``serve`` on a free port, send it the README's curl request, compare, stop."""
    filename, readme_port, printed = curl_example()
    given = args[args.index("--port") + 1] if "--port" in args else SERVE_DEFAULT_PORT
    assert readme_port == given, f"the curl example asks port {readme_port}, the serve command listens on {given}"
    port = str(free_port())
    args = [port if previous == "--port" else arg for previous, arg in zip(["", *args], args)]
    if "--port" not in args:
        args += ["--port", port]
    log = clone.parent / "serve.log"  # outside the clone, which must stay as cloned
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, *args[1:]], cwd=clone, env=clone_env(clone), stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        server = Server(int(port), process, log)
        wait_until_healthy(server)
        answer = Client(int(port)).predict(Path(filename).name, (clone / filename).read_bytes(), "image/png")
    finally:
        stop(process)
    assert answer.status == 200, answer.body
    body = answer.body.decode()
    # The same JSON, written the same way (compact, full floats), numbers equal to float32 rounding.
    assert NUMBER.sub("N", body) == NUMBER.sub("N", printed), f"the service answered\n{body}\nthe README shows\n{printed}"
    got, shown = [float(x) for x in NUMBER.findall(body)], [float(x) for x in NUMBER.findall(printed)]
    assert got == pytest.approx(shown, abs=1e-5), f"the service answered\n{body}\nthe README shows\n{printed}"


@pytest.mark.slow
@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_runs_as_written(command: str, clone: Path):
    args = shlex.split(command) + SHORT[kind(command)]
    if kind(command) == "serve":
        return serve_answers_the_readme_curl(args, clone)
    result = subprocess.run([sys.executable, *args[1:]], cwd=clone, env=clone_env(clone), capture_output=True,
                            text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{command}\nexit {result.returncode}\n{output[-4000:]}"
    assert "Traceback" not in output


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(fenced_blocks("python"))))
def test_readme_python_runs_as_written_and_prints_what_it_shows(index: int, clone: Path):
    """Each Python block runs in the clone; the ``# ...`` lines that close it are what it prints."""
    block = fenced_blocks("python")[index]
    shown = []
    while block and block[-1].startswith("# "):
        shown.insert(0, block.pop()[2:])
    result = subprocess.run([sys.executable, "-c", "\n".join(block)], cwd=clone, env=clone_env(clone),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    if shown:
        assert result.stdout.splitlines() == shown


@pytest.mark.slow
def test_the_readme_leaves_the_clone_as_it_was_cloned(clone: Path):
    """Run after the commands above: they wrote only into folders git ignores."""
    assert git("status", "--porcelain", "--untracked-files=all", cwd=clone) == ""
