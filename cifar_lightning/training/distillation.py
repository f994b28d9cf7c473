"""``Distillation``: a trained model's predictions as extra targets for the model being trained
(knowledge distillation, Hinton et al. 2015; the loss is ``CIFAR10Classifier``'s ``distill_weight``).

The teacher predicts every training image once, when ``fit`` starts (as it is served: its own
flip averaging, temperature 1), and each training batch carries those log-probabilities beside
its labels, whatever augmentation the batch then gets. One pass over the training split (about a
minute on a 2-core CPU) replaces a teacher forward pass at every step, which would cost about a
third more training time on a CPU. A heavily augmented image is thus asked for the teacher's
distribution of the image it came from.

The teacher must not have trained on the images this run holds out: ``fit`` fits the temperature,
and the recipe is judged, on that hold-out. Its recorded data settings are checked.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from cifar_lightning.data.datamodule import CIFAR10DataModule
from cifar_lightning.errors import ConfigError
from cifar_lightning.model.loading import load_checkpoint

DATAMODULE_KEY = CIFAR10DataModule.CHECKPOINT_HYPER_PARAMS_KEY  # "datamodule_hyper_parameters"


class Distillation(L.Callback):
    """Gives every training batch a teacher's log-probabilities of its images.

    Args:
        teacher: The teacher's checkpoint (a file written by ``fit``, or a shipped model's name). It
            must have held out the same images as this run (``data.val_size`` and ``data.seed``).
        batch_size: Images per forward pass of the teacher's one pass over the training split.
    """

    def __init__(self, teacher: str, batch_size: int = 512) -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"Distillation's batch_size must be at least 1, got {batch_size}.")
        self.teacher = teacher
        self.batch_size = batch_size

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not pl_module.hparams.get("distill_weight", 0.0) > 0:
            raise ConfigError("The Distillation callback is set but model.distill_weight is 0, so the teacher "
                              "would be ignored: set model.distill_weight (e.g. 0.5), or remove the callback.")
        datamodule = trainer.datamodule
        if not isinstance(datamodule, CIFAR10DataModule) or datamodule.train_set is None:
            raise ConfigError("The Distillation callback needs the CIFAR10DataModule's training split.")
        teacher, checkpoint = load_checkpoint(self.teacher, map_location=trainer.strategy.root_device)
        check_teacher_holdout(checkpoint, datamodule.hparams.val_size, datamodule.hparams.seed, self.teacher)
        datamodule.set_train_targets(teacher_log_probs(teacher, datamodule.train_set.images, self.batch_size))


def teacher_log_probs(teacher, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """The teacher's log class probabilities (N, C) of uint8 images (N, 3, H, W), on the CPU, as it is
    served (its flip averaging) at temperature 1. ``no_grad``, not ``inference_mode``: the result
    becomes a target of the training loss, which inference tensors cannot be."""
    net = teacher.inference_net()
    device = next(net.parameters()).device
    with torch.no_grad():
        parts = [teacher.predict_log_proba(images[i:i + batch_size].to(device), net, temperature=1.0).float().cpu()
                 for i in range(0, len(images), batch_size)]
    return torch.cat(parts)


def check_teacher_holdout(checkpoint: dict, val_size: int, seed: int, path: str) -> None:
    """Refuse a teacher that trained on this run's hold-out, where its checkpoint records its data
    settings (``fit`` writes them; a stripped checkpoint may not: then a warning)."""
    if val_size == 0:
        return  # nothing held out, nothing to keep unseen
    trained = checkpoint.get(DATAMODULE_KEY) or {}
    if "val_size" not in trained:
        rank_zero_warn(f"The teacher {path} does not record which images it held out: make sure it never "
                       f"trained on this run's hold-out (data.val_size {val_size}, data.seed {seed}).")
        return
    if (trained["val_size"], trained.get("seed", 0)) != (val_size, seed):
        raise ConfigError(
            f"The teacher {path} held out data.val_size {trained['val_size']} with data.seed {trained.get('seed', 0)}, "
            f"this run val_size {val_size} with seed {seed}: it trained on images this run holds out to fit its "
            "temperature and judge it. Train the teacher with this run's data.val_size and data.seed."
        )
