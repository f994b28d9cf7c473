"""The LightningModule: the Keras network, its input scaling, loss, metrics, optimizer and schedule,
and the one inference path (``predict_proba``) that every probability a user sees comes from."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError

from cifar_lightning.data.sources import CIFAR10_CLASSES
from cifar_lightning.decode import to_unit_float
from cifar_lightning.errors import ConfigError
from cifar_lightning.model.checkpoints import check_compatible
from cifar_lightning.model.network import KerasCIFAR10CNN, fold_batchnorm
from cifar_lightning.model.probabilities import (
    ECE_BINS,
    combine_views,
    is_valid_temperature,
)

# Per-channel mean and std of the CIFAR-10 training images in [0, 1].
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class CIFAR10Classifier(L.LightningModule):
    """Trains and evaluates ``KerasCIFAR10CNN``: cross-entropy, accuracy, calibration error, NAdam (the
    original's) or SGD, with an optional one-cycle schedule (``configs/fast.yaml``: NAdam, one-cycle).

    Input scaling, normalisation and the temperature live here and are saved with the
    hyperparameters, so a checkpoint takes raw uint8 images (or floats in [0, 1]) and gives the same
    probabilities everywhere: ``predict_proba`` is the one method that turns images into class
    probabilities, and ``predict``, ``predict_images``, ``serve``, ``report`` and ``export`` all call it.

    Args:
        class_names: Names of the output classes, in label order.
        lr: Learning rate; with ``lr_schedule='onecycle'`` the peak (the original: NAdam at 0.0025).
        optimizer: ``nadam`` (the original's, and ``configs/fast.yaml``'s) or ``sgd`` (with Nesterov momentum).
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
        channels_last: NHWC memory layout for the network and its inputs; measured on a
            2-core CPU (batch 64): 455 vs 380 training images/s, and faster on GPUs with tensor cores.
        lr_schedule: ``constant`` (the original) or ``onecycle``: PyTorch's ``OneCycleLR`` stepped every
            batch, warming up over ``warmup_fraction`` of all steps and annealing to ~0 at the last one.
        warmup_fraction: Share of the training steps spent warming up (one-cycle only).
        tta_flip: Evaluate (validate, test, predict) on each image and its mirror image and average
            the two probability vectors: test-time augmentation. With ``--ckpt_path`` the
            checkpoint's own setting (the one its temperature was fitted for) holds unless the
            command line names ``--model.tta_flip``.
        tta_translate: With N > 0, also evaluate every view above shifted by N pixels down-right and
            up-left (reflected edges), as airbench's test-time augmentation does: 3 times the views.
            Like ``tta_flip``, a checkpoint's own setting holds unless the command line names it.
        temperature: Divides the logits before the softmax of every probability the model gives
            (temperature scaling, Guo et al. 2017): above 1 softens overconfident probabilities,
            below 1 sharpens underconfident ones; the predicted class never changes. ``fit`` fits
            it on the hold-out at its end and ``calibrate`` on a given one; 1.0 leaves the
            probabilities as trained (checkpoints without one load with 1.0).
        consistency_weight: With w > 0, training batches hold two views of every image, stacked
            (``cifar_lightning.data.augment.ViewPairs``), and the loss adds w times the Jensen-Shannon
            divergence between the two views' predicted distributions (AugMix's consistency loss;
            its authors used 12 with three views). 0: off.
        distill_weight: Share of the loss given to a teacher's predictions (knowledge distillation,
            Hinton et al. 2015): training batches then carry the teacher's log-probabilities of each
            image (``cifar_lightning.training.distillation.Distillation``, a callback), and the loss is
            ``(1 - w)`` times the cross-entropy plus ``w`` times the divergence from the teacher at
            ``distill_temperature`` (``distillation_loss``). 0: off.
        distill_temperature: Softens both distributions of the distillation term, so that the
            teacher's probabilities of the wrong classes (which of them it confuses) carry weight.
        compile: ``torch.compile`` the network when training starts (worth it on a GPU for long
            runs; on a 2-core CPU it cost ~30 s and gained nothing measurable).
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
        tta_translate: int = 0,
        temperature: float = 1.0,
        consistency_weight: float = 0.0,
        distill_weight: float = 0.0,
        distill_temperature: float = 4.0,
        compile: bool = False,
    ) -> None:
        super().__init__()
        check_settings(lr=lr, conv_dropout=conv_dropout, dense_dropout=dense_dropout,
                       label_smoothing=label_smoothing, std=std, class_names=class_names,
                       momentum=momentum, warmup_fraction=warmup_fraction, weight_decay=weight_decay,
                       bn_momentum=bn_momentum, temperature=temperature, tta_translate=tta_translate,
                       consistency_weight=consistency_weight, distill_weight=distill_weight,
                       distill_temperature=distill_temperature)
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
        # Expected calibration error: top-1 confidence against accuracy in 15 equal-width bins (Guo et al.).
        self.val_ece = MulticlassCalibrationError(num_classes, n_bins=ECE_BINS, norm="l1")
        self.test_ece = MulticlassCalibrationError(num_classes, n_bins=ECE_BINS, norm="l1")
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

    def forward(self, images: Tensor) -> Tensor:
        """Images (B, 3, 32, 32), uint8 or float in [0, 1] -> logits (B, num_classes), as training needs
        them: no temperature, no flip averaging. For the calibrated class probabilities a user should
        read, call ``predict_proba``."""
        return self.net(self.preprocess(images))

    def view_logits(self, images: Tensor, net: torch.nn.Module | None = None) -> Tensor:
        """float32 logits (V, B, num_classes) of every view evaluated: the image, with ``tta_flip`` its
        mirror image too, and with ``tta_translate`` each of those shifted both ways (V = 1, 2, 3 or 6),
        in one forward pass. ``net``: the network to run (default ``self.net``)."""
        net = net or self.net
        x = self.preprocess(images)
        views = [x, x.flip(-1)] if self.hparams.tta_flip else [x]
        shift = int(self.hparams.get("tta_translate", 0) or 0)
        if shift:
            h, w = x.shape[-2:]
            padded = [F.pad(view, (shift,) * 4, mode="reflect") for view in views]
            views += [p[..., :h, :w] for p in padded] + [p[..., 2 * shift:, 2 * shift:] for p in padded]
            if self.hparams.channels_last:
                views = [view.contiguous(memory_format=torch.channels_last) for view in views]
        if len(views) == 1:
            return net(x).float().unsqueeze(0)
        n = x.shape[0]  # slices, not chunk(): chunk would fix an exported graph's batch size
        logits = net(torch.cat(views)).float()
        return torch.stack([logits[i * n:(i + 1) * n] for i in range(len(views))])

    def predict_log_proba(self, images: Tensor, net: torch.nn.Module | None = None,
                          temperature: float | None = None) -> Tensor:
        """Log class probabilities (B, num_classes): ``view_logits`` divided by the temperature (the
        model's unless given), softmax, averaged over the views (``probabilities.combine_views``)."""
        temperature = self.hparams.temperature if temperature is None else temperature
        return combine_views(self.view_logits(images, net), temperature)

    def predict_proba(self, images: Tensor, temperature: float | None = None) -> Tensor:
        """The one inference path: uint8 images (B, 3, 32, 32) (or floats in [0, 1]) -> calibrated
        class probabilities (B, num_classes), in ``class_names`` order.

        Scaling and normalisation, the network with BatchNorm folded (``inference_net``), the flip
        average where ``tta_flip`` is set, the temperature, the softmax. ``predict_step``,
        ``predict_images``, the HTTP service, ``report`` and the ONNX export all call this method.
        Call it in eval mode, under ``torch.inference_mode()`` or ``torch.no_grad()``.
        ``temperature`` overrides the model's (1.0: the probabilities as trained).
        """
        return self.predict_log_proba(images, self.inference_net(), temperature).exp()

    def _shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> dict[str, Tensor]:
        """Loss, accuracy and their logging; returns the loss and, when evaluating, ``log_probs``: the log
        class probabilities ``predict_proba`` gives (callbacks reuse them). Evaluation scores what ``predict_proba`` gives (temperature and flip
        average included): ``loss`` and ``nll`` are then the same number, ``ece`` the calibration error."""
        images, labels, *teacher = batch
        if stage == "train":
            scores = self(images)
            loss = F.cross_entropy(scores, labels, label_smoothing=self.hparams.label_smoothing)
            distill_weight = self.hparams.distill_weight
            if distill_weight > 0:
                if not teacher:
                    raise ConfigError("model.distill_weight needs a teacher's predictions with every training batch: add "
                                      "the callback cifar_lightning.training.distillation.Distillation (its teacher: "
                                      "a checkpoint), or set distill_weight to 0.")
                soft = distillation_loss(scores, teacher[0], self.hparams.distill_temperature)
                loss = (1 - distill_weight) * loss + distill_weight * soft
            if self.hparams.consistency_weight > 0:
                # The views' labels are checked on the first step only: the check waits for the device.
                check = self.global_step == 0
                loss = loss + self.hparams.consistency_weight * view_consistency(scores, labels, check=check)
        else:
            scores = self.predict_log_proba(images)
            loss = F.nll_loss(scores, labels)
        accuracy = getattr(self, f"{stage}_acc")
        accuracy(scores, labels)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=on_step, sync_dist=True,
                 batch_size=len(labels))
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True)
        if stage != "train":
            ece = getattr(self, f"{stage}_ece")
            ece(scores.exp(), labels)
            self.log(f"{stage}/nll", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(labels))
            self.log(f"{stage}/ece", ece, on_step=False, on_epoch=True)
        return {"loss": loss} if stage == "train" else {"loss": loss, "log_probs": scores.detach()}

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._shared_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._shared_step(batch, "test")

    def inference_net(self) -> torch.nn.Module:
        """The network with BatchNorm folded into the layers before it (same outputs, faster), for
        prediction; the network itself when it is compiled, which a copy would not be, or training.

        Folding copies the network (tens of milliseconds on a CPU), so the copy is kept until the
        weights change: any in-place update, ``load_state_dict`` or move to another device or dtype.
        It is kept out of the module's children, so it never reaches ``state_dict`` or a checkpoint.
        """
        if self.hparams.compile or self.net.training:
            return self.net
        cached = self.__dict__.get("_inference_net")
        if cached is not None and torch.compiler.is_exporting():
            return cached[1]  # an exporter's tensors have no storage to key on, and no weight changes meanwhile
        # Tensors count their in-place changes (``_version``; no public API says "changed since"), except
        # inference tensors (a model built under ``torch.inference_mode``), which track none.
        key = tuple((t.device, t.dtype, t.data_ptr(), -1 if t.is_inference() else t._version)
                    for t in self.net.state_dict().values())
        if cached is None or cached[0] != key:
            folded = fold_batchnorm(self.net)
            folded = folded.to(memory_format=torch.channels_last) if self.hparams.channels_last else folded
            self.__dict__["_inference_net"] = cached = (key, folded)
        return cached[1]

    def predict_step(self, batch: tuple[Tensor, Tensor] | Tensor, batch_idx: int) -> Tensor:
        """Calibrated class probabilities (B, num_classes): ``predict_proba``."""
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.predict_proba(images)

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


