"""``python -m cifar_lightning report``: the pictures of a trained model, as PNG files.

From a checkpoint, the test split and a TensorBoard log: example images of every class,
loss and accuracy curves (read with TensorBoard's own ``EventAccumulator``), prediction
examples, the confusion matrix and per-class accuracy (torchmetrics), plus a Markdown table.
"""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib.figure import Figure
from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from cifar_lightning.checkpoints import check_checkpoint, load_classifier
from cifar_lightning.errors import UserInputError
from cifar_lightning.figures import (
    class_examples_figure, confusion_matrix_figure, curves_figure, per_class_accuracy_figure, predictions_figure,
)
from cifar_lightning.predict import predict_probabilities
from cifar_lightning.sources import load_split

CURVE_TAGS = ("train/loss", "val/loss", "train/acc", "val/acc")


def find_run_dir(log_dir: str | Path) -> Path:
    """The folder of event files under ``log_dir``: itself, or its most recently written run."""
    root = Path(log_dir).expanduser()
    runs = {path.parent for path in root.rglob("events.out.tfevents.*")}
    if not runs:
        raise UserInputError(f"No TensorBoard event files under {root}. Pass --log_dir the logger's folder "
                             "(e.g. lightning_logs/base/version_0).")
    return max(runs, key=lambda run: max(f.stat().st_mtime for f in run.glob("events.out.tfevents.*")))


def read_curves(run_dir: str | Path) -> dict[str, tuple[list[int], list[float]]]:
    """Per-epoch ``train/*`` and ``val/*`` scalars of one run as {tag: (epochs, values)}.

    Lightning logs an ``epoch`` scalar at every step it logs, which maps steps to epochs.
    """
    events = EventAccumulator(str(run_dir), size_guidance={SCALARS: 0}).Reload()  # 0: keep every point
    tags = set(events.Tags()["scalars"])
    step_epoch = {e.step: int(e.value) for e in events.Scalars("epoch")} if "epoch" in tags else {}
    curves = {}
    for tag in CURVE_TAGS:
        if tag in tags:
            points = events.Scalars(tag)
            epochs = [step_epoch.get(e.step, i) for i, e in enumerate(points)]
            curves[tag] = (epochs, [e.value for e in points])
    if not curves:
        raise UserInputError(f"The event files in {run_dir} hold none of {', '.join(CURVE_TAGS)}; "
                             "is this the log of a `fit` run?")
    return curves


def best_epoch(curves: dict[str, tuple[list[int], list[float]]]) -> int | None:
    """The epoch ModelCheckpoint keeps: the first with the highest ``val/acc``."""
    if "val/acc" not in curves:
        return None
    epochs, values = curves["val/acc"]
    return epochs[max(range(len(values)), key=values.__getitem__)]


def accuracy_table(accuracy: Tensor, counts: Tensor, class_names: list[str], overall: float) -> str:
    """Per-class accuracy as a Markdown table."""
    lines = ["| class | test images | correct | accuracy |", "|---|---:|---:|---:|"]
    for name, acc, n in zip(class_names, accuracy.tolist(), counts.tolist()):
        lines.append(f"| {name} | {n} | {round(acc * n)} | {acc:.1%} |")
    lines.append(f"| **all** | {int(counts.sum())} | {round(overall * int(counts.sum()))} | **{overall:.1%}** |")
    return "\n".join(lines) + "\n"


def save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=100)
    return path


def make_report(
    ckpt_path: str,
    out: str = "report",
    log_dir: str | None = None,
    data_dir: str = "data",
    cache_dir: str | None = ".cache/cifar_lightning",
    examples_per_class: int = 10,
    num_predictions: int = 40,
    seed: int = 0,
    batch_size: int = 1000,
    device: str = "auto",
) -> dict[str, Path]:
    """Write the report's PNG pictures and Markdown table for a checkpoint; returns {name: path}.

    Args:
        ckpt_path: Checkpoint written by ``fit``.
        out: Folder for the pictures (created).
        log_dir: TensorBoard log of the training run (a version folder, or a folder above it: its
            newest run is used) for the training curves; ``None`` skips the curves.
        data_dir: Folder holding CIFAR-10 (as for ``--data.data_dir``): the test split is predicted.
        cache_dir: Cache of decoded images (as for ``--data.cache_dir``); ``None``: no cache.
        examples_per_class: Images per class in the class examples grid.
        num_predictions: Test images, picked at random with ``seed``, in the prediction examples.
        seed: Seed of that pick.
        batch_size: Images per forward pass.
        device: ``auto`` (a GPU when there is one), ``cpu`` or ``cuda``.
    """
    checkpoint = check_checkpoint(ckpt_path)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if log_dir is not None:
        run_dir = find_run_dir(log_dir)
        curves = read_curves(run_dir)
        # Mark the checkpoint's epoch only where it was saved during the run (not after it, as on_fit_end saves do).
        trained_epochs = {epoch for epochs, _ in curves.values() for epoch in epochs}
        checkpoint_epoch = checkpoint.get("epoch") if checkpoint.get("epoch") in trained_epochs else None
        fig = curves_figure(curves, best_epoch(curves), checkpoint_epoch)
        fig.suptitle(f"Training curves of {run_dir}", fontsize=9)
        written["curves"] = save(fig, out_dir / "training_curves.png")

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_classifier(ckpt_path, map_location=device)
    names = list(model.class_names)
    test = load_split(data_dir, train=False, cache_dir=cache_dir)
    written["examples"] = save(class_examples_figure(test.images, test.labels, names, examples_per_class),
                               out_dir / "class_examples.png")

    probabilities = predict_probabilities(model, test.images, batch_size)
    pick = torch.randperm(len(test.labels), generator=torch.Generator().manual_seed(seed))[:num_predictions]
    fig = predictions_figure(test.images[pick], probabilities[pick], test.labels[pick], names,
                             title="Predictions on random test images")
    written["predictions"] = save(fig, out_dir / "prediction_examples.png")

    confmat = MulticlassConfusionMatrix(len(names))(probabilities, test.labels)
    per_class = MulticlassAccuracy(len(names), average=None)(probabilities, test.labels)
    overall = MulticlassAccuracy(len(names), average="micro")(probabilities, test.labels).item()
    written["confusion"] = save(confusion_matrix_figure(confmat, names, "Confusion matrix, test split"),
                                out_dir / "confusion_matrix.png")
    written["per_class"] = save(per_class_accuracy_figure(per_class, names, overall),
                                out_dir / "per_class_accuracy.png")
    table = out_dir / "per_class_accuracy.md"
    table.write_text(accuracy_table(per_class, confmat.sum(dim=1), names, overall))
    written["table"] = table
    print(f"Test accuracy of {ckpt_path}: {overall:.4f}\nWrote:\n  " + "\n  ".join(str(p) for p in written.values()))
    return written
