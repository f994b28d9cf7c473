"""Callbacks that CLI subprocesses in the tests load with ``--trainer.callbacks+=fault_points.<Name>``.

They make a fault land at a known place (mid-epoch) and record what each DDP rank saw.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback


class PauseMidEpoch(Callback):
    """After batch ``batch`` of epoch ``epoch``, touch ``marker`` and wait there until a signal arrives.

    The test waits for the marker and then sends SIGTERM, SIGINT or SIGKILL, so the fault lands
    mid-epoch every time instead of whenever a timer happens to fire.
    """

    def __init__(self, epoch: int = 1, batch: int = 1, marker: str = "paused", timeout: float = 120.0):
        self.epoch, self.batch, self.marker, self.timeout = epoch, batch, marker, timeout

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch != self.epoch or batch_idx != self.batch:
            return
        Path(self.marker).write_text(f"{trainer.current_epoch} {trainer.global_step}")
        deadline = time.monotonic() + self.timeout
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.05)  # SIGINT raises KeyboardInterrupt here; SIGTERM sets received_sigterm


class RecordRank(Callback):
    """Write ``rank<N>.json``: the metrics this rank ends with and the sample indices its loaders drew."""

    def on_fit_end(self, trainer, pl_module) -> None:
        def indices(loader) -> list[int]:
            return [int(i) for i in loader.sampler] if loader is not None else []

        record = {
            "world_size": trainer.world_size,
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if isinstance(v, torch.Tensor)},
            "train_sampler": type(trainer.train_dataloader.sampler).__name__,
            "train_indices": indices(trainer.train_dataloader),
            "val_indices": indices(trainer.val_dataloaders),
            "val_labels": trainer.datamodule.val_set.labels.tolist(),
        }
        Path(f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
