"""``TemperatureScaling``: the ``fit`` callback that fits the kept model's temperature on the run's
hold-out at the end of training, writes it into the kept checkpoint and logs the hold-out's
reliability diagram before and after to TensorBoard (``val/reliability``)."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from cifar_lightning.calibration.checkpoint_file import write_temperature
from cifar_lightning.calibration.reliability import reliability_figure
from cifar_lightning.calibration.temperature import (
    calibrate_logits,
    collect_view_logits,
)
from cifar_lightning.model.loading import classifier_from_checkpoint
from cifar_lightning.model.probabilities import combine_views
from cifar_lightning.summary_writer import summary_writer


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
        # The kept checkpoint, read once: the model to fit T for, and the contents written back with T.
        saved = torch.load(best, map_location="cpu", weights_only=True) if best else None
        model = classifier_from_checkpoint(saved, pl_module.device) if best else pl_module
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
                contents = saved if path == best else torch.load(path, map_location="cpu", weights_only=True)
                write_temperature(contents, path, temperature, result.record())
            written = f"; written into {', '.join(files)}" if files else ""
            rank_zero_info(result.summary() + written)
            log_reliability(trainer, view_logits, labels, before, result.temperature)
        trainer.strategy.barrier("temperature_written")


def log_reliability(trainer: L.Trainer, view_logits: Tensor, labels: Tensor, before: float, after: float) -> None:
    """The hold-out's reliability diagram before and after the fitted temperature, to TensorBoard
    as ``val/reliability``, where the run has a TensorBoard logger."""
    writer = summary_writer(trainer)
    if writer is None:
        return
    panels = {f"hold-out, temperature {t:.3f} ({when})": (combine_views(view_logits, t).exp(), labels)
              for t, when in ((before, "before"), (after, "fitted"))}
    writer.add_figure("val/reliability", reliability_figure(panels, "Reliability on the hold-out"),
                      global_step=trainer.global_step)
