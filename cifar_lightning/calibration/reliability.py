"""Reliability: how often the model is right at each confidence it states, as the table
(``reliability_bins``) and the diagram (``reliability_figure``) that show where a model is over- or
underconfident; the ``fit`` callback, ``report`` and TensorBoard draw the same diagram."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from matplotlib.figure import Figure
from torch import Tensor

from cifar_lightning.model.probabilities import ECE_BINS


@dataclass(frozen=True)
class ReliabilityBins:
    """Per equal-width confidence bin: images, mean top-1 confidence and accuracy (NaN where empty)."""

    edges: Tensor  # (n_bins + 1,)
    counts: Tensor  # (n_bins,)
    confidence: Tensor  # (n_bins,)
    accuracy: Tensor  # (n_bins,)

    @property
    def ece(self) -> float:
        """The count-weighted mean gap between accuracy and confidence (ECE, L1)."""
        filled = self.counts > 0
        weights = self.counts[filled] / self.counts.sum()
        return float((weights * (self.accuracy[filled] - self.confidence[filled]).abs()).sum())


def reliability_bins(probs: Tensor, labels: Tensor, n_bins: int = ECE_BINS) -> ReliabilityBins:
    """What a reliability diagram draws: the top-1 confidence of each image binned into ``n_bins``
    equal-width bins over [0, 1] (right edges included, as torchmetrics bins them)."""
    confidence, predicted = probs.float().max(dim=-1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0, 1, n_bins + 1)
    index = (torch.bucketize(confidence, edges, right=False) - 1).clamp(0, n_bins - 1)
    counts = torch.bincount(index, minlength=n_bins).float()
    with torch.no_grad():
        conf_sum = torch.zeros(n_bins).index_add_(0, index, confidence)
        acc_sum = torch.zeros(n_bins).index_add_(0, index, correct)
    empty = counts == 0
    mean = lambda total: torch.where(empty, torch.nan, total / counts.clamp(min=1))  # noqa: E731
    return ReliabilityBins(edges, counts, mean(conf_sum), mean(acc_sum))



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
