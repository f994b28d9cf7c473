"""``HParamsSummary``: every run's hyperparameters beside its final scores, so TensorBoard's HParams
tab sets runs side by side (``tensorboard --logdir lightning_logs``, tab HPARAMS).

Lightning logs the hyperparameters when a run starts, without scores (the configs turn its
placeholder ``hp_metric`` off, since a score at step 0 means nothing). At the end of ``fit`` and of
``test`` this logs them again with the run's final ``val/*`` and ``test/*`` scores as ``hp/val_acc``,
``hp/test_ece`` and so on: Lightning's own ``log_hyperparams(params, metrics)``.
"""

from __future__ import annotations

import lightning as L

SCORES = ("acc", "ece", "nll")


class HParamsSummary(L.Callback):
    """At the end of fit and test, ``log_hyperparams`` with the model's and data's settings and the
    final scores on every logger (rank 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.scores: dict[str, float] = {}

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record(trainer, pl_module, "val")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record(trainer, pl_module, "test")

    def record(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run or not trainer.loggers:
            return
        for score in SCORES:
            value = trainer.callback_metrics.get(f"{stage}/{score}")
            if value is not None:
                self.scores[f"hp/{stage}_{score}"] = float(value)
        if not self.scores or not trainer.is_global_zero:
            return
        # One flat set of names, as Lightning merges the model's and the data's into hparams.yaml.
        datamodule = trainer.datamodule
        params = {**(datamodule.hparams if datamodule is not None else {}), **pl_module.hparams}
        params.update(max_epochs=trainer.max_epochs, precision=str(trainer.precision))
        params = {key: value for key, value in params.items() if not key.startswith("_")}
        for logger in trainer.loggers:
            logger.log_hyperparams(params, metrics=dict(self.scores))
