"""The LightningModule: the Keras network, its input scaling, loss, metrics, optimizer and schedule."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from cifar_lightning.augment import to_unit_float
from cifar_lightning.checkpoints import check_compatible
from cifar_lightning.errors import ConfigError
from cifar_lightning.network import KerasCIFAR10CNN, fold_batchnorm
from cifar_lightning.sources import CIFAR10_CLASSES

# Per-channel mean and std of the CIFAR-10 training images in [0, 1].
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class CIFAR10Classifier(L.LightningModule):
    """Trains and evaluates ``KerasCIFAR10CNN``: cross-entropy, accuracy, NAdam (the original's) or
    SGD with an optional one-cycle schedule (``configs/fast.yaml``).

    Input scaling and normalisation live here and are saved with the hyperparameters, so a
    checkpoint takes raw uint8 images (or floats in [0, 1]) and predicts the same everywhere.

    Args:
        class_names: Names of the output classes, in label order.
        lr: Learning rate; with ``lr_schedule='onecycle'`` the peak (the original: NAdam at 0.0025).
        optimizer: ``nadam`` (the original) or ``sgd`` (with Nesterov momentum, used by ``configs/fast.yaml``).
        momentum: SGD momentum (one-cycle cycles it between 0.85 and 0.95 instead).
        betas: NAdam betas (Keras: 0.9, 0.999).
        eps: NAdam epsilon (Keras: 1e-7; PyTorch's default is 1e-8).
        weight_decay: L2 penalty added by the optimizer (the original: none).
        decay_norm_and_bias: Apply ``weight_decay`` to BatchNorm weights and all biases too; ``false``
            decays only conv and dense kernels, as the fast CIFAR-10 recipes do.
        bn_momentum: BatchNorm's running-statistics momentum (PyTorch's convention; Keras' 0.99 is 0.01).
        momentum_decay: NAdam momentum schedule constant (Keras and PyTorch: 0.004).
        conv_dropout: Dropout after each of the three conv blocks.
        dense_dropout: Dropout after the 64-unit dense layer.
        label_smoothing: Cross-entropy label smoothing (the original: none).
        mean: Per-channel mean subtracted from images in [0, 1] (the original: none, inputs stay in
            [0, 1]; ``CIFAR10_MEAN`` and ``CIFAR10_STD`` standardise them, as ``configs/fast.yaml`` does).
        std: Per-channel std dividing images in [0, 1] (the original: 1).
        channels_last: NHWC memory layout for the network and its inputs; measured here
            (2-core CPU, batch 64) 455 vs 380 training images/s, and faster on GPUs with tensor cores.
        lr_schedule: ``constant`` (the original) or ``onecycle``: PyTorch's ``OneCycleLR`` stepped every
            batch, warming up over ``warmup_fraction`` of all steps and annealing to ~0 at the last one.
        warmup_fraction: Share of the training steps spent warming up (one-cycle only).
        tta_flip: Evaluate (validate, test, predict) on each image and its mirror image and average
            the two probability vectors: test-time augmentation, off by default.
        compile: ``torch.compile`` the network when training starts (worth it on a GPU for long
            runs; on this 2-core CPU it costs ~30 s and gained nothing measurable).
    """

    def __init__(
        self,
        class_names: Sequence[str] = CIFAR10_CLASSES,
        lr: float = 0.0025,
        optimizer: Literal["nadam", "sgd"] = "nadam",
        momentum: float = 0.9,
        lr_schedule: Literal["constant", "onecycle"] = "constant",
        warmup_fraction: float = 0.25,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-7,
        weight_decay: float = 0.0,
        decay_norm_and_bias: bool = True,
        bn_momentum: float = 0.01,
        momentum_decay: float = 0.004,
        conv_dropout: tuple[float, float, float] = (0.2, 0.2, 0.3),
        dense_dropout: float = 0.3,
        label_smoothing: float = 0.0,
        mean: tuple[float, float, float] = (0.0, 0.0, 0.0),
        std: tuple[float, float, float] = (1.0, 1.0, 1.0),
        channels_last: bool = True,
        tta_flip: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        check_settings(lr=lr, conv_dropout=conv_dropout, dense_dropout=dense_dropout,
                       label_smoothing=label_smoothing, std=std, class_names=class_names,
                       momentum=momentum, warmup_fraction=warmup_fraction, weight_decay=weight_decay,
                       bn_momentum=bn_momentum)
        self.save_hyperparameters()
        self.class_names = list(class_names)
        num_classes = len(self.class_names)
        self.net = KerasCIFAR10CNN(num_classes, conv_dropout, dense_dropout, bn_momentum=bn_momentum)
        # Not persistent: they are rebuilt from the hyperparameters, so state_dict holds the network alone.
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        # Lets Lightning's model summary show input/output sizes and FLOPs (it printed "Total Flops 0").
        self.example_input_array = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)

    def configure_model(self) -> None:
        """Compile in place (``nn.Module.compile``), so state_dict keys and checkpoints stay the same."""
        if self.hparams.compile and not getattr(self, "_compiled", False):
            self.net.compile()
            self._compiled = True

    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 [0, 255] or float [0, 1] images (B, 3, H, W) -> normalised float."""
        x = (to_unit_float(images).float() - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else x

    def forward(self, images: Tensor, net: torch.nn.Module | None = None) -> Tensor:
        """Images (B, 3, 32, 32), uint8 or float in [0, 1] -> logits (B, num_classes).

        ``net``: another copy of the network to run, e.g. ``inference_net()``'s.
        """
        return (net or self.net)(self.preprocess(images))

    def evaluate(self, images: Tensor, net: torch.nn.Module | None = None) -> Tensor:
        """Logits for evaluation; with ``tta_flip`` the log of the mean of the image's and its mirror's
        probabilities (a valid input to cross-entropy and argmax)."""
        if not self.hparams.tta_flip:
            return self(images, net)
        both = self(torch.cat([images, images.flip(-1)]), net).log_softmax(dim=-1)
        return torch.logsumexp(torch.stack(both.chunk(2)), dim=0) - math.log(2)

    def _shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> dict[str, Tensor]:
        """Loss, accuracy and their logging; returns the loss and the logits (callbacks reuse them)."""
        images, labels = batch
        logits = self(images) if stage == "train" else self.evaluate(images)
        smoothing = self.hparams.label_smoothing if stage == "train" else 0.0
        loss = F.cross_entropy(logits, labels, label_smoothing=smoothing)
        accuracy = getattr(self, f"{stage}_acc")
        accuracy(logits, labels)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=on_step, sync_dist=True,
                 batch_size=len(labels))
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True)
        return {"loss": loss, "logits": logits.detach()}

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._shared_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._shared_step(batch, "test")

    def inference_net(self) -> torch.nn.Module:
        """The network with BatchNorm folded into the layers before it (same outputs, faster), for
        prediction; the network itself when it is compiled, which a copy would not be."""
        if self.hparams.compile:
            return self.net
        folded = fold_batchnorm(self.net)
        return folded.to(memory_format=torch.channels_last) if self.hparams.channels_last else folded

    def on_predict_start(self) -> None:
        # Kept out of the module's children, so it never reaches state_dict or a checkpoint.
        self.__dict__["_predict_net"] = self.inference_net()

    def on_predict_end(self) -> None:
        self.__dict__.pop("_predict_net", None)

    def predict_step(self, batch: tuple[Tensor, Tensor] | Tensor, batch_idx: int) -> Tensor:
        """Class probabilities (B, num_classes)."""
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.evaluate(images, self.__dict__.get("_predict_net")).softmax(dim=-1)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse, with a clear message, a checkpoint whose layers do not fit this model (``--ckpt_path``)."""
        check_compatible(checkpoint, self.state_dict(), len(self.class_names))

    def parameter_groups(self) -> list[dict]:
        """One group, or with ``decay_norm_and_bias=False`` two: kernels decayed, the rest (BatchNorm
        weights, every bias; the 1-D tensors) with ``weight_decay`` 0."""
        if self.hparams.decay_norm_and_bias:
            return [{"params": list(self.parameters())}]
        kernels = [p for p in self.parameters() if p.dim() > 1]
        others = [p for p in self.parameters() if p.dim() <= 1]
        return [{"params": kernels}, {"params": others, "weight_decay": 0.0}]

    def configure_optimizers(self):
        hp = self.hparams
        groups = self.parameter_groups()
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, nesterov=True,
                                        weight_decay=hp.weight_decay)
        else:
            optimizer = torch.optim.NAdam(
                groups, lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps,
                weight_decay=hp.weight_decay, momentum_decay=hp.momentum_decay,
            )
        if hp.lr_schedule == "constant":
            return optimizer
        # Lightning's documented way to size a per-step schedule: every optimizer step of the whole fit.
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=hp.lr, total_steps=int(self.trainer.estimated_stepping_batches),
            pct_start=hp.warmup_fraction,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def check_settings(*, lr, conv_dropout, dense_dropout, label_smoothing, std, class_names,
                   momentum, warmup_fraction, weight_decay, bn_momentum) -> None:
    """Reject values that would train nonsense, naming the setting and its valid range."""
    problems = []
    if not 0 <= momentum < 1:
        problems.append(f"momentum must be in [0, 1), got {momentum}")
    if not 0 < warmup_fraction < 1:
        problems.append(f"warmup_fraction must be in (0, 1), got {warmup_fraction}")
    if not 0 < bn_momentum <= 1:
        problems.append(f"bn_momentum must be in (0, 1], got {bn_momentum}")
    if weight_decay < 0:
        problems.append(f"weight_decay must be at least 0, got {weight_decay}")
    if not lr > 0:
        problems.append(f"lr must be greater than 0, got {lr}")
    for rate in (*conv_dropout, dense_dropout):
        if not 0 <= rate < 1:
            problems.append(f"dropout rates must be in [0, 1), got {rate}")
    if not 0 <= label_smoothing < 1:
        problems.append(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if any(s <= 0 for s in std):
        problems.append(f"std values must be greater than 0, got {tuple(std)}")
    if len(class_names) < 2 or len(set(class_names)) != len(class_names):
        problems.append(f"class_names must be at least two distinct names, got {list(class_names)}")
    if problems:
        raise ConfigError("Invalid model settings: " + "; ".join(problems) + ".")
