"""``TensorBoardFigures``: the callback that logs validation predictions each epoch and the test
confusion matrix and reliability diagram to TensorBoard. Kept cheap: one grid of ``num_images``
validation images per epoch, one extra forward pass and about a second of matplotlib; at test, the
log-probabilities ``test_step`` returns feed a torchmetrics confusion matrix and the reliability bins.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

from cifar_lightning.calibration.reliability import reliability_figure
from cifar_lightning.report.figures import confusion_matrix_figure, predictions_figure
from cifar_lightning.summary_writer import summary_writer


class TensorBoardFigures(L.Callback):
    """Logs ``val/predictions`` (a grid with predicted and true classes), ``test/confusion_matrix`` and
    ``test/reliability`` (the reliability diagram of the probabilities ``predict_proba`` gives).

    Args:
        num_images: Validation images in the grid (spread over the whole set, the same every epoch).
        columns: Images per row of the grid.
    """

    def __init__(self, num_images: int = 32, columns: int = 8) -> None:
        super().__init__()
        self.num_images, self.columns = num_images, columns
        self.images = self.labels = None
        self.picked: list[tuple] = []
        self.confmat: MulticlassConfusionMatrix | None = None
        self.test_outputs: list[tuple[Tensor, Tensor]] = []

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.images is not None or trainer.sanity_checking or dataloader_idx != 0:
            return
        # Evenly spaced picks from every batch: a validation set sorted by class still shows every class.
        per_batch = -(-self.num_images // max(1, int(trainer.num_val_batches[0])))
        images, labels = batch[:2]
        pick = torch.linspace(0, len(labels) - 1, min(per_batch, len(labels))).long().to(labels.device)
        self.picked.append((images[pick].detach().cpu(), labels[pick].detach().cpu()))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self.images is None and self.picked:  # the same images every epoch, chosen in the first
            self.images = torch.cat([images for images, _ in self.picked])[: self.num_images]
            self.labels = torch.cat([labels for _, labels in self.picked])[: self.num_images]
            self.picked = []
        writer = summary_writer(trainer)
        if writer is None or self.images is None:
            return
        with torch.no_grad():
            probabilities = pl_module.predict_proba(self.images.to(pl_module.device))
        fig = predictions_figure(self.images, probabilities.cpu(), self.labels, pl_module.class_names,
                                 self.columns, title=f"Validation, epoch {trainer.current_epoch}")
        writer.add_figure("val/predictions", fig, global_step=trainer.global_step)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.confmat = MulticlassConfusionMatrix(len(pl_module.class_names)).to(pl_module.device)
        self.test_outputs = []

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                          batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.confmat.update(outputs["log_probs"].argmax(dim=-1), batch[1])
        self.test_outputs.append((outputs["log_probs"].float().exp(), batch[1]))

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        confmat = self.confmat.compute()  # synced across processes
        writer = summary_writer(trainer)
        if writer is not None and trainer.is_global_zero:
            fig = confusion_matrix_figure(confmat, pl_module.class_names, "Confusion matrix, test split")
            writer.add_figure("test/confusion_matrix", fig, global_step=trainer.global_step)
        if self.test_outputs:
            probs = pl_module.all_gather(torch.cat([p for p, _ in self.test_outputs])).flatten(0, -2)
            labels = pl_module.all_gather(torch.cat([t for _, t in self.test_outputs])).flatten()
            if writer is not None and trainer.is_global_zero:
                temperature = pl_module.hparams.get("temperature", 1.0)
                fig = reliability_figure({f"test split, temperature {temperature:.3f}": (probs, labels)},
                                         "Reliability of the predicted probabilities")
                writer.add_figure("test/reliability", fig, global_step=trainer.global_step)
        self.confmat, self.test_outputs = None, []
