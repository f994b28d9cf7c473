"""``python -m cifar_lightning report``: the pictures of a trained model, as PNG files.

From a checkpoint, the test split and a TensorBoard log: example images of every class,
loss and accuracy curves (read with TensorBoard's own ``EventAccumulator``), prediction
examples, the confusion matrix and per-class accuracy (torchmetrics), the reliability diagram of
the predicted probabilities (as trained and at the checkpoint's temperature), plus a Markdown table;
with ``--compare_history``, the validation curve beside another run's (the original Keras
run's per-epoch log, ``docs/original/history.csv``). From the log, also ``metrics.csv``: one row per
epoch of the curves' scalars, a resumed run's parts joined, for pandas.
"""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import Tensor
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCalibrationError,
    MulticlassConfusionMatrix,
)

from cifar_lightning.calibration.reliability import reliability_figure
from cifar_lightning.data.sources import load_split
from cifar_lightning.errors import UserInputError
from cifar_lightning.infer.predict import predict_probabilities
from cifar_lightning.model.checkpoints import check_checkpoint
from cifar_lightning.model.loading import classifier_from_checkpoint
from cifar_lightning.model.probabilities import ECE_BINS
from cifar_lightning.report.figures import (
    best_point,
    class_examples_figure,
    confusion_matrix_figure,
    curves_figure,
    per_class_accuracy_figure,
    predictions_figure,
    validation_comparison_figure,
)
from cifar_lightning.report.runs import (
    Curves,
    best_epoch,
    epochs_of,
    find_run_dirs,
    read_history,
    training_curves,
    write_hparams_summary,
    write_metrics_csv,
)


def comparison_figure(curves: Curves, run: str, history: tuple[list[int], list[float]], history_path: str) -> Figure:
    """Our validation accuracy beside the history's, both numbered as Keras numbers epochs (from 1)."""
    epochs, values = curves["val/acc"]
    ours = f"ours: PyTorch Lightning, {run}"
    best = best_point(epochs, values)[0]
    return validation_comparison_figure(
        {ours: ([epoch + 1 for epoch in epochs], values),  # Lightning's epoch 0 is Keras' epoch 1
         f"original: Keras notebook, {history_path}": history},
        title="Validation accuracy per epoch: this reimplementation and the original Keras run",
        notes={ours: f" (Lightning's epoch {best}, as checkpoint names count)"},
    )


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
    ckpt_path: str | None = None,
    out: str = "report",
    log_dir: str | None = None,
    compare_history: str | None = None,
    data_dir: str = "data",
    cache_dir: str | None = ".cache/cifar_lightning",
    examples_per_class: int = 10,
    num_predictions: int = 40,
    seed: int = 0,
    batch_size: int = 1000,
    device: str = "auto",
    hparams_summary: bool = False,
) -> dict[str, Path]:
    """Write the report's PNG pictures and Markdown table for a checkpoint; returns {name: path}.

    Args:
        ckpt_path: Checkpoint written by ``fit``: the pictures of its predictions on the test
            split. Without it only the pictures from ``log_dir`` are drawn.
        out: Folder for the pictures (created).
        log_dir: TensorBoard log of the training run, for the training curves: a run folder, or a
            folder above runs (such as ``lightning_logs/base``), where the newest run with
            training scalars is used (with the runs it resumed) and named on the output.
        compare_history: A per-epoch CSV of another run (columns ``epoch``, counted from 1, and
            ``val_accuracy``; e.g. ``docs/original/history.csv``, the original Keras run): adds
            ``val_acc_vs_original.png``, both validation curves in one picture. Needs ``log_dir``.
        data_dir: Folder holding CIFAR-10 (as for ``--data.data_dir``): the test split is predicted.
        cache_dir: Cache of decoded images (as for ``--data.cache_dir``); ``None``: no cache.
        examples_per_class: Images per class, drawn at random with ``seed``, in the class examples grid.
        num_predictions: Test images, picked at random with ``seed``, in the prediction examples.
        seed: Seed of those picks.
        batch_size: Images per forward pass.
        device: ``auto`` (a GPU when there is one), ``cpu`` or ``cuda``.
        hparams_summary: Instead of pictures: give every run under ``log_dir`` that has an
            ``hparams.yaml`` the HParams summary that ``fit`` logs today (hyperparameters and final
            ``val/*``, ``test/*`` scores), so runs recorded before it compare in TensorBoard's HParams tab.
            Runs that have one already are left as they are.
    """
    if hparams_summary:
        if log_dir is None:
            raise UserInputError("--hparams_summary writes into the runs of --log_dir: pass --log_dir.")
        runs = [run for run in find_run_dirs(log_dir) if (run / "hparams.yaml").is_file()]
        if not runs:
            raise UserInputError(f"No run under {log_dir} has an hparams.yaml (the file fit writes beside its log).")
        for run in runs:
            scores = write_hparams_summary(run)
            if scores is None:
                print(f"{run}: has an HParams summary already; left as it is")
            else:
                print(f"{run}: " + ", ".join(f"{tag} {value:.4f}" for tag, value in scores.items()))
        return {}
    if ckpt_path is None and log_dir is None:
        raise UserInputError("Nothing to draw: pass --ckpt_path (pictures of a model), --log_dir (training "
                             "curves), or both.")
    if compare_history is not None and log_dir is None:
        raise UserInputError("--compare_history draws our validation curve beside the history's: pass --log_dir too.")
    # Everything the user named is checked before any picture is drawn.
    checkpoint = check_checkpoint(ckpt_path) if ckpt_path is not None else {}
    history = read_history(compare_history) if compare_history is not None else None
    curves, run, run_line = training_curves(log_dir) if log_dir is not None else (None, None, "")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if curves is not None:
        print(run_line)
        # Mark the checkpoint's epoch only where it was saved during the run (not after it, as on_fit_end saves do).
        checkpoint_epoch = checkpoint.get("epoch") if checkpoint.get("epoch") in set(epochs_of(curves)) else None
        fig = curves_figure(curves, best_epoch(curves), checkpoint_epoch)
        fig.suptitle(f"Training curves of {run}", fontsize=9)
        written["curves"] = save(fig, out_dir / "training_curves.png")
        written["metrics"] = write_metrics_csv(curves, out_dir / "metrics.csv")
    if history is not None:
        if "val/acc" not in curves:
            raise UserInputError(f"{run} logged no val/acc (it held no images out: data.val_size 0), so there is no "
                                 "validation curve to compare with --compare_history; leave that option out.")
        fig = comparison_figure(curves, str(run), history, str(compare_history))
        written["comparison"] = save(fig, out_dir / "val_acc_vs_original.png")
        ours, theirs = best_point(*curves["val/acc"]), best_point(*history)
        print(f"Best val/acc: ours {ours[1]:.4f} at epoch {ours[0] + 1} (Lightning's epoch {ours[0]}) of "
              f"{max(epochs_of(curves)) + 1}; {compare_history}: {theirs[1]:.4f} at epoch {theirs[0]} of {max(history[0])}")
    if ckpt_path is not None:
        written.update(model_pictures(checkpoint, ckpt_path, out_dir, data_dir, cache_dir, examples_per_class, num_predictions,
                                      seed, batch_size, device))
    print("Wrote:\n  " + "\n  ".join(str(p) for p in written.values()))
    return written


