"""The report's pictures and the TensorBoard figures, from the session's tiny trained model (conftest.py)."""

from __future__ import annotations

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cifar_lightning.errors import UserInputError
from cifar_lightning.figures import curves_figure
from cifar_lightning.report import best_epoch, find_run_dir, read_curves
from cifar_lightning.sources import CIFAR10_CLASSES
from conftest import EPOCHS
from test_predict import run_cli

PICTURES = ("training_curves", "class_examples", "prediction_examples", "confusion_matrix", "per_class_accuracy")


def test_curves_are_the_scalars_of_the_event_file(trained):
    curves = read_curves(find_run_dir(trained.log_dir.parent))  # a folder above the run also works
    epochs, values = curves["val/acc"]
    assert epochs == list(range(EPOCHS))
    assert values == pytest.approx(trained.val_acc)  # what the trainer logged each epoch
    assert set(curves) == {"train/loss", "val/loss", "train/acc", "val/acc"}
    assert best_epoch(curves) == max(range(EPOCHS), key=trained.val_acc.__getitem__)


@pytest.mark.parametrize(("checkpoint_epoch", "expected"), [
    (2, ["best val/acc, this checkpoint (epoch 2)"]),  # base.yaml: the best epoch is what it keeps
    (3, ["best val/acc (epoch 2)", "this checkpoint (epoch 3)"]),  # fast.yaml: the last is kept
])
def test_curves_legend_calls_the_best_epoch_the_checkpoint_only_when_it_is(checkpoint_epoch, expected):
    scalars = {"val/acc": ([0, 1, 2, 3], [0.5, 0.6, 0.8, 0.7])}
    figure = curves_figure(scalars, best_epoch(scalars), checkpoint_epoch)
    legend = [text.get_text() for text in figure.axes[1].get_legend().get_texts()]
    assert legend == ["validation", *expected]


def test_tensorboard_figures_are_logged(trained):
    images = EventAccumulator(str(trained.log_dir)).Reload().Tags()["images"]
    assert "val/predictions" in images and "test/confusion_matrix" in images


def test_report_command_writes_every_picture(trained, tmp_path, monkeypatch, capsys):
    out = tmp_path / "report"
    run_cli(monkeypatch, "report", "--ckpt_path", trained.ckpt, "--log_dir", str(trained.log_dir),
            "--data_dir", str(trained.data_dir), "--cache_dir", "null", "--out", str(out), "--num_predictions", "12")
    for name in PICTURES:
        with Image.open(out / f"{name}.png") as image:
            assert image.format == "PNG"
            assert 400 <= image.width <= 2000 and 300 <= image.height <= 2000, (name, image.size)
    table = (out / "per_class_accuracy.md").read_text().splitlines()
    assert len(table) == 2 + len(CIFAR10_CLASSES) + 1
    assert all(f"| {name} | 5 |" in line for name, line in zip(CIFAR10_CLASSES, table[2:]))
    assert f"{trained.test_acc:.4f}" in capsys.readouterr().out


def test_report_without_event_files_says_so(trained, tmp_path):
    with pytest.raises(UserInputError, match="No TensorBoard event files"):
        find_run_dir(tmp_path)
