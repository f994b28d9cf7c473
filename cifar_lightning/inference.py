"""An inference copy of the network with every BatchNorm folded into the layer before it.

In eval mode BatchNorm is a fixed per-channel scale and shift, so it can be merged into the
weights of the conv or dense layer it follows (``torch.nn.utils.fusion``): the same function to
float rounding, one full pass over the activations fewer per layer. ``predict`` uses it.
"""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval


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
