"""``HParamsSummary``: every run's hyperparameters beside its final scores, so TensorBoard's HParams
tab sets runs side by side (``tensorboard --logdir lightning_logs``, tab HPARAMS).

Lightning logs the hyperparameters when a run starts, without scores (the configs turn its
placeholder ``hp_metric`` off, since a score at step 0 means nothing). This writes the HParams
summary once per run, at the end of its ``fit`` (or of a ``test`` alone), naming every score the tab
shows (``hp/val_acc``, ``hp/test_ece``, ...), and logs each score as a scalar when it is known: the
``val/*`` scores at the end of ``fit``, the ``test/*`` ones at the end of the test that follows.
The tab shows a score's last value.
"""

from __future__ import annotations

import lightning as L

from cifar_lightning.summary_writer import hparams_summaries, summary_writer

SCORES = tuple(f"{stage}/{score}" for stage in ("val", "test") for score in ("acc", "ece", "nll"))


def score_tag(name: str) -> str:
    """``val/acc`` -> ``hp/val_acc``: the scalar the HParams tab reads for a score."""
    return "hp/" + name.replace("/", "_")


class HParamsSummary(L.Callback):
    """At the end of fit and test: the HParams summary (once per run, on rank 0's TensorBoard log)
    and the final scores as ``hp/*`` scalars on every logger."""

    def __init__(self) -> None:
        super().__init__()
        self.written_to: set[int] = set()  # the runs (TensorBoard writers) that have their summary

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record(trainer, pl_module, "val")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record(trainer, pl_module, "test")

    def record(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run or not trainer.loggers or not trainer.is_global_zero:
            return
        scores = {score_tag(name): float(trainer.callback_metrics[name]) for name in SCORES
                  if name.startswith(stage) and name in trainer.callback_metrics}
        writer = summary_writer(trainer)
        if writer is not None and id(writer) not in self.written_to:
            # One flat set of names, as Lightning merges the model's and the data's into hparams.yaml.
            datamodule = trainer.datamodule
            params = {**(datamodule.hparams if datamodule is not None else {}), **pl_module.hparams}
            params.update(max_epochs=trainer.max_epochs, precision=str(trainer.precision))
            for summary in hparams_summaries(params, [score_tag(name) for name in SCORES]):
                writer.file_writer.add_summary(summary)
            self.written_to.add(id(writer))
        if scores:
            for logger in trainer.loggers:
                logger.log_metrics(scores, step=trainer.global_step)
