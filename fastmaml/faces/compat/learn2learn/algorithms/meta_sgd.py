"""learn2learn.algorithms.MetaSGD and meta_sgd_update on fastmaml's fused inner update ("scaled"
form: p - lrs * g, differentiable in p and in the learned rates lrs)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import cast

import torch
from torch import Tensor, nn

from fastmaml import ops
from fastmaml.faces.compat._module import FastSlots
from fastmaml.faces.compat.learn2learn.algorithms.base_learner import BaseLearner
from fastmaml.faces.compat.learn2learn.utils import clone_module

__all__ = ["MetaSGD", "meta_sgd_update"]


def meta_sgd_update(model: nn.Module, lrs: Iterable[Tensor] | None = None,
                    grads: Iterable[Tensor | None] | None = None) -> nn.Module:
    """learn2learn's meta_sgd_update: p <- p - lr * g with one rate tensor per parameter of
    `model`, in one fastmaml.ops.update call ("scaled" form); a parameter whose gradient is None
    keeps its tensor. Returns `model`, whose slots now hold the new tensors.

    Args:
        model: the (cloned) model to update in place.
        lrs: one rate tensor per parameter.
        grads: one gradient per parameter, in parameters() order.
    """
    if grads is None or lrs is None:
        return model
    slots = FastSlots.of(model)
    params = slots.current()
    lrs, grads = list(lrs), list(grads)
    if len(lrs) != len(params) or len(grads) != len(params):
        raise ValueError(f"meta_sgd_update: {len(params)} parameters but {len(lrs)} learning rates and "
                         f"{len(grads)} gradients (one of each per parameter)")
    idx = [i for i, g in enumerate(grads) if g is not None]
    new = ops.update([params[i] for i in idx], [cast(Tensor, grads[i]) for i in idx], [lrs[i] for i in idx],
                     names=[slots.names[i] for i in idx])
    slots.assign(new, idx)
    return model


class MetaSGD(BaseLearner):
    """learn2learn.algorithms.MetaSGD: a learned per-element rate for every parameter (`lrs`,
    initialised to `lr`); `adapt` takes p <- p - lrs * dloss/dp in one fastmaml.ops.update call
    (the "scaled" form), differentiable in both p and lrs.

    Args:
        model: the model to adapt.
        lr: the initial value of every learned rate.
        first_order: no graph through the inner gradients.
        lrs: the initial rate tensors, one per parameter (None: lr everywhere).
    """

    module: nn.Module

    def __init__(self, model: nn.Module, lr: float = 1.0, first_order: bool = False,
                 lrs: Sequence[Tensor] | None = None) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"MetaSGD: model must be an nn.Module, got {type(model).__name__}")
        self.module = model
        self.lrs: nn.ParameterList | Sequence[Tensor] = (nn.ParameterList([nn.Parameter(torch.ones_like(p) * lr) for p in model.parameters()])
                                      if lrs is None else lrs)
        self.first_order = first_order

    def clone(self) -> MetaSGD:
        """A learner on a shallow clone of the module, adapting with this learner's rates (the
        rates themselves, so meta-gradients reach them)."""
        return MetaSGD(clone_module(self.module), lrs=list(self.lrs), first_order=self.first_order)

    def adapt(self, loss: Tensor, first_order: bool | None = None) -> None:
        """One step p <- p - lrs * dloss/dp on this learner's parameters (not in place).

        Args:
            loss: the loss to differentiate.
            first_order: overrides the learner's `first_order` (None: keep it).
        """
        first_order = self.first_order if first_order is None else first_order
        second_order = not first_order
        params = FastSlots.of(self.module).current()
        grads = torch.autograd.grad(loss, params, retain_graph=second_order, create_graph=second_order)
        meta_sgd_update(self.module, self.lrs, grads)
