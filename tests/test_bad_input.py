"""Every kind of bad input, in one place: bad data folders, bad settings, bad checkpoints, places
that cannot be written. The CLI answers each with one clear line on stderr and exit status 2, the
Python API with a clear exception, before any work is lost."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cifar_lightning.data.datamodule import CIFAR10DataModule
from cifar_lightning.data.folders import read_predict_folder
from cifar_lightning.data.sources import CIFAR10_CLASSES
from cifar_lightning.errors import CheckpointError, DataSourceError
from cifar_lightning.infer.predict import predict_images
from cifar_lightning.model.checkpoints import check_checkpoint
from cifar_lightning.model.classifier import CIFAR10Classifier
from cifar_lightning.model.loading import load_classifier

from cli_runner import FAST, fit_args, run_failing, run_in_process, start_fit
from conftest import write_image_folder


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
        ("broken_test_split", "The class folders in {data}/test are not the ten CIFAR-10 classes: missing ['truck']"),
        ("half_present", "No CIFAR-10 data found in {data}."),
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
    elif breakage == "broken_test_split":  # found before training, not after hours of it
        shutil.rmtree(data / "test" / "truck")
    elif breakage == "half_present":  # train/ without test/: named, not downloaded beside it
        shutil.rmtree(data / "test")
    elif breakage == "empty_class":
        for file in (data / "train" / "cat").iterdir():
            file.unlink()
    elif breakage == "junk_files":
        (data / "train" / "cat" / "notes.txt").write_text("not an image")
        png = (data / "train" / "dog" / "00010.png").read_bytes()
        (data / "train" / "dog" / "00010.png").write_bytes(png[: len(png) // 2])
    download = "true" if breakage.endswith("offline") or breakage == "half_present" else "false"  # faked offline (conftest)
    err = run_failing(fit_args(data, cwd / "cache", "--trainer.max_epochs", "1",
                           "--data.val_size", "20" if breakage == "val_too_large" else "10",
                           "--data.download", download), capsys)
    assert expected.format(data=data) in err
    if breakage == "missing":  # the message shows both layouts the data may come in
        assert "cifar-10-batches-py" in err and "train/<class>" in err and "--data.download true" in err
    if breakage.endswith("offline"):  # the failed download leaves the folder as it found it
        assert data.exists() == (breakage == "empty_offline") and not list(data.glob("*"))
    assert not (cwd / "lightning_logs").exists() or not list((cwd / "lightning_logs").rglob("version_*"))
    if breakage == "junk_files":
        assert "notes.txt" in err and "00010.png" in err and "never silently skipped" in err
    assert not list(cwd.rglob("*.ckpt"))  # stopped before any training


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
        (["--data.val_size", "-5"], "val_size must be at least 0 (images held out for validation; 0 trains on all), got -5."),
        (["--data.augment.shift_fraction", "1.5"], "shift_fraction must be in [0, 1) and rotation_degrees at least 0"),
        (["--config", FAST, "--data.augment.padding", "16"], "The random crop's padding must be in [0, 16) pixels, got 16."),
        (["--data.val_size", "0"], "val_size 0 holds out no images, but val/acc is monitored (EarlyStopping or ModelCheckpoint)"),
    ],
)
def test_settings_out_of_range(args: list[str], expected: str, data: Path, cwd: Path, capsys) -> None:
    err = run_failing(fit_args(data, cwd / "cache", *args), capsys)
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
    err = run_failing(fit_args(data, cwd / "cache", *args), capsys)
    assert "error:" in err and expected in err


def test_unknown_key_in_a_config_file(data: Path, cwd: Path, capsys) -> None:
    (cwd / "typo.yaml").write_text("model:\n  learning_rate: 0.01\n")
    err = run_failing([*fit_args(data, cwd / "cache"), "--config", "typo.yaml"], capsys)
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
    err = run_failing(args, capsys)
    assert expected.format(path=path) in err


def test_unwritable_checkpoint_folder_fails_before_training(data: Path, cwd: Path, capsys) -> None:
    (cwd / "checkpoints").write_text("a file where the folder should be")
    err = run_failing(fit_args(data, cwd / "cache", "--trainer.max_epochs", "1"), capsys)
    assert f"Cannot write checkpoints to {cwd / 'checkpoints' / 'base'}: {cwd / 'checkpoints'} is a file, not a folder." in err
    assert not (cwd / "cache").exists()  # failed before even reading the data


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_read_only_checkpoint_folder(data: Path, cwd: Path, capsys) -> None:
    (cwd / "checkpoints").mkdir(mode=0o555)
    err = run_failing(fit_args(data, cwd / "cache", "--trainer.max_epochs", "1"), capsys)
    assert f"Cannot write checkpoints to {cwd / 'checkpoints' / 'base'} (Permission denied)." in err


@pytest.mark.slow
def test_bad_input_in_a_real_process_is_one_line_and_status_2(tmp_path: Path) -> None:
    process = start_fit(tmp_path, fit_args(tmp_path / "nowhere", tmp_path / "cache", "--data.download", "false"))
    _, err = process.communicate(timeout=120)
    assert process.returncode == 2
    assert "Traceback" not in err
    assert f"error: The data folder {tmp_path / 'nowhere'} does not exist." in err


@pytest.mark.parametrize("existed", ["no", "yes", "nor_its_parent"])
def test_offline_download_is_one_clear_error_and_leaves_nothing_behind(tmp_path, existed):
    data_dir = tmp_path / "data" if existed != "nor_its_parent" else tmp_path / "nodata" / "cifar10"
    if existed == "yes":
        data_dir.mkdir()
        (data_dir / "notes.txt").write_text("mine")
    dm = CIFAR10DataModule(str(data_dir), cache_dir=None)
    with pytest.raises(DataSourceError) as error:
        dm.prepare_data()
    message = str(error.value)
    assert message.startswith(f"Could not download CIFAR-10 into {data_dir} (NetworkDisabled:")
    assert "\n" not in message and "--data.data_dir" in message
    if existed == "yes":
        assert [p.name for p in data_dir.iterdir()] == ["notes.txt"]
    else:
        assert not data_dir.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["data"] if existed == "yes" else [])  # no parent left


def test_predict_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataSourceError, match="holds no files"):
        read_predict_folder(tmp_path / "empty", CIFAR10_CLASSES)
    with pytest.raises(DataSourceError, match="does not exist"):
        read_predict_folder(tmp_path / "missing", CIFAR10_CLASSES)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DataSourceError, match="None of the 1 files.*a.jpg"):
        read_predict_folder(tmp_path / "junk", CIFAR10_CLASSES)


def test_wrong_checkpoints_raise_checkpoint_error(trained, tmp_path, monkeypatch):
    ours = torch.load(trained.ckpt, weights_only=True)
    other_model = {"state_dict": {"layer.weight": torch.zeros(2, 32)}, "hyper_parameters": {"lr": 0.1}}
    three_classes = {**ours, "hyper_parameters": {**ours["hyper_parameters"], "class_names": ["a", "b", "c"]}}
    cases = {
        "missing.ckpt": (None, "No checkpoint file"),
        "text.ckpt": ("hello", "not a PyTorch checkpoint"),
        "tensor.ckpt": (torch.zeros(3), "not a Lightning checkpoint"),
        "other.ckpt": (other_model, "another model: it lacks"),
        "three.ckpt": (three_classes, "holds a different network from this model \\(other shape: net.classifier"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if isinstance(content, str):
            path.write_text(content)
        elif content is not None:
            torch.save(content, path)
        with pytest.raises(CheckpointError, match=message):
            check_checkpoint(path)
    with pytest.raises(CheckpointError, match="another model"):
        run_in_process(monkeypatch, "predict", "--ckpt_path", str(tmp_path / "other.ckpt"))
    with pytest.raises(CheckpointError, match="No checkpoint file"):
        load_classifier(tmp_path / "missing.ckpt")


@pytest.mark.parametrize(("images", "expected"), [
    (np.zeros((2, 3, 32, 32), dtype=np.uint8), "Cannot predict a ndarray: predict_images takes image file paths"),
    ([torch.zeros(2, 3, 32, 32, dtype=torch.uint8)], r"Expected each image tensor in a list to be \(3, H, W\)"),
    ([42], "Cannot predict a int: predict_images takes"),
])
def test_predict_images_rejects_other_inputs_naming_what_it_takes(trained, images, expected):
    with pytest.raises(ValueError, match=expected):
        predict_images(load_classifier(trained.ckpt), images)
