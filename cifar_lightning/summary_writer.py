"""The run's TensorBoard writer, for the callbacks that log figures (report's and calibration's)."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger


def summary_writer(trainer: L.Trainer):
    """The TensorBoard ``SummaryWriter`` of the trainer's loggers, or None."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None
