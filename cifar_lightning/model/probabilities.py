"""The one probability function: logits of one or more views of each image -> log class probabilities
at a temperature. The model's ``predict_log_proba`` and temperature fitting (``calibration``) share it,
so a temperature is fitted on exactly what users get."""

from __future__ import annotations

import math

import torch
from torch import Tensor

ECE_BINS = 15  # equal-width confidence bins, as Guo et al. and torchmetrics' examples use


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
