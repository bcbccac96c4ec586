"""A loss function over T tasks at once: [T, N, ...] outputs and targets -> the [T] per-task losses,
each exactly `loss_fn` on one task's [N, ...] (torch.func.vmap of it in general). The default
reductions of the MSE and the cross-entropy, the common cases, are written out (no vmap)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as TF
from torch import Tensor, nn

from fastmaml.functional import LossFn

PerTaskLoss = Callable[[Tensor, Tensor], Tensor]


def is_mse(loss_fn: LossFn) -> bool:
    return loss_fn is TF.mse_loss or (type(loss_fn) is nn.MSELoss and loss_fn.reduction == "mean")


def _ignore_index(loss_fn: LossFn) -> int | None:
    """The ignore_index of a plain mean cross-entropy, None for anything else."""
    if loss_fn is TF.cross_entropy:
        return -100  # F.cross_entropy's default
    if (type(loss_fn) is nn.CrossEntropyLoss and loss_fn.reduction == "mean" and loss_fn.weight is None
            and loss_fn.label_smoothing == 0):
        return loss_fn.ignore_index
    return None


def per_task_loss(loss_fn: LossFn) -> PerTaskLoss:
    """loss_fn over [T, N, ...] predictions and targets -> [T]."""
    def vmapped(out: Tensor, y: Tensor) -> Tensor:
        losses = torch.func.vmap(loss_fn)(out, y)
        if losses.dim() != 1:  # the loop would fail differentiating it; say why here
            raise ValueError(f"loss_fn must return one number per task (a scalar), got shape {list(losses.shape[1:])} "
                             f"per task")
        return losses
    if is_mse(loss_fn):
        def mse(out: Tensor, y: Tensor) -> Tensor:
            if out.shape != y.shape:  # F.mse_loss broadcasts (and warns): let it, task by task
                return vmapped(out, y)
            return (out - y).square().flatten(1).mean(1)
        return mse
    ignore = _ignore_index(loss_fn)
    if ignore is not None:
        def cross_entropy(out: Tensor, y: Tensor) -> Tensor:
            if out.dim() != 3 or y.dim() != 2 or y.is_floating_point():
                return vmapped(out, y)
            T, N = y.shape
            each = TF.cross_entropy(out.reshape(T * N, -1), y.reshape(T * N), reduction="none", ignore_index=ignore)
            # the mean over the targets not ignored, per task (0 / 0 = nan when all are, as F.cross_entropy)
            return each.view(T, N).sum(1) / (y != ignore).sum(1).to(each.dtype)
        return cross_entropy
    return vmapped
