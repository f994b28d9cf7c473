"""The pictures: matplotlib figures shared by the ``report`` command and ``TensorBoardFigures``
(``tensorboard_figures.py``, the callback that logs them during training). The reliability diagram
is calibration's (``calibration/reliability.py``).

Built on ``matplotlib.figure.Figure`` (no pyplot), so nothing depends on a display or a global
backend and figures are freed when dropped. Images are uint8 (N, 3, 32, 32) as the data module gives them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import Tensor
from torchmetrics.utilities.plot import plot_confusion_matrix

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
