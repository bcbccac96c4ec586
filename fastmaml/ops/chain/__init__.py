"""The Linear/ReLU chain ops, one dispatcher over their backends ("native": the C++ ops of
csrc/chain.cpp; "reference": the same maths by plain autograd, the oracle). NOTE: [chain maths]:

    loss_and_grad(x, y, weights, biases, layers) -> (losses [T], grads)   the support step
    loss(x, y, weights, biases, layers) -> losses [T]                     the query loss

x [T, N, in], y [T, N, out], weights[l] [T, out_l, in_l], biases[l] [T, out_l] or None; layers[l] =
1 if layer l has a bias, + 2 if a ReLU follows it; losses_t the mean squared error of task t; grads
per parameter in order (each layer's weight, then its bias). Both are differentiable (second and
third order) w.r.t. the weights and biases.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fastmaml.ops.dispatch import Family

CHAIN = Family.of_package("chain", __name__, ("reference", "native"), auto={"cpu": ("native",), "cuda": ("native",)})


def loss_and_grad(x: Tensor, y: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor | None], layers: Sequence[int]) -> tuple[Tensor, list[Tensor]]:
    return CHAIN.backend(x.device).loss_and_grad(x, y, list(weights), list(biases), list(layers))


def loss(x: Tensor, y: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor | None], layers: Sequence[int]) -> Tensor:
    return CHAIN.backend(x.device).loss(x, y, list(weights), list(biases), list(layers))


def resolve_backend(device: torch.device) -> str:
    return CHAIN.resolve(device)
