"""The chain ops in plain PyTorch: the forward with batched products, the gradients by
torch.autograd.grad (create_graph under grad mode, so they are differentiable as the C++ node's
are). The oracle of the native ops (tests/ops/test_chain_ops.py). Kept plain on purpose."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor

RELU, BIAS = 2, 1


def is_available(device: torch.device) -> bool:
    return True


def _losses(x: Tensor, y: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor | None], layers: Sequence[int]) -> Tensor:
    z = x
    for w, b, flags in zip(weights, biases, layers):
        z = torch.bmm(z, w.transpose(1, 2))
        if flags & BIAS:
            z = z + cast(Tensor, b).unsqueeze(1)  # the flag says it is there
        if flags & RELU:
            z = torch.relu(z)
    return (z - y).square().flatten(1).mean(1)


def loss(x: Tensor, y: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor | None], layers: Sequence[int]) -> Tensor:
    return _losses(x, y, weights, biases, layers)


def loss_and_grad(x: Tensor, y: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor | None], layers: Sequence[int]) -> tuple[Tensor, list[Tensor]]:
    create_graph = torch.is_grad_enabled()
    params = [t for w, b in zip(weights, biases) for t in ((w, b) if b is not None else (w,))]
    # tensors that do not require grad (first order: detached) are differentiated as fresh leaves
    leaves = [p if p.requires_grad and create_graph else p.detach().requires_grad_() for p in params]
    it = iter(leaves)
    ws: list[Tensor] = []
    bs: list[Tensor | None] = []
    for b in biases:
        ws.append(next(it))
        bs.append(next(it) if b is not None else None)
    with torch.enable_grad():
        losses = _losses(x, y, ws, bs, layers)
        grads = torch.autograd.grad(losses.sum(), leaves, create_graph=create_graph)
    if not create_graph:
        losses = losses.detach()
    return losses, list(grads)
