"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"): one scalar T
divides the logits before the softmax, fitted by minimising the negative log-likelihood on images
the model never trained on. The predicted class never changes; the probabilities come to mean what
they say (a printed 0.8 is right about 80% of the time).

- ``combine_views``: logits of one or more views -> log-probabilities at a temperature; the model's
  ``predict_log_proba`` and the fitting below share it, so T is fitted on exactly what users get.
- ``fit_temperature``: the NLL-optimal T for held-out logits (LBFGS on log T).
- ``calibration_scores`` and ``reliability_bins``: ECE (torchmetrics), NLL and the per-bin table a
  reliability diagram draws.
- ``TemperatureScaling``: the callback that fits T at the end of ``fit`` on the run's hold-out and
  writes it into the checkpoint that ``fit`` keeps and tests.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torchmetrics.functional.classification import multiclass_calibration_error

from cifar_lightning.checkpoint_io import save_atomically

ECE_BINS = 15  # equal-width confidence bins, as Guo et al. and torchmetrics' examples use
TEMPERATURE_RANGE = (0.05, 20.0)  # a fitted T outside this means the hold-out is broken, not the model


def is_valid_temperature(temperature: float) -> bool:
    """A temperature divides logits: it must be a finite number above 0."""
    return temperature > 0 and math.isfinite(temperature)


def combine_views(view_logits: Tensor, temperature: float | Tensor) -> Tensor:
    """float logits (V, N, C) of V views of each image -> log class probabilities (N, C): each view's
    softmax at ``temperature``, averaged over the views (the log of the mean, computed in log space)."""
    log_probs = (view_logits / temperature).log_softmax(dim=-1)
    if view_logits.shape[0] == 1:
        return log_probs[0]
    return torch.logsumexp(log_probs, dim=0) - math.log(view_logits.shape[0])


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


@torch.no_grad()
def collect_view_logits(model: Any, batches: Iterable, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """(view logits (V, N, C) on the CPU, labels (N,)) of ``model`` over ``(images, labels, ...)``
    batches, in eval mode and full precision; the model's train/eval mode is restored afterwards."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    logits, labels = [], []
    try:
        for batch in batches:
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


def write_temperature(source: str | Path, destination: str | Path, temperature: float,
                      record: dict[str, Any] | None = None, tta_flip: bool | None = None) -> None:
    """Copy a checkpoint file with its temperature set (``hyper_parameters``) and how it was fitted
    (``"calibration"``), written atomically; every other key is kept as it was. ``tta_flip``: the
    flip-averaging setting the temperature was fitted for, set with it (None keeps the file's)."""
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    hyper_parameters = checkpoint.setdefault("hyper_parameters", {})
    hyper_parameters["temperature"] = float(temperature)
    if tta_flip is not None:
        hyper_parameters["tta_flip"] = bool(tta_flip)
    checkpoint["calibration"] = {**(record or {"temperature": float(temperature)}),
                                 "tta_flip": bool(hyper_parameters.get("tta_flip", False))}
    save_atomically(checkpoint, destination)


class TemperatureScaling(L.Callback):
    """At the end of ``fit``, fits the temperature of the model ``fit`` keeps on the run's hold-out
    (``data.val_size``; never the test split), prints it with ECE and NLL before and after, sets it
    on the model (so ``fit``'s final test scores it) and writes it into the kept checkpoint file(s).

    The model kept is the best checkpoint where a ``ModelCheckpoint`` monitors a score
    (``configs/base.yaml``), else the final weights (with weight averaging, the average). A run that
    holds nothing out (``configs/fast.yaml``) keeps its temperature and says how to get one.
    ``python -m cifar_lightning calibrate`` does the same for an existing checkpoint.
    """

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.interrupted or trainer.fast_dev_run or trainer.sanity_checking:
            return
        datamodule = trainer.datamodule
        loader = datamodule.val_dataloader() if datamodule is not None else trainer.val_dataloaders
        if not loader:
            rank_zero_info("No hold-out (data.val_size 0), so no temperature was fitted: the probabilities are "
                           "as trained. `python -m cifar_lightning calibrate` sets one (docs/calibration.md).")
            return
        checkpoint = trainer.checkpoint_callback
        best = checkpoint.best_model_path if checkpoint is not None and checkpoint.monitor else ""
        model = type(pl_module).load_from_checkpoint(best, map_location=pl_module.device) if best else pl_module
        model.hparams.tta_flip = pl_module.hparams.tta_flip
        view_logits, labels = collect_view_logits(model, loader, pl_module.device)
        where = f"the hold-out (data.val_size {datamodule.hparams.val_size}, data.seed {datamodule.hparams.seed})" \
            if datamodule is not None and "val_size" in datamodule.hparams else "the validation images"
        before = pl_module.hparams.temperature
        result = calibrate_logits(view_logits, labels, before, where)
        temperature = trainer.strategy.broadcast(result.temperature, src=0)  # every rank the same T
        pl_module.hparams.temperature = temperature
        files = [best] if best else sorted({path for cb in trainer.checkpoint_callbacks if not getattr(cb, "monitor", None)
                                           for path in (cb.best_model_path, cb.last_model_path) if path})
        if trainer.is_global_zero:
            for path in files:
                write_temperature(path, path, temperature, result.record())
            written = f"; written into {', '.join(files)}" if files else ""
            rank_zero_info(result.summary() + written)
            log_reliability(trainer, view_logits, labels, before, result.temperature)
        trainer.strategy.barrier("temperature_written")


def log_reliability(trainer: L.Trainer, view_logits: Tensor, labels: Tensor, before: float, after: float) -> None:
    """The hold-out's reliability diagram before and after the fitted temperature, to TensorBoard
    as ``val/reliability``, where the run has a TensorBoard logger."""
    from cifar_lightning.figures import reliability_figure, tensorboard  # figures imports this module

    writer = tensorboard(trainer)
    if writer is None:
        return
    panels = {f"hold-out, temperature {t:.3f} ({when})": (combine_views(view_logits, t).exp(), labels)
              for t, when in ((before, "before"), (after, "fitted"))}
    writer.add_figure("val/reliability", reliability_figure(panels, "Reliability on the hold-out"),
                      global_step=trainer.global_step)
