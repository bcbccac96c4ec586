"""learn2learn.vision.models: the few-shot networks (same module names, so state_dicts load either way).

    OmniglotFC(28 ** 2, ways)        Santoro et al. 2016: 4 x [linear, BatchNorm, ReLU] + linear
    OmniglotCNN(ways)                Finn et al. 2017: 4 x [conv3x3 stride 2, BatchNorm, ReLU], mean-pool, linear
    MiniImagenetCNN(ways) (= CNN4)   Ravi & Larochelle 2017: 4 x [conv3x3, BatchNorm, ReLU, maxpool 2], linear
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar, cast

import torch
from torch import Tensor, nn

from fastmaml.faces.compat.learn2learn.nn import Flatten, Lambda

M = TypeVar("M", bound=nn.Module)

__all__ = ["CNN4", "CNN4Backbone", "ConvBase", "ConvBlock", "LinearBlock", "MiniImagenetCNN", "OmniglotCNN",
           "OmniglotFC", "fc_init_", "maml_init_"]


def fc_init_(module: M) -> M:
    """Weights from a normal of std 0.01 truncated at 2 std, bias 0 (in place).

    Args:
        module: an nn.Linear (or any module with weight and bias).
    """
    if getattr(module, "weight", None) is not None:
        nn.init.trunc_normal_(cast(Tensor, module.weight).data, mean=0.0, std=0.01, a=-0.02, b=0.02)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(cast(Tensor, module.bias).data)
    return module


def maml_init_(module: M) -> M:
    """Xavier-uniform weights, bias 0 (in place), as in the MAML code.

    Args:
        module: a conv or linear module.
    """
    nn.init.xavier_uniform_(cast(Tensor, module.weight).data, gain=1.0)
    nn.init.zeros_(cast(Tensor, module.bias).data)
    return module


class LinearBlock(nn.Module):
    """Linear, BatchNorm, ReLU (learn2learn's LinearBlock).

    Args:
        input_size: input features.
        output_size: output features.
    """
    def __init__(self, input_size: int, output_size: int) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.normalize = nn.BatchNorm1d(output_size, affine=True, momentum=0.999, eps=1e-3,
                                        track_running_stats=False)
        self.linear = fc_init_(nn.Linear(input_size, output_size))

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.normalize(self.linear(x)))


class ConvBlock(nn.Module):
    """conv (padding 1), BatchNorm, ReLU, then a max-pool of 2 * max_pool_factor, or, without
    max_pool, a conv of that stride instead.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: the conv kernel size.
        max_pool: max-pool (False: stride 2 convolution).
        max_pool_factor: scales the pool size.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], max_pool: bool = True,
                 max_pool_factor: float = 1.0) -> None:
        super().__init__()
        stride = int(2 * max_pool_factor)
        self.max_pool: nn.Module = nn.MaxPool2d(stride, stride) if max_pool else nn.Identity()
        self.normalize = nn.BatchNorm2d(out_channels, affine=True)
        nn.init.uniform_(self.normalize.weight)
        self.relu = nn.ReLU()
        self.conv = maml_init_(nn.Conv2d(in_channels, out_channels, kernel_size, stride=1 if max_pool else stride,
                                         padding=1, bias=True))

    def forward(self, x: Tensor) -> Tensor:
        return self.max_pool(self.relu(self.normalize(self.conv(x))))


class ConvBase(nn.Sequential):
    """A stack of ConvBlocks (learn2learn's ConvBase).

    Args:
        hidden: channels of every block.
        channels: input channels.
        max_pool: max-pool in each block (False: stride 2 convolutions).
        layers: the number of blocks.
        max_pool_factor: scales the pool size.
    """
    def __init__(self, hidden: int = 64, channels: int = 1, max_pool: bool = False, layers: int = 4,
                 max_pool_factor: float = 1.0) -> None:
        blocks = [ConvBlock(channels if i == 0 else hidden, hidden, (3, 3), max_pool, max_pool_factor)
                  for i in range(layers)]
        super().__init__(*blocks)


class OmniglotFC(nn.Module):
    """The fully connected Omniglot network of the MAML paper (learn2learn's OmniglotFC).

    Args:
        input_size: input features (e.g. 28 * 28).
        output_size: the number of classes.
        sizes: the hidden widths (default [256, 128, 64, 64]).
    """
    def __init__(self, input_size: int, output_size: int, sizes: Sequence[int] | None = None) -> None:
        super().__init__()
        sizes = [256, 128, 64, 64] if sizes is None else list(sizes)
        dims = [input_size] + sizes
        self.features = nn.Sequential(Flatten(), nn.Sequential(*[LinearBlock(a, b) for a, b in zip(dims, dims[1:])]))
        self.classifier = fc_init_(nn.Linear(sizes[-1], output_size))
        self.input_size = input_size

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class OmniglotCNN(nn.Module):
    """For 1x28x28 inputs (any input is viewed as [-1, 1, 28, 28]).

    Args:
        output_size: the number of classes.
        hidden_size: channels of every conv block.
        layers: the number of blocks.
    """

    def __init__(self, output_size: int = 5, hidden_size: int = 64, layers: int = 4) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.base = ConvBase(hidden=hidden_size, channels=1, max_pool=False, layers=layers)
        self.features = nn.Sequential(Lambda(lambda x: x.view(-1, 1, 28, 28)), self.base,
                                      Lambda(lambda x: x.mean(dim=[2, 3])), Flatten())
        self.classifier = nn.Linear(hidden_size, output_size, bias=True)
        with torch.no_grad():
            self.classifier.weight.normal_()
            self.classifier.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class CNN4Backbone(ConvBase):
    """The conv blocks of CNN4, without the classifier.

    Args:
        hidden_size: channels of every conv block.
        layers: the number of conv blocks.
        channels: input channels.
        max_pool: max-pool in each block (False: stride 2 convolutions).
        max_pool_factor: scales the pool size (None: 4 / layers).
    """
    def __init__(self, hidden_size: int = 64, layers: int = 4, channels: int = 3, max_pool: bool = True,
                 max_pool_factor: float | None = None) -> None:
        super().__init__(hidden=hidden_size, layers=layers, channels=channels, max_pool=max_pool,
                         max_pool_factor=4 // layers if max_pool_factor is None else max_pool_factor)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x).reshape(x.size(0), -1)


class CNN4(nn.Module):
    """For 3x84x84 inputs; `embedding_size` defaults to 25 * hidden_size (84 -> 5 after 4 pools).

    Args:
        output_size: the number of classes.
        hidden_size: channels of every conv block.
        layers: the number of conv blocks.
        channels: input channels.
        max_pool: max-pool in each block (False: stride 2 convolutions).
        embedding_size: the flattened feature size before the classifier (default 25 * hidden_size).
    """

    def __init__(self, output_size: int, hidden_size: int = 64, layers: int = 4, channels: int = 3,
                 max_pool: bool = True, embedding_size: int | None = None):
        super().__init__()
        self.features = CNN4Backbone(hidden_size, layers, channels, max_pool, 4 // layers)
        self.classifier = maml_init_(nn.Linear(25 * hidden_size if embedding_size is None else embedding_size,
                                               output_size, bias=True))
        self.hidden_size = hidden_size

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


MiniImagenetCNN = CNN4
