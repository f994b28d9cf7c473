"""The pictures: matplotlib figures shared by the ``report`` command and ``TensorBoardFigures``,
the callback that logs validation predictions each epoch and the test confusion matrix and
reliability diagram to TensorBoard (kept cheap: one grid of ``num_images`` validation images per
epoch, one extra forward pass and about a second of matplotlib; at test, the log-probabilities
``test_step`` returns feed a torchmetrics confusion matrix and the reliability bins).

Built on ``matplotlib.figure.Figure`` (no pyplot), so nothing depends on a display or a global
backend and figures are freed when dropped. Images are uint8 (N, 3, 32, 32) as the data module gives them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix
from torchmetrics.utilities.plot import plot_confusion_matrix

from cifar_lightning.calibration import reliability_bins

WRONG = "tab:red"
RIGHT = "tab:green"


def _show(ax, image: Tensor) -> None:
    ax.imshow(image.permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def sample_per_class(labels: Tensor, num_classes: int, per_class: int, seed: int = 0) -> list[Tensor]:
    """For each class, ``per_class`` indices of its images drawn at random (seeded), without repeats.

    A random draw, not the first files: folders are sorted by name, and CIFAR-10's file names
    cluster look-alikes (the first trucks are fire engines, the first dogs spaniels).
    """
    generator = torch.Generator().manual_seed(seed)
    picks = []
    for label in range(num_classes):
        members = (labels.cpu() == label).nonzero().flatten()
        picks.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return picks


def class_examples_figure(images: Tensor, labels: Tensor, class_names: Sequence[str], per_class: int = 10,
                          seed: int = 0) -> Figure:
    """One row per class, ``per_class`` of its images drawn with ``seed``, the class name at the left of the row."""
    fig = Figure(figsize=(per_class * 0.9, len(class_names) * 0.95), layout="constrained")
    axes = fig.subplots(len(class_names), per_class, squeeze=False)
    for row, (name, picks) in enumerate(zip(class_names, sample_per_class(labels, len(class_names), per_class, seed))):
        for col, ax in enumerate(axes[row]):
            if col < len(picks):
                _show(ax, images[picks[col]])
            else:
                ax.axis("off")
        axes[row][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=11)
    fig.suptitle(f"Example images of every class (a random {per_class} per class, seed {seed})")
    return fig


def predictions_figure(images: Tensor, probabilities: Tensor, labels: Tensor, class_names: Sequence[str],
                       columns: int = 8, title: str = "Predictions") -> Figure:
    """Each image with its predicted class and probability; wrong ones in red with the true class.

    ``labels`` of -1 mean the true class is unknown (shown in black, not judged).
    """
    rows = -(-len(images) // columns)
    fig = Figure(figsize=(columns * 1.35, rows * 1.6), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).flatten()
    probability, predicted = probabilities.float().max(dim=-1)
    for i, ax in enumerate(axes):
        if i >= len(images):
            ax.axis("off")
            continue
        _show(ax, images[i])
        text = f"{class_names[predicted[i]]} {probability[i]:.0%}"
        colour = "black"
        if labels[i] >= 0:
            right = bool(predicted[i] == labels[i])
            colour = RIGHT if right else WRONG
            if not right:
                text += f"\ntrue: {class_names[labels[i]]}"
                for spine in ax.spines.values():
                    spine.set(edgecolor=WRONG, linewidth=3)
        ax.set_title(text, fontsize=8, color=colour)
    judged = labels >= 0
    if judged.any():
        wrong = int((predicted[judged] != labels[judged]).sum())
        title += f" ({wrong} of {int(judged.sum())} wrong, in red with the true class)"
    fig.suptitle(title)
    return fig


def _epoch_axis(ax, epochs: Sequence[int]) -> None:
    """Whole-number epoch ticks, also for a run of one or two epochs (matplotlib's default view of a
    single point is +-0.055 around it, ticked in fractions)."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if epochs and max(epochs) - min(epochs) < 2:
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)


def _legend_below(fig: Figure, axes) -> None:
    """One legend for all ``axes``, under them, so it never hides a curve (constrained layout makes room)."""
    entries = {}
    for ax in sorted(axes, key=lambda ax: -len(ax.get_legend_handles_labels()[1])):  # the fullest sets the order
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    fig.legend(entries.values(), entries.keys(), loc="outside lower center", ncols=min(len(entries), 4),
               frameon=False)


