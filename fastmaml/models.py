"""The networks of the MAML paper, named so algorithms can pick parts by prefix
(`features.*` is the body, `head.*` the classifier: ANIL adapts "head", BOIL "features").

    conv4(n_way=5)          Omniglot 28x28: 4 x [conv3x3 64, BatchNorm, ReLU, maxpool 2] + linear
    conv4(5, warp=True)     the same with a 3x3 convolutional warp layer after each ReLU (WarpGrad)
    mlp(1, 1, hidden=40)    sine regression: 1-40-40-1 with ReLU
"""

from __future__ import annotations

from collections import OrderedDict
from typing import cast

import torch
from torch import Tensor, nn


def conv_block(in_channels: int, out_channels: int, track_running_stats: bool = False) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.BatchNorm2d(out_channels, track_running_stats=track_running_stats),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


def warp_conv(channels: int) -> nn.Conv2d:
    """A 3x3 convolution on `channels`, initialised to the identity (a centred delta kernel)."""
    conv = nn.Conv2d(channels, channels, 3, padding=1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, :, 1, 1] = torch.eye(channels)
        cast(Tensor, conv.bias).zero_()
    return conv


def warp_conv_block(in_channels: int, out_channels: int, track_running_stats: bool = False) -> nn.Sequential:
    """conv_block with a warp layer: conv, norm, relu, warp, pool (names, so "*.warp.*" finds it)."""
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(in_channels, out_channels, 3, padding=1),
        norm=nn.BatchNorm2d(out_channels, track_running_stats=track_running_stats),
        relu=nn.ReLU(),
        warp=warp_conv(out_channels),
        pool=nn.MaxPool2d(2),
    ))


class Conv4(nn.Module):
    """Conv-4 of Finn et al. (2017) / Vinyals et al. (2016).

    Batch norm uses the statistics of the batch it sees, at meta-training and at test time alike
    (`track_running_stats=False`), as in the MAML reference code: a task's support set and its
    query set are normalised with their own statistics and no running state crosses tasks (which
    also keeps the module free of buffers for the task-batched vmap path).

    `warp=True` puts an identity-initialised 3x3 convolutional warp layer after each block's ReLU
    (parameters `features.<i>.warp.*`): `WarpGrad(conv4(5, warp=True), warp_names="*.warp.*")`
    meta-learns them and adapts the rest."""

    def __init__(self, n_way: int, in_channels: int = 1, hidden: int = 64, image_size: int = 28,
                 blocks: int = 4, track_running_stats: bool = False, warp: bool = False):
        super().__init__()
        if n_way < 1:
            raise ValueError(f"n_way must be >= 1, got {n_way}")
        layers, channels, size = [], in_channels, image_size
        for _ in range(blocks):
            layers.append((warp_conv_block if warp else conv_block)(channels, hidden, track_running_stats))
            channels, size = hidden, size // 2
        if size < 1:
            raise ValueError(f"image_size {image_size} is too small for {blocks} pooling blocks")
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(hidden * size * size, n_way)
        self.n_way, self.in_channels, self.image_size = n_way, in_channels, image_size

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def conv4(n_way: int = 5, in_channels: int = 1, hidden: int = 64, image_size: int = 28, warp: bool = False) -> Conv4:
    return Conv4(n_way, in_channels, hidden, image_size, warp=warp)


class MLP(nn.Module):
    """Fully connected ReLU network: `features` (the hidden layers) then `head` (the output)."""

    def __init__(self, in_features: int = 1, out_features: int = 1, hidden: int = 40, layers: int = 2):
        super().__init__()
        dims = [in_features] + [hidden] * layers
        body = []
        for d_in, d_out in zip(dims, dims[1:]):
            body += [nn.Linear(d_in, d_out), nn.ReLU()]
        self.features = nn.Sequential(*body)
        self.head = nn.Linear(dims[-1], out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def mlp(in_features: int = 1, out_features: int = 1, hidden: int = 40, layers: int = 2) -> MLP:
    """The MAML paper's sine regressor with the defaults: 1-40-40-1."""
    return MLP(in_features, out_features, hidden, layers)
