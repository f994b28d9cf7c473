"""Matplotlib figures shared by the ``report`` command and the TensorBoard callback.

Built on ``matplotlib.figure.Figure`` (no pyplot), so nothing depends on a display or a global
backend and figures are freed when dropped. Images are uint8 (N, 3, 32, 32) as the data module gives them.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def class_examples_figure(images: Tensor, labels: Tensor, class_names: Sequence[str], per_class: int = 10) -> Figure:
    """One row per class, its first ``per_class`` images, the class name at the left of the row."""
    fig = Figure(figsize=(per_class * 0.9, len(class_names) * 0.95), layout="constrained")
    axes = fig.subplots(len(class_names), per_class, squeeze=False)
    for row, name in enumerate(class_names):
        picks = (labels == row).nonzero().flatten()[:per_class]
        for col, ax in enumerate(axes[row]):
            if col < len(picks):
                _show(ax, images[picks[col]])
            else:
                ax.axis("off")
        axes[row][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=11)
    fig.suptitle("Example images of every class")
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


def curves_figure(scalars: dict[str, tuple[list[int], list[float]]], best_epoch: int | None,
                  checkpoint_epoch: int | None = None) -> Figure:
    """Loss and accuracy per epoch, train and validation, with the best epoch and the checkpoint's marked.

    ``scalars`` maps tags such as ``train/loss`` to (epochs, values). The best epoch is only called
    the checkpoint when it is one (``configs/base.yaml`` keeps the best; ``fast.yaml`` the last).
    """
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    for ax, metric in zip(fig.subplots(1, 2), ("loss", "acc")):
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
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="epoch", ylabel=metric, title={"loss": "Loss (cross-entropy)", "acc": "Accuracy"}[metric])
        ax.grid(alpha=0.3)
        ax.legend()
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