def curves_figure(scalars: dict[str, tuple[list[int], list[float]]], best_epoch: int | None,
                  checkpoint_epoch: int | None = None) -> Figure:
    """Loss and accuracy per epoch, train and validation, with the best epoch and the checkpoint's marked.

    ``scalars`` maps tags such as ``train/loss`` to (epochs, values). The best epoch is only called
    the checkpoint when it is one (``configs/base.yaml`` keeps the best; ``fast.yaml`` the last).
    Epochs are Lightning's, counted from 0 (the numbers in checkpoint file names).
    """
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    axes = fig.subplots(1, 2)
    all_epochs = sorted({epoch for epochs, _ in scalars.values() for epoch in epochs})
    for ax, metric in zip(axes, ("loss", "acc")):
        for stage, label in (("train", "train"), ("val", "validation")):
            if f"{stage}/{metric}" in scalars:
                epochs, values = scalars[f"{stage}/{metric}"]
                ax.plot(epochs, values, marker="." if len(epochs) < 30 else None, label=label)
        if best_epoch is not None:
            kept = ", this checkpoint" if checkpoint_epoch == best_epoch else ""
            ax.axvline(best_epoch, color="tab:gray", linestyle="--",
                       label=f"best val/acc{kept} (epoch {best_epoch})")
        if checkpoint_epoch is not None and checkpoint_epoch != best_epoch:
            ax.axvline(checkpoint_epoch, color="tab:purple", linestyle=":",
                       label=f"this checkpoint (epoch {checkpoint_epoch})")
        _epoch_axis(ax, all_epochs)
        ax.set(xlabel="epoch (Lightning's, from 0)", ylabel=metric,
               title={"loss": "Loss (cross-entropy)", "acc": "Accuracy"}[metric])
        ax.grid(alpha=0.3)
    _legend_below(fig, axes)
    return fig


def best_point(epochs: Sequence[int], values: Sequence[float]) -> tuple[int, float]:
    """(epoch, value) of the first highest value: the epoch early stopping and ModelCheckpoint keep."""
    i = max(range(len(values)), key=values.__getitem__)
    return epochs[i], values[i]


def validation_comparison_figure(curves: dict[str, tuple[Sequence[int], Sequence[float]]],
                                 title: str = "Validation accuracy per epoch",
                                 notes: dict[str, str] | None = None) -> Figure:
    """Validation-accuracy curves of several runs on one axis, each run's best epoch marked.

    ``curves`` maps a legend label to (epochs, val accuracies); the caller numbers the epochs
    alike for every run (the report uses Keras' numbering, from 1). ``notes`` adds words to a
    run's best-epoch label.
    """
    fig = Figure(figsize=(10, 5.2), layout="constrained")
    ax = fig.subplots()
    all_epochs = []
    for (label, (epochs, values)), colour in zip(curves.items(), ("tab:blue", "tab:orange", "tab:green", "tab:red")):
        epoch, value = best_point(epochs, values)
        ax.plot(epochs, values, color=colour, marker="." if len(epochs) < 30 else None, linewidth=1.2, label=label)
        ax.plot([epoch], [value], color=colour, marker="*", markersize=14, markeredgecolor="black", linestyle="none",
                label=f"best: {value:.4f} at epoch {epoch}{(notes or {}).get(label, '')}")
        ax.axvline(epoch, color=colour, linestyle=":", linewidth=1)
        all_epochs += list(epochs)
    _epoch_axis(ax, all_epochs)
    ax.set(xlabel="epoch (Keras' numbering: the first epoch is 1)", ylabel="validation accuracy", title=title)
    ax.grid(alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2, frameon=False)
    return fig


def confusion_matrix_figure(confmat: Tensor, class_names: Sequence[str], title: str = "Confusion matrix") -> Figure:
    """torchmetrics' confusion-matrix plot (rows: true class, columns: predicted) on a sized figure."""
    fig = Figure(figsize=(9, 8), layout="constrained")
    ax = fig.subplots()
    plot_confusion_matrix(confmat.cpu(), ax=ax, labels=list(class_names), cmap="Blues")
    ax.tick_params(axis="x", labelrotation=45)
    ax.set_title(f"{title}: {int(confmat.trace())} of {int(confmat.sum())} correct")
    return fig


def reliability_figure(panels: dict[str, tuple[Tensor, Tensor]], title: str = "Reliability") -> Figure:
    """Reliability diagrams side by side: for each ``{label: (probabilities (N, C), labels (N,))}``, the
    accuracy of every top-1 confidence bin against its mean confidence (on the diagonal: calibrated;
    below it: overconfident), and under it how many images fall in each bin."""
    fig = Figure(figsize=(4.6 * len(panels), 6.2), layout="constrained")
    axes = fig.subplots(2, len(panels), squeeze=False, height_ratios=(3, 1.3), sharex=True)
    for column, (label, (probs, targets)) in enumerate(panels.items()):
        bins = reliability_bins(probs.cpu(), targets.cpu())
        top, bottom = axes[0][column], axes[1][column]
        left, width = bins.edges[:-1].numpy(), float(bins.edges[1] - bins.edges[0])
        accuracy = bins.accuracy.nan_to_num(0).numpy()
        confidence = bins.confidence.nan_to_num(0).numpy()
        top.bar(left, accuracy, width=width, align="edge", color="tab:blue", edgecolor="white", label="accuracy")
        top.bar(left, confidence - accuracy, bottom=accuracy, width=width, align="edge", color="tab:red",
                alpha=0.3, edgecolor="tab:red", label="gap to confidence")
        top.plot([0, 1], [0, 1], color="tab:gray", linestyle="--", label="calibrated")
        accuracy_all = float((bins.accuracy.nan_to_num(0) * bins.counts).sum() / bins.counts.sum())
        top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy in the bin",
                title=f"{label}\nECE {bins.ece:.2%}, accuracy {accuracy_all:.2%}")
        top.grid(alpha=0.3)
        bottom.bar(left, bins.counts.numpy(), width=width, align="edge", color="tab:gray", edgecolor="white")
        bottom.set(xlabel="top-1 confidence (the printed probability)", ylabel="images", yscale="log")
        bottom.grid(alpha=0.3)
    axes[0][0].legend(loc="upper left", fontsize=8)
    fig.suptitle(title)
    return fig


