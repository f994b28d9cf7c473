"""Issue 5: interruption, exact resumption, DDP, and one clear message for every bad input.

The fault tests run the real CLI in subprocesses (SIGTERM, SIGINT and SIGKILL land mid-epoch,
where ``fault_points.PauseMidEpoch`` waits for them); the bad-input tests call ``cli_main`` in
this process and read what it prints. Everything trains a few batches of tiny synthetic data.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import write_image_folder

from cifar_lightning.checkpoint_io import AtomicCheckpointIO
from cifar_lightning.cli import cli_main, main
from cifar_lightning.module import CIFAR10Classifier

REPO = Path(__file__).resolve().parents[1]
BASE_CONFIG = str(REPO / "configs" / "base.yaml")
TESTS = Path(__file__).resolve().parent
N_TRAIN = 10  # per class: 100 training images, 10 held out
STEPS = 3  # training batches of 4 images per epoch: one step takes about a second on a busy 2-core CI machine


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("data") / "cifar10", n_train=N_TRAIN, n_test=2)


def fit_args(data: Path, cache: Path, *extra: str) -> list[str]:
    return [
        "fit", "--config", BASE_CONFIG,
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
    return subprocess.Popen(
        [sys.executable, "-m", "cifar_lightning", *args], cwd=cwd, env=subprocess_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            out, err = process.communicate(timeout=30)
            pytest.fail(f"{path.name} never appeared (exit {process.returncode}):\n{err[-3000:]}")
        time.sleep(0.1)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# --- interruption and resumption -------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_ctrl_c_and_sigkill_mid_epoch_then_resume_finishes(data: Path, tmp_path: Path) -> None:
    """Each fault mid-epoch leaves a loadable last.ckpt; resuming after the last one finishes every epoch."""
    args = fit_args(data, tmp_path / "cache", "--trainer.max_epochs", "4")
    resume = [*args, "--ckpt_path", "last"]
    last = tmp_path / "checkpoints" / "base" / "last.ckpt"

    for epoch, signum, pause_at in ((1, signal.SIGTERM, []), (2, signal.SIGINT, resume), (3, signal.SIGKILL, resume)):
        marker = tmp_path / f"paused{epoch}"
        pause = f'{{"class_path": "fault_points.PauseMidEpoch", "init_args": {{"epoch": {epoch}, "marker": "{marker.name}"}}}}'
        process = start_fit(tmp_path, [*(pause_at or args), f"--trainer.callbacks+={pause}"])
        wait_for(marker, process)
        process.send_signal(signum)
        _, err = process.communicate(timeout=120)
        saved = load(last)
        if signum == signal.SIGKILL:
            assert process.returncode == -signal.SIGKILL
            # Nothing runs on SIGKILL: last.ckpt is the one written at the end of the previous epoch.
            assert saved["epoch"] == epoch - 1 and saved["global_step"] == STEPS * epoch
        else:
            assert process.returncode == 128 + signum, err[-3000:]
            assert "Traceback" not in err
            # Saved mid-epoch, two batches into the epoch, and the notice says how to go on.
            step = STEPS * epoch + 2
            assert saved["global_step"] == step
            assert f"Training stopped by {signum.name} at epoch {epoch}, step {step}. Saved {last}." in err
            assert "Resume with:\n  python -m cifar_lightning fit --config" in err
            assert err.rstrip().endswith("--ckpt_path last")

    process = start_fit(tmp_path, resume)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    final = load(last)
    assert final["epoch"] == 3 and final["global_step"] == 4 * STEPS  # no batch lost or repeated
    assert "Test accuracy of the best checkpoint" in out


def test_sigkill_while_saving_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    """A process killed halfway through writing last.ckpt leaves the previous last.ckpt intact."""
    script = textwrap.dedent(
        """
        import os, signal, sys, torch
        from cifar_lightning.checkpoint_io import AtomicCheckpointIO

        io, path = AtomicCheckpointIO(), sys.argv[1]
        io.save_checkpoint({"state_dict": {"w": torch.zeros(100_000)}, "epoch": 1}, path)
        real_save = torch.save

        def save_half_then_die(obj, file, *args, **kwargs):
            real_save(obj, file, *args, **kwargs)
            file.flush()
            file.truncate(file.tell() // 2)  # half of the new checkpoint is on disk ...
            os.kill(os.getpid(), signal.SIGKILL)  # ... when the process is killed

        torch.save = save_half_then_die
        io.save_checkpoint({"state_dict": {"w": torch.ones(100_000)}, "epoch": 2}, path)
        """
    )
    last = tmp_path / "last.ckpt"
    result = subprocess.run([sys.executable, "-c", script, str(last)], env=subprocess_env(), timeout=120)
    assert result.returncode == -signal.SIGKILL
    survivor = load(last)
    assert survivor["epoch"] == 1 and torch.equal(survivor["state_dict"]["w"], torch.zeros(100_000))
    (partial,) = tmp_path.glob(".last.ckpt.*.tmp")  # the half-written file never took the real name
    with pytest.raises(Exception):
        load(partial)


@pytest.fixture
def deterministic_restored():
    yield
    torch.use_deterministic_algorithms(False)


def test_two_runs_are_identical_and_resuming_at_an_epoch_boundary_changes_nothing(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deterministic_restored
) -> None:
    monkeypatch.setattr(sys, "argv", ["cifar_lightning"])

    def fit(name: str, *extra: str):
        (tmp_path / name).mkdir(exist_ok=True)
        monkeypatch.chdir(tmp_path / name)
        cli = cli_main(fit_args(data, tmp_path / "cache", "--trainer.deterministic", "true",
                                "--trainer.callbacks+=fault_points.RecordRank", *extra))
        assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
        record = json.loads((tmp_path / name / "rank0.json").read_text())  # metrics at the end of fit
        return record["metrics"], load(tmp_path / name / "checkpoints" / "base" / "last.ckpt")

    metrics_a, ckpt_a = fit("a", "--trainer.max_epochs", "2")
    metrics_b, ckpt_b = fit("b", "--trainer.max_epochs", "2")
    fit("c", "--trainer.max_epochs", "1")
    metrics_c, ckpt_c = fit("c", "--trainer.max_epochs", "2", "--ckpt_path", "last")

    assert {"val/acc", "val/loss", "train/loss"} <= metrics_a.keys()
    assert metrics_a == metrics_b == metrics_c
    for run, other in (("b", ckpt_b), ("c", ckpt_c)):
        assert other["global_step"] == ckpt_a["global_step"] == 2 * STEPS
        for name, weight in ckpt_a["state_dict"].items():
            assert torch.equal(weight, other["state_dict"][name]), name
        assert str(other["optimizer_states"]) == str(ckpt_a["optimizer_states"])
        # Early stopping, checkpoint and RNG state alike, up to the run's own folder name and
        # ModelCheckpoint's current_score, which Lightning does not restore (it is never read back).
        for key, state in ckpt_a["callbacks"].items():
            state, resumed = dict(state), dict(other["callbacks"][key])
            state.pop("current_score", None), resumed.pop("current_score", None)
            assert str(resumed).replace(f"{tmp_path}/{run}/", f"{tmp_path}/a/") == str(state), key


# --- distributed ------------------------------------------------------------------------------


@pytest.mark.slow
def test_ddp_two_cpu_processes(data: Path, tmp_path: Path) -> None:
    """fit then predict with 2 gloo processes: synchronised metrics, disjoint shards, rank 0 writes."""
    args = fit_args(
        data, tmp_path / "cache", "--trainer.max_epochs", "2", "--trainer.strategy", "ddp",
        "--trainer.devices", "2", "--trainer.callbacks+=fault_points.RecordRank",
    )
    process = start_fit(tmp_path, args)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 and r["train_sampler"] == "DistributedSampler" for r in ranks)
    # Metrics are synchronised: every rank ends with the same numbers.
    assert ranks[0]["metrics"] == ranks[1]["metrics"] and "val/acc" in ranks[0]["metrics"]
    # The same seeded validation split on both ranks; the samplers split both sets without overlap.
    assert ranks[0]["val_labels"] == ranks[1]["val_labels"]
    for key, size in (("train_indices", 90), ("val_indices", 10)):
        first, second = (set(r[key]) for r in ranks)
        assert not first & second and first | second == set(range(size))
    # Rank zero alone wrote checkpoints, logs and the test result.
    best, last = sorted(p.name for p in (tmp_path / "checkpoints" / "base").iterdir())
    assert best.startswith("epoch") and last == "last.ckpt"
    assert [p.name for p in (tmp_path / "lightning_logs" / "base").iterdir()] == ["version_0"]
    assert out.count("Test accuracy of the best checkpoint") == 1

    # predict under DDP: each process predicts a shard, one CSV holds every test image once.
    predict = [a for a in args if a != "--trainer.callbacks+=fault_points.RecordRank"]
    predict[0] = "predict"
    process = start_fit(tmp_path, [*predict, "--ckpt_path", str(tmp_path / "checkpoints" / "base" / "last.ckpt")])
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    (csv_file,) = (tmp_path / "predictions").iterdir()
    rows = csv_file.read_text().splitlines()[1:]
    assert sorted(int(row.split(",")[0]) for row in rows) == list(range(20))


# --- bad input: one message, exit status 2, no traceback --------------------------------------


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as stop:
        main(args)
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    assert "Traceback" not in err
    return err


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cifar_lightning"])  # the arguments come from cli_main(args)
    return tmp_path


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        ("missing", "The data folder {data} does not exist."),
        ("empty", "No CIFAR-10 data found in {data}."),
        ("missing_offline", "Could not download CIFAR-10 into {data} (NetworkDisabled: [Errno -3] Temporary failure"),
        ("empty_offline", "Could not download CIFAR-10 into {data} (NetworkDisabled: [Errno -3] Temporary failure"),
        ("missing_class", "missing ['truck'], unexpected none"),
        ("extra_class", "missing none, unexpected ['zebra']"),
        ("misnamed_class", "missing ['cat'], unexpected ['cats']"),
        ("junk_files", "2 of 21 files are not readable 32x32 images:"),
        ("empty_class", "The class folder {data}/train/cat holds no files."),
        ("val_too_large", "val_size=20 leaves no training images: the training split has 20."),
    ],
)
def test_bad_data_is_one_clear_message(breakage: str, expected: str, cwd: Path, capsys) -> None:
    data = cwd / "cifar10"
    if breakage not in ("missing", "missing_offline"):
        data.mkdir()
    if breakage not in ("missing", "missing_offline", "empty", "empty_offline"):
        write_image_folder(data, n_train=2, n_test=1)
    if breakage == "missing_class":
        for split in ("train", "test"):
            for file in (data / split / "truck").iterdir():
                file.unlink()
            (data / split / "truck").rmdir()
    elif breakage == "extra_class":
        (data / "train" / "zebra").mkdir()
    elif breakage == "misnamed_class":
        (data / "train" / "cat").rename(data / "train" / "cats")
    elif breakage == "empty_class":
        for file in (data / "train" / "cat").iterdir():
            file.unlink()
    elif breakage == "junk_files":
        (data / "train" / "cat" / "notes.txt").write_text("not an image")
        png = (data / "train" / "dog" / "00010.png").read_bytes()
        (data / "train" / "dog" / "00010.png").write_bytes(png[: len(png) // 2])
    download = "true" if breakage.endswith("offline") else "false"  # the network is faked offline (conftest)
    err = run_cli(fit_args(data, cwd / "cache", "--trainer.max_epochs", "1", "--data.val_size", "20",
                           "--data.download", download), capsys)
    assert expected.format(data=data) in err
    if breakage.endswith("offline"):  # the failed download leaves the folder as it found it
        assert data.exists() == (breakage == "empty_offline") and not list(data.glob("*"))
    assert not (cwd / "lightning_logs").exists() or not list((cwd / "lightning_logs").rglob("version_*"))
    if breakage == "junk_files":
        assert "notes.txt" in err and "00010.png" in err and "never silently skipped" in err
    assert not list(cwd.glob("checkpoints/*.ckpt"))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model.lr", "0"], "Invalid model settings: lr must be greater than 0, got 0.0."),
        (["--model.lr", "-0.1"], "Invalid model settings: lr must be greater than 0, got -0.1."),
        (["--data.batch_size", "0"], "batch_size must be at least 1, got 0."),
        (["--data.batch_size", "-4"], "batch_size must be at least 1, got -4."),
        (["--model.dense_dropout", "1.0"], "Invalid model settings: dropout rates must be in [0, 1), got 1.0."),
        (["--model.conv_dropout", "[0.2, -0.1, 0.3]"],
         "Invalid model settings: dropout rates must be in [0, 1), got -0.1."),
        (["--data.val_size", "-5"], "val_size must be at least 1 (images held out for validation), got -5."),
    ],
)
def test_settings_out_of_range(args: list[str], expected: str, data: Path, cwd: Path, capsys) -> None:
    err = run_cli(fit_args(data, cwd / "cache", *args), capsys)
    assert f"error: {expected}" in err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model.lrr", "0.1"], "lrr"),
        (["--trainer.max_epochz", "3"], "max_epochz"),
        (["--model.lr", "fast"], "model.lr"),
        (["--data.batch_size", "1.5"], "data.batch_size"),
    ],
)
def test_unknown_keys_and_wrong_types(args: list[str], expected: str, data: Path, cwd: Path, capsys) -> None:
    err = run_cli(fit_args(data, cwd / "cache", *args), capsys)
    assert "error:" in err and expected in err


def test_unknown_key_in_a_config_file(data: Path, cwd: Path, capsys) -> None:
    (cwd / "typo.yaml").write_text("model:\n  learning_rate: 0.01\n")
    err = run_cli([*fit_args(data, cwd / "cache"), "--config", "typo.yaml"], capsys)
    assert "learning_rate" in err


def foreign_checkpoint(path: Path, model: torch.nn.Module, **hyper_parameters) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hyper_parameters,
                "pytorch-lightning_version": "2.6.0", "epoch": 0, "global_step": 0}, path)
    return path


@pytest.mark.parametrize(
    ("subcommand", "make", "expected"),
    [
        # Explicit files are checked by checkpoints.check_checkpoint before LightningCLI reads them.
        ("fit", lambda d: d / "nowhere.ckpt", "No checkpoint file at {path}."),
        ("test", lambda d: d, "No checkpoint file at {path}."),
        ("fit", lambda d: (d / "notes.ckpt").write_text("hello") and d / "notes.ckpt",
         "{path} is not a PyTorch checkpoint"),
        ("validate", lambda d: torch.save({"w": torch.zeros(2)}, d / "t.pt") or d / "t.pt",
         "{path} is a PyTorch file but not a Lightning checkpoint (no state_dict)"),
        ("validate", lambda d: foreign_checkpoint(d / "mlp.ckpt", torch.nn.Sequential(torch.nn.Linear(4, 2))),
         "{path} is a checkpoint of another model"),
        # A consistent 3-class checkpoint: LightningCLI builds a 3-class model from it; the data has 10.
        ("fit", lambda d: foreign_checkpoint(d / "three.ckpt", CIFAR10Classifier(class_names=["a", "b", "c"]),
                                             class_names=["a", "b", "c"]),
         "The model has 3 classes (taken from the checkpoint {path}) but the data has 10."),
        # Through --ckpt_path last the model comes from the config and the checkpoint must fit it.
        ("fit", lambda d: foreign_checkpoint(d / "checkpoints" / "base" / "last.ckpt",
                                             CIFAR10Classifier(class_names=["a", "b", "c"]),
                                             class_names=["a", "b", "c"]) and "last",
         "The checkpoint was trained for 3 classes but this run builds a model for 10"),
        ("fit", lambda d: foreign_checkpoint(d / "checkpoints" / "base" / "last.ckpt",
                                             torch.nn.Sequential(torch.nn.Linear(4, 2))) and "last",
         "The checkpoint holds a different network from this model (missing: net.classifier"),
    ],
)
def test_bad_checkpoint_path(subcommand, make, expected, data: Path, cwd: Path, capsys) -> None:
    path = make(cwd)
    args = fit_args(data, cwd / "cache", "--ckpt_path", str(path), "--trainer.max_epochs", "1")
    args[0] = subcommand
    err = run_cli(args, capsys)
    assert expected.format(path=path) in err


def test_unwritable_checkpoint_folder_fails_before_training(data: Path, cwd: Path, capsys) -> None:
    (cwd / "checkpoints").write_text("a file where the folder should be")
    err = run_cli(fit_args(data, cwd / "cache", "--trainer.max_epochs", "1"), capsys)
    assert f"Cannot write checkpoints to {cwd / 'checkpoints' / 'base'}: {cwd / 'checkpoints'} is a file, not a folder." in err
    assert not (cwd / "cache").exists()  # failed before even reading the data


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_read_only_checkpoint_folder(data: Path, cwd: Path, capsys) -> None:
    (cwd / "checkpoints").mkdir(mode=0o555)
    err = run_cli(fit_args(data, cwd / "cache", "--trainer.max_epochs", "1"), capsys)
    assert f"Cannot write checkpoints to {cwd / 'checkpoints' / 'base'} (Permission denied)." in err


@pytest.mark.slow
def test_bad_input_in_a_real_process_is_one_line_and_status_2(tmp_path: Path) -> None:
    process = start_fit(tmp_path, fit_args(tmp_path / "nowhere", tmp_path / "cache", "--data.download", "false"))
    _, err = process.communicate(timeout=120)
    assert process.returncode == 2
    assert "Traceback" not in err
    assert f"error: The data folder {tmp_path / 'nowhere'} does not exist." in err
