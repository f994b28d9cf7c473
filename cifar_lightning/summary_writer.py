"""The run's TensorBoard writer, for the callbacks that log figures (report's and calibration's), and
the HParams summaries that ``fit`` and ``report --hparams_summary`` write."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard.summary import hparams


def summary_writer(trainer: L.Trainer):
    """The TensorBoard ``SummaryWriter`` of the trainer's loggers, or None."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def hparams_summaries(params: dict, score_tags: list[str]) -> tuple:
    """The three summaries of TensorBoard's HParams tab (experiment, session start, session end) for
    ``params`` (names starting with ``_`` left out; values other than numbers, strings and booleans
    written as text) and the scalars ``score_tags`` it should show beside them."""
    plain = {key: value if isinstance(value, (bool, int, float, str)) else str(value)
             for key, value in params.items() if not key.startswith("_")}
    return hparams(plain, dict.fromkeys(score_tags, 0.0))