def model_pictures(checkpoint: dict, ckpt_path: str, out_dir: Path, data_dir: str, cache_dir: str | None, examples_per_class: int,
                   num_predictions: int, seed: int, batch_size: int, device: str) -> dict[str, Path]:
    """The pictures of a checkpoint's predictions on the test split (its contents, as ``check_checkpoint``
    read them), and the per-class table."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = classifier_from_checkpoint(checkpoint, map_location=device)
    names = list(model.class_names)
    test = load_split(data_dir, train=False, cache_dir=cache_dir, data_option="--data_dir",
                      download_hint="report downloads nothing: `python -m cifar_lightning test` fetches them")
    written = {"examples": save(class_examples_figure(test.images, test.labels, names, examples_per_class, seed),
                                out_dir / "class_examples.png")}

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
    temperature = float(model.hparams.temperature)
    panels = {f"temperature {temperature:.3f} (this checkpoint's)": probabilities}
    if temperature != 1.0:
        as_trained = predict_probabilities(model, test.images, batch_size, temperature=1.0)
        panels = {"temperature 1 (as trained)": as_trained, **panels}
    written["reliability"] = save(
        reliability_figure({label: (p, test.labels) for label, p in panels.items()},
                           "Reliability of the predicted probabilities, test split"),
        out_dir / "reliability.png")
    table = out_dir / "per_class_accuracy.md"
    table.write_text(accuracy_table(per_class, confmat.sum(dim=1), names, overall))
    written["table"] = table
    ece = MulticlassCalibrationError(len(names), n_bins=ECE_BINS, norm="l1")(probabilities, test.labels).item()
    print(f"Test accuracy of {ckpt_path}: {overall:.4f}; ECE {ece:.2%} at temperature {temperature:.4f}")
    return written