def per_class_accuracy_figure(accuracy: Tensor, class_names: Sequence[str], overall: float) -> Figure:
    """Horizontal bars of per-class accuracy, the overall accuracy as a line."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    values = accuracy.cpu().tolist()
    bars = ax.barh(list(class_names), values, color="tab:blue")
    ax.bar_label(bars, labels=[f"{v:.1%}" for v in values], padding=3, fontsize=9)
    ax.axvline(overall, color="tab:gray", linestyle="--", label=f"overall {overall:.1%}")
    ax.invert_yaxis()
    ax.set(xlim=(0, 1.12), xlabel="accuracy (share of the class's test images predicted correctly)",
           title="Per-class accuracy on the test split")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False)
    return fig


def tensorboard(trainer: L.Trainer):
    """The TensorBoard ``SummaryWriter`` of the trainer's loggers, or None."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


class TensorBoardFigures(L.Callback):
    """Logs ``val/predictions`` (a grid with predicted and true classes), ``test/confusion_matrix`` and
    ``test/reliability`` (the reliability diagram of the probabilities ``predict_proba`` gives).

    Args:
        num_images: Validation images in the grid (spread over the whole set, the same every epoch).
        columns: Images per row of the grid.
    """

    def __init__(self, num_images: int = 32, columns: int = 8) -> None:
        super().__init__()
        self.num_images, self.columns = num_images, columns
        self.images = self.labels = None
        self.picked: list[tuple] = []
        self.confmat: MulticlassConfusionMatrix | None = None
        self.test_outputs: list[tuple[Tensor, Tensor]] = []

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.images is not None or trainer.sanity_checking or dataloader_idx != 0:
            return
        # Evenly spaced picks from every batch: a validation set sorted by class still shows every class.
        per_batch = -(-self.num_images // max(1, int(trainer.num_val_batches[0])))
        images, labels = batch[:2]
        pick = torch.linspace(0, len(labels) - 1, min(per_batch, len(labels))).long().to(labels.device)
        self.picked.append((images[pick].detach().cpu(), labels[pick].detach().cpu()))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self.images is None and self.picked:  # the same images every epoch, chosen in the first
            self.images = torch.cat([images for images, _ in self.picked])[: self.num_images]
            self.labels = torch.cat([labels for _, labels in self.picked])[: self.num_images]
            self.picked = []
        writer = tensorboard(trainer)
        if writer is None or self.images is None:
            return
        with torch.no_grad():
            probabilities = pl_module.predict_proba(self.images.to(pl_module.device))
        fig = predictions_figure(self.images, probabilities.cpu(), self.labels, pl_module.class_names,
                                 self.columns, title=f"Validation, epoch {trainer.current_epoch}")
        writer.add_figure("val/predictions", fig, global_step=trainer.global_step)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.confmat = MulticlassConfusionMatrix(len(pl_module.class_names)).to(pl_module.device)
        self.test_outputs = []

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                          batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.confmat.update(outputs["logits"].argmax(dim=-1), batch[1])
        self.test_outputs.append((outputs["logits"].float().exp(), batch[1]))

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        confmat = self.confmat.compute()  # synced across processes
        writer = tensorboard(trainer)
        if writer is not None and trainer.is_global_zero:
            fig = confusion_matrix_figure(confmat, pl_module.class_names, "Confusion matrix, test split")
            writer.add_figure("test/confusion_matrix", fig, global_step=trainer.global_step)
        if self.test_outputs:
            probs = pl_module.all_gather(torch.cat([p for p, _ in self.test_outputs])).flatten(0, -2)
            labels = pl_module.all_gather(torch.cat([t for _, t in self.test_outputs])).flatten()
            if writer is not None and trainer.is_global_zero:
                temperature = pl_module.hparams.get("temperature", 1.0)
                fig = reliability_figure({f"test split, temperature {temperature:.3f}": (probs, labels)},
                                         "Reliability of the predicted probabilities")
                writer.add_figure("test/reliability", fig, global_step=trainer.global_step)
        self.confmat, self.test_outputs = None, []
