"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"): one scalar T
divides the logits before the softmax, fitted by minimising the negative log-likelihood on images
the model never trained on. The predicted class never changes; the probabilities come to mean what
they say (a printed 0.8 is right about 80% of the time).

- ``fit_temperature``: the NLL-optimal T for held-out logits (LBFGS on log T), through
  ``model.probabilities.combine_views``, the function every prediction uses.
- ``calibration_scores``: accuracy, ECE (torchmetrics) and NLL.
- ``collect_view_logits`` and ``calibrate_logits``: a model's held-out logits, and T fitted on them
  with the scores before and after.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.classification import multiclass_calibration_error

from cifar_lightning.model.probabilities import ECE_BINS, combine_views
from cifar_lightning.progress import progress

TEMPERATURE_RANGE = (0.05, 20.0)  # a fitted T outside this means the hold-out is broken, not the model


def fit_temperature(view_logits: Tensor, labels: Tensor) -> float:
    """The temperature that minimises the mean NLL of ``combine_views(view_logits, T)`` on ``labels``.

    LBFGS with a strong-Wolfe line search on log T (so T stays positive); converges in a few
    iterations, the NLL being smooth in log T. Raises ``ValueError`` for empty input.
    """
    if labels.numel() == 0:
        raise ValueError("No held-out images to fit the temperature on.")
    view_logits, labels = view_logits.detach().float(), labels.detach()
    log_t = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=100, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-10, tolerance_change=1e-12)

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.nll_loss(combine_views(view_logits, log_t.exp()), labels)
        loss.backward()
        return loss

    with torch.inference_mode(False), torch.enable_grad():
        optimizer.step(closure)
    low, high = TEMPERATURE_RANGE
    return float(min(max(log_t.exp().item(), low), high))


@dataclass(frozen=True)
class Scores:
    """Accuracy, expected calibration error and mean negative log-likelihood of some probabilities."""

    accuracy: float
    ece: float
    nll: float


def calibration_scores(log_probs: Tensor, labels: Tensor) -> Scores:
    """``Scores`` of log-probabilities (N, C): ECE as torchmetrics computes it (15 bins, L1)."""
    probs = log_probs.exp()
    ece = multiclass_calibration_error(probs, labels, num_classes=probs.shape[-1], n_bins=ECE_BINS, norm="l1")
    return Scores(accuracy=(probs.argmax(-1) == labels).float().mean().item(), ece=ece.item(),
                  nll=F.nll_loss(log_probs, labels).item())


@torch.no_grad()
def collect_view_logits(model: Any, batches: Iterable, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """(view logits (V, N, C) on the CPU, labels (N,)) of ``model`` over ``(images, labels, ...)``
    batches, in eval mode and full precision; the model's train/eval mode is restored afterwards."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    logits, labels = [], []
    try:
        for batch in progress(batches, "Held-out logits", unit=" batches"):
            logits.append(model.view_logits(batch[0].to(device)).cpu())
            labels.append(batch[1].cpu())
    finally:
        model.train(was_training)
    if not logits:
        raise ValueError("No held-out images to fit the temperature on.")
    return torch.cat(logits, dim=1), torch.cat(labels)


@dataclass(frozen=True)
class Calibration:
    """A fitted temperature and the hold-out scores before (the model's temperature then) and after it."""

    temperature: float
    images: int
    before: Scores
    after: Scores
    fitted_on: str

    def summary(self) -> str:
        return (f"Temperature {self.temperature:.4f} fitted on {self.fitted_on} ({self.images} images): "
                f"ECE {self.before.ece:.2%} -> {self.after.ece:.2%}, NLL {self.before.nll:.4f} -> "
                f"{self.after.nll:.4f}, accuracy {self.after.accuracy:.4f}")

    def record(self) -> dict[str, Any]:
        """What a checkpoint keeps under ``"calibration"``: where T came from and what it did there."""
        return {"temperature": self.temperature, "fitted_on": self.fitted_on, "images": self.images,
                "ece_before": self.before.ece, "ece_after": self.after.ece,
                "nll_before": self.before.nll, "nll_after": self.after.nll}


def calibrate_logits(view_logits: Tensor, labels: Tensor, current: float, fitted_on: str) -> Calibration:
    """Fit T on held-out logits and score the model's current temperature against it."""
    temperature = fit_temperature(view_logits, labels)
    return Calibration(temperature, len(labels), calibration_scores(combine_views(view_logits, current), labels),
                       calibration_scores(combine_views(view_logits, temperature), labels), fitted_on)
