"""The chain ops of the compiled extension (csrc/chain.cpp), with their own autograd node."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fastmaml.ops import native as _update_native


def is_available(device: torch.device) -> bool:
    """The ops run on CPU and CUDA tensors (composite ATen code) whenever the extension is built."""
    return _update_native._C is not None


def loss_and_grad(x: Tensor, y: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor | None], layers: Sequence[int]) -> tuple[Tensor, list[Tensor]]:
    return torch.ops.fastmaml.chain_loss_and_grad(x, y, weights, biases, layers)


def loss(x: Tensor, y: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor | None], layers: Sequence[int]) -> Tensor:
    return torch.ops.fastmaml.chain_loss(x, y, weights, biases, layers)