def view_consistency(logits: Tensor, labels: Tensor, views: int = 2, check: bool = True) -> Tensor:
    """Jensen-Shannon divergence among the predicted distributions of ``views`` stacked views of each
    image (logits (views * B, C)): the mean over views of KL(p_view || their mixture), as AugMix
    computes it (mixture clamped at 1e-7 before its log). Refuses a batch whose stacked parts do not
    hold the same labels, which is what a batch without several views of each image looks like."""
    stacked_labels = labels.view(views, -1) if labels.numel() % views == 0 else None
    if stacked_labels is None or check and not bool((stacked_labels == stacked_labels[0]).all()):
        raise ConfigError("model.consistency_weight needs training batches with two views of every image: set "
                          "data.augment to cifar_lightning.data.augment.ViewPairs, or consistency_weight to 0.")
    probs = F.softmax(logits.float(), dim=1).view(views, -1, logits.shape[1])
    log_mixture = probs.mean(dim=0).clamp(1e-7, 1).log()
    return sum(F.kl_div(log_mixture, p, reduction="batchmean") for p in probs) / views


def distillation_loss(logits: Tensor, teacher_log_probs: Tensor, temperature: float) -> Tensor:
    """KL(teacher || student), both softened by ``temperature``, times its square (Hinton et al. 2015: it
    keeps the gradients' size independent of the temperature). The teacher comes as log-probabilities
    at temperature 1: dividing them by ``temperature`` before a softmax softens them as dividing its
    logits would."""
    student = F.log_softmax(logits.float() / temperature, dim=1)
    target = F.log_softmax(teacher_log_probs.float() / temperature, dim=1)
    return F.kl_div(student, target, log_target=True, reduction="batchmean") * temperature ** 2


def check_settings(*, lr, conv_dropout, dense_dropout, label_smoothing, std, class_names,
                   momentum, warmup_fraction, weight_decay, bn_momentum, temperature, tta_translate=0,
                   consistency_weight=0.0, distill_weight=0.0, distill_temperature=4.0) -> None:
    """Reject values that would train nonsense, naming the setting and its valid range."""
    problems = []
    if not 0 <= distill_weight <= 1:
        problems.append(f"distill_weight must be in [0, 1] (0: off), got {distill_weight}")
    if not is_valid_temperature(distill_temperature):
        problems.append(f"distill_temperature must be a finite number greater than 0, got {distill_temperature}")
    if consistency_weight < 0:
        problems.append(f"consistency_weight must be at least 0 (0: off), got {consistency_weight}")
    if not 0 <= tta_translate <= 8:
        problems.append(f"tta_translate must be 0 (off) to 8 pixels, got {tta_translate}")
    if not is_valid_temperature(temperature):
        problems.append(f"temperature must be a finite number greater than 0, got {temperature}")
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
