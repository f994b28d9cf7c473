"""The original Keras CIFAR-10 CNN as a plain ``torch.nn.Module`` (no Lightning here).

Keras defaults are reproduced on purpose, because they change how the network trains:
Glorot-uniform kernels with zero biases, conv biases kept although BatchNorm follows,
and BatchNorm with Keras' momentum 0.99 (PyTorch ``momentum=0.01``) and epsilon 1e-3.

``fold_batchnorm`` gives the inference copy: in eval mode each BatchNorm is a fixed per-channel
scale and shift, merged into the conv or dense layer before it (``torch.nn.utils.fusion``): the
same function to float rounding, one pass over the activations fewer per layer. ``predict`` and
``export`` use it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

# Keras BatchNormalization defaults: moving average momentum 0.99, epsilon 1e-3.
# PyTorch's momentum is the weight of the *new* batch, so 1 - 0.99.
KERAS_BN_MOMENTUM = 0.01
KERAS_BN_EPS = 1e-3


class _ExpELUFunction(torch.autograd.Function):
    """ELU as max(x, exp(min(x, 0)) - 1), backward from the saved output (exp(x) = out + 1 where x <= 0)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        out = torch.maximum(x, torch.exp(torch.clamp(x, max=0)) - 1)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (out,) = ctx.saved_tensors
        return grad * torch.clamp(out, max=0).add_(1)


class ExpELU(nn.ELU):
    """ELU (alpha 1) that is faster on CPUs; the same function to float rounding.

    PyTorch's CPU ELU kernel computes ``expm1`` without vectorisation: measured on this project's
    2-core AVX-512 machine, one ELU over a (64, 32, 32, 32) batch took ~10 ms against ~1 ms for
    ``exp``; this form raised training from ~490 to ~580 images/s and inference from ~770 to ~960.
    GPUs keep ``F.elu``, whose kernel is fast there, and so does an export (``torch.export``, ONNX),
    where ``F.elu`` is one operator and a custom autograd function is not.
    """

    def __init__(self) -> None:
        super().__init__(alpha=1.0)

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu" and not torch.compiler.is_exporting():
            return _ExpELUFunction.apply(x)
        return F.elu(x)


def conv_bn_elu(in_channels: int, out_channels: int, bn_momentum: float = KERAS_BN_MOMENTUM) -> list[nn.Module]:
    """3x3 'same' conv, then BatchNorm, then ELU: the order the original uses in every layer."""
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=True),
        nn.BatchNorm2d(out_channels, eps=KERAS_BN_EPS, momentum=bn_momentum),
        ExpELU(),
    ]


def conv_block(in_channels: int, out_channels: int, dropout: float, bn_momentum: float = KERAS_BN_MOMENTUM) -> nn.Sequential:
    """Two conv layers, 2x2 max pooling with stride 2, dropout."""
    return nn.Sequential(
        *conv_bn_elu(in_channels, out_channels, bn_momentum),
        *conv_bn_elu(out_channels, out_channels, bn_momentum),
        nn.MaxPool2d(kernel_size=2, stride=2),
        nn.Dropout(dropout),
    )


class KerasCIFAR10CNN(nn.Module):
    """The 420,842-parameter CNN (419,818 trainable + 1,024 BatchNorm running statistics).

    Args:
        num_classes: Size of the output layer.
        conv_dropout: Dropout after each of the three conv blocks.
        dense_dropout: Dropout after the 64-unit dense layer.
        widths: Filters of the three conv blocks.
        hidden: Units of the dense layer before the classifier.
        bn_momentum: Weight of each new batch in BatchNorm's running statistics (PyTorch's convention;
            Keras' 0.99 is 0.01 here). A recipe may raise it: the same layers, other running averages.
    """

    def __init__(
        self,
        num_classes: int = 10,
        conv_dropout: Sequence[float] = (0.2, 0.2, 0.3),
        dense_dropout: float = 0.3,
        widths: Sequence[int] = (32, 64, 128),
        hidden: int = 64,
        bn_momentum: float = KERAS_BN_MOMENTUM,
    ) -> None:
        super().__init__()
        if len(conv_dropout) != len(widths):
            raise ValueError(
                f"conv_dropout has {len(conv_dropout)} rates but there are {len(widths)} conv blocks; "
                "give one rate per block."
            )
        blocks, in_channels = [], 3
        for width, rate in zip(widths, conv_dropout):
            blocks.append(conv_block(in_channels, width, rate, bn_momentum))
            in_channels = width
        self.features = nn.Sequential(*blocks)  # (B, 3, 32, 32) -> (B, 128, 4, 4)
        self.classifier = nn.Sequential(
            nn.Flatten(),  # (B, 2048)
            nn.Linear(in_channels * 4 * 4, hidden),
            nn.BatchNorm1d(hidden, eps=KERAS_BN_EPS, momentum=bn_momentum),
            ExpELU(),
            nn.Dropout(dense_dropout),
            nn.Linear(hidden, num_classes),  # logits; softmax lives in the loss / predict
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Keras initialisation: Glorot-uniform kernels, zero biases, BatchNorm gamma 1 and beta 0."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        """Normalised images (B, 3, 32, 32) -> logits (B, num_classes)."""
        return self.classifier(self.features(x))


def fold_batchnorm(net: nn.Module) -> nn.Module:
    """An eval-mode copy of ``net`` where each (Conv2d|Linear, BatchNorm) pair in a Sequential is one layer."""
    folded = copy.deepcopy(net).eval()
    for module in folded.modules():
        if not isinstance(module, nn.Sequential):
            continue
        layers = list(module)
        for i in range(len(layers) - 1):
            layer, norm = layers[i], layers[i + 1]
            if isinstance(layer, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                module[i], module[i + 1] = fuse_conv_bn_eval(layer, norm), nn.Identity()
            elif isinstance(layer, nn.Linear) and isinstance(norm, nn.BatchNorm1d):
                module[i], module[i + 1] = fuse_linear_bn_eval(layer, norm), nn.Identity()
    for parameter in folded.parameters():
        parameter.requires_grad_(False)
    return folded
