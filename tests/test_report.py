"""The report's pictures and the TensorBoard figures, from the session's tiny trained model (conftest.py)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from cifar_lightning.data.sources import CIFAR10_CLASSES
from cifar_lightning.errors import UserInputError
from cifar_lightning.report.command import best_epoch, comparison_figure, make_report, read_history, training_curves
from cifar_lightning.report.figures import (
    class_examples_figure,
    curves_figure,
    sample_per_class,
)
from cifar_lightning.report.runs import find_run_dir, read_curves

from cli_runner import run_in_process as run_cli
from conftest import EPOCHS, REPO

ORIGINAL_HISTORY = REPO / "docs" / "original" / "history.csv"

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
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
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


def write_run(folder: Path, started: int, epochs: range, val_acc: list[float] | None = None,
              tags: tuple[str, ...] = ("train/loss", "val/acc")) -> Path:
    """An event file as Lightning writes one (an ``epoch`` scalar beside each epoch's scalars),
    named as if logging started at the Unix time ``started``."""
    folder.mkdir(parents=True)
    with SummaryWriter(str(folder)) as writer:
        for i, epoch in enumerate(epochs):
            step = 10 * epoch + 9
            writer.add_scalar("epoch", epoch, step)
            for tag in tags:
                writer.add_scalar(tag, val_acc[i] if val_acc and tag == "val/acc" else 0.5, step)
    (event_file,) = folder.glob("events.out.tfevents.*")
    event_file.rename(folder / f"events.out.tfevents.{started}.host.1.0")
    return folder


def test_report_passes_over_newer_runs_without_training_scalars(trained, tmp_path, capsys):
    # A `test` command logs test scalars only; a failed start leaves a folder with no events at all.
    log_dir = tmp_path / "logs"
    shutil.copytree(trained.log_dir, log_dir / "version_0")
    write_run(log_dir / "version_1", started=4_000_000_000, epochs=range(1), tags=("test/acc",))
    (log_dir / "version_2").mkdir()
    assert find_run_dir(log_dir) == log_dir / "version_0"
    written = make_report(log_dir=str(log_dir), out=str(tmp_path / "report"))
    assert set(written) == {"curves", "metrics"} and written["curves"].is_file()  # no checkpoint: the log's only
    printed = capsys.readouterr().out
    assert f"Training curves from {log_dir / 'version_0'}" in printed
    assert "passed over 1 newer run(s) without train/loss: version_1" in printed


def test_a_fit_that_held_nothing_out_draws_its_training_curves(tmp_path, capsys):
    """configs/fast.yaml trains on every image (val_size 0): its log has no val/acc, but is a training run."""
    log_dir = tmp_path / "logs"
    write_run(log_dir / "version_0", 1_000, range(0, 5), tags=("train/loss", "train/acc"))
    written = make_report(log_dir=str(log_dir), out=str(tmp_path / "report"))
    assert written["curves"].is_file()
    assert f"Training curves from {log_dir / 'version_0'}" in capsys.readouterr().out
    history = tmp_path / "history.csv"
    history.write_text("epoch,val_accuracy\n1,0.5\n")
    with pytest.raises(UserInputError, match="logged no val/acc"):
        make_report(log_dir=str(log_dir), out=str(tmp_path / "report"), compare_history=str(history))


def test_a_resumed_fit_is_drawn_from_all_its_runs(tmp_path):
    log_dir = tmp_path / "logs"
    write_run(log_dir / "version_0", 1_000, range(0, 10), [0.1] * 10)  # an earlier, separate fit
    write_run(log_dir / "version_1", 2_000, range(0, 5), [0.2] * 5)  # the fit, interrupted in epoch 5 ...
    write_run(log_dir / "version_2", 3_000, range(4, 8), [0.3] * 4)  # ... resumed mid-epoch: 4 again
    write_run(log_dir / "version_3", 4_000, range(1), tags=("test/acc",))
    curves, newest, line = training_curves(log_dir)
    assert newest == log_dir / "version_2"
    assert curves["val/acc"] == (list(range(8)), pytest.approx([0.2] * 4 + [0.3] * 4))
    assert f"resumed from {log_dir / 'version_1'} (epochs 0-4)" in line
    written = make_report(log_dir=str(log_dir), out=str(tmp_path / "report"))
    with open(written["metrics"], newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["epoch"] for row in rows] == [str(epoch) for epoch in range(8)]  # one row an epoch, joined
    assert [float(row["val/acc"]) for row in rows] == pytest.approx([0.2] * 4 + [0.3] * 4)
    assert list(rows[0]) == ["epoch", "train/loss", "val/acc"]


def test_only_logs_without_training_scalars_are_an_error(tmp_path):
    write_run(tmp_path / "version_0", 1_000, range(1), tags=("test/acc",))
    with pytest.raises(UserInputError, match="holds train/loss: pass --log_dir"):
        find_run_dir(tmp_path)


def test_class_examples_are_a_seeded_random_sample_not_the_first_files():
    labels = torch.arange(10).repeat_interleave(30)  # in class order, as a folder sorted by name reads
    picks = sample_per_class(labels, 10, per_class=5, seed=0)
    for label, pick in enumerate(picks):
        assert len(set(pick.tolist())) == 5 and bool((labels[pick] == label).all())
        assert sorted(pick.tolist()) != list(range(30 * label, 30 * label + 5))  # not the first files
    assert all(torch.equal(a, b) for a, b in zip(picks, sample_per_class(labels, 10, per_class=5, seed=0)))
    assert not all(torch.equal(a, b) for a, b in zip(picks, sample_per_class(labels, 10, per_class=5, seed=1)))
    # The figure shows exactly that sample, row by row.
    images = torch.randint(0, 256, (len(labels), 3, 32, 32), dtype=torch.uint8)
    figure = class_examples_figure(images, labels, CIFAR10_CLASSES, per_class=5, seed=0)
    for row, pick in enumerate(picks):
        for col, index in enumerate(pick.tolist()):
            shown = figure.axes[row * 5 + col].images[0].get_array()
            assert (shown == images[index].permute(1, 2, 0).numpy()).all()


def overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_a_one_epoch_run_has_whole_epoch_ticks_and_the_legend_beside_the_curves():
    scalars = {tag: ([0], [0.5]) for tag in ("train/loss", "val/loss", "train/acc", "val/acc")}
    figure = curves_figure(scalars, best_epoch(scalars), 0)
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    for ax in figure.axes:
        low, high = ax.get_xlim()
        ticks = [tick for tick in ax.get_xticks() if low <= tick <= high]
        assert ticks == [0]  # not -0.045 ... 0.045
        assert not overlaps(figure.legends[0].get_window_extent(renderer), ax.get_window_extent(renderer))


def test_comparison_picture_draws_our_log_beside_the_original_history(trained, tmp_path, monkeypatch, capsys):
    out = tmp_path / "report"
    run_cli(monkeypatch, "report", "--log_dir", str(trained.log_dir), "--compare_history", str(ORIGINAL_HISTORY),
            "--out", str(out))
    with Image.open(out / "val_acc_vs_original.png") as image:
        assert image.format == "PNG" and image.width >= 800
    best = best_epoch(read_curves(trained.log_dir))
    printed = capsys.readouterr().out
    assert f"ours {max(trained.val_acc):.4f} at epoch {best + 1} (Lightning's epoch {best}) of {EPOCHS}" in printed
    assert "0.9025 at epoch 146 of 181" in printed  # the original: RECIPE.md's numbers
    # Both sources, in Keras' numbering: our epoch 0 is drawn at 1, like the original's first epoch.
    history = read_history(ORIGINAL_HISTORY)
    figure = comparison_figure(read_curves(trained.log_dir), "run", history, "history.csv")
    ours, ours_best, _, theirs, theirs_best, _ = figure.axes[0].get_lines()  # each: curve, best mark, its line
    assert list(ours.get_xdata()) == list(range(1, EPOCHS + 1))
    assert list(ours.get_ydata()) == pytest.approx(trained.val_acc)
    assert list(theirs.get_xdata()) == list(range(1, 182)) and max(theirs.get_ydata()) == pytest.approx(0.9025)
    assert (ours_best.get_xdata()[0], theirs_best.get_xdata()[0]) == (best + 1, 146)
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert legend[0].startswith("ours: PyTorch Lightning") and legend[2].startswith("original: Keras notebook")


def test_report_checks_what_it_was_given_before_drawing(trained, tmp_path):
    with pytest.raises(UserInputError, match="No history file"):
        make_report(log_dir=str(trained.log_dir), compare_history=str(tmp_path / "nope.csv"), out=str(tmp_path / "r"))
    with pytest.raises(UserInputError, match="pass --log_dir too"):
        make_report(ckpt_path=trained.ckpt, compare_history=str(ORIGINAL_HISTORY), out=str(tmp_path / "r"))
    with pytest.raises(UserInputError, match="Nothing to draw"):
        make_report(out=str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()


def test_report_without_data_names_its_own_options(tmp_path, capsys):
    from cli_runner import run_failing

    message = run_failing(["report", "--ckpt_path", "cifar10_cnn", "--data_dir", str(tmp_path / "nothing"),
                           "--out", str(tmp_path / "out")], capsys)
    assert "does not exist" in message and "Point --data_dir at the folder" in message
    assert "--data.data_dir" not in message and "--data.download" not in message


def test_hparams_summary_gives_a_recorded_run_its_hyperparameters_and_final_scores(tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2

    from cifar_lightning.report.command import make_report

    run = tmp_path / "logs" / "version_0"
    with SummaryWriter(str(run)) as writer:
        for step, value in enumerate((0.5, 0.7, 0.65)):
            writer.add_scalar("val/acc", value, step)
        writer.add_scalar("test/acc", 0.66, 3)
    (run / "hparams.yaml").write_text("_instantiator: x\nlr: 0.005\nconv_dropout: [0.1, 0.1, 0.2]\nval_size: 5000\n")
    assert make_report(log_dir=str(tmp_path / "logs"), hparams_summary=True) == {}
    events = EventAccumulator(str(run))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["lr"].number_value == pytest.approx(0.005) and "_instantiator" not in start.hparams
    assert start.hparams["conv_dropout"].string_value == "[0.1, 0.1, 0.2]"
    assert events.Scalars("hp/val_acc")[-1].value == pytest.approx(0.65)  # the last value, not the best
    assert events.Scalars("hp/test_acc")[-1].value == pytest.approx(0.66)
    # Run again, it leaves the run as it is rather than adding a second summary of the same run.
    files = sorted(run.iterdir())
    assert make_report(log_dir=str(tmp_path / "logs"), hparams_summary=True) == {}
    assert sorted(run.iterdir()) == files
