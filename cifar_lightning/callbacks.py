"""Callbacks the CLI always adds: exact resumption and the "how to resume" notice."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback


class RNGStateCheckpoint(Callback):
    """Saves the random generators' states in every checkpoint and puts them back on resume.

    Lightning checkpoints hold weights, optimizer, loop and callback state but not the generators
    behind the shuffle order, the augmentation and dropout. Without them a resumed run draws other
    random numbers than the run that was never stopped. Restored when the checkpoint is loaded,
    before training starts (Lightning runs its sanity check inside ``isolate_rng``), so a run
    resumed from an end-of-epoch checkpoint continues with the very numbers it would have drawn.
    All values are tensors or plain Python, so the checkpoint still loads with ``weights_only=True``.
    """

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            "python": random.getstate(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        cuda = state_dict.get("cuda") or []
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        kind, keys, pos, has_gauss, cached = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        version, internal, gauss = state_dict["python"]
        random.setstate((version, tuple(internal), gauss))
