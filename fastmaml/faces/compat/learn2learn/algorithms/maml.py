"""learn2learn.algorithms.MAML and maml_update on fastmaml's fused inner update.

    import fastmaml.compat.learn2learn as l2l        # was: import learn2learn as l2l
    maml = l2l.algorithms.MAML(model, lr=0.01)
    learner = maml.clone()
    learner.adapt(loss_fn(learner(x_s), y_s))
    loss_fn(learner(x_q), y_q).backward()             # meta-gradients land on model's parameters

Same arguments, same gradients as learn2learn 0.2.0 (tests/compat check it to 1e-10 in float64).
What differs: each `adapt` is one call of fastmaml.ops.update for all parameters (one fused op
with the native backend) instead of one `p + (-lr * g)` per parameter, and `clone()` puts the
meta-parameters themselves, not `p.clone()` copies, into the learner (the same gradients; see
docs/migration/learn2learn.md).

Buffers follow learn2learn, not fastmaml's own rule: a clone shares the original's buffers, so a
BatchNorm in training mode updates the original model's running statistics in place on every
forward of every clone (a buffer with requires_grad=True is cloned into the graph instead).
fastmaml's own API (fastmaml.functional_forward) also updates the model's buffers in place when
no `buffers` are passed, and never adapts a buffer; learn2learn would add a `.update` set on a
buffer, which nothing in learn2learn's MAML sets.
"""

from __future__ import annotations

import warnings
from typing import cast

from torch import Tensor, nn

from fastmaml import ops
from fastmaml.faces.compat._module import FastSlots, lr_list
from fastmaml.faces.compat.learn2learn.algorithms.base_learner import BaseLearner
from fastmaml.faces.compat.learn2learn.utils import clone_module, gradients, update_module
from fastmaml.ops.optim import InnerOptimizer, OptimState, resolve

__all__ = ["MAML", "maml_update"]


class MAML(BaseLearner):
    """learn2learn.algorithms.MAML: `clone()` gives a learner whose parameters start as the
    meta-parameters; `learner.adapt(loss)` takes one SGD step p <- p - lr * dloss/dp on them
    (differentiably unless first_order), through one fastmaml.ops.update call.

    Args:
        model: the model to adapt.
        lr: the inner learning rate (a number or tensor).
        first_order: no graph through the inner gradients.
        allow_unused: parameters without a gradient are allowed (None: as allow_nograd).
        allow_nograd: parameters with requires_grad=False are skipped.
        inner_optimizer: fastmaml's extension, not learn2learn's: a stateful differentiable inner
            optimizer (docs/inner_optimizers.md), a name ("sgd", "momentum", "adam", "adamw",
            "rmsprop") or an InnerOptimizer. Each `clone()` starts its state afresh (a task's own
            moments); `adapt` steps it through one fused op. Default "sgd": learn2learn's update.
    """

    module: nn.Module

    def __init__(self, model: nn.Module, lr: float | Tensor, first_order: bool = False,
                 allow_unused: bool | None = None, allow_nograd: bool = False,
                 inner_optimizer: str | InnerOptimizer = "sgd") -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"MAML: model must be an nn.Module, got {type(model).__name__}")
        if isinstance(lr, bool) or not isinstance(lr, (int, float, Tensor)):
            raise TypeError(f"MAML: lr must be a number or a tensor, got {type(lr).__name__}")
        self.module = model
        self.lr = lr
        self.first_order = first_order
        self.allow_nograd = allow_nograd
        self.allow_unused = allow_nograd if allow_unused is None else allow_unused
        self.inner_optimizer = resolve(inner_optimizer)
        self.inner_state: OptimState | None = None

    def adapt(self, loss: Tensor, first_order: bool | None = None, allow_unused: bool | None = None,
              allow_nograd: bool | None = None) -> None:
        """One gradient step on `loss`, updating this learner's parameters (not in place: the
        slots get new tensors, so the graph back to the meta-parameters is kept)."""
        first_order = self.first_order if first_order is None else first_order
        allow_unused = self.allow_unused if allow_unused is None else allow_unused
        allow_nograd = self.allow_nograd if allow_nograd is None else allow_nograd
        slots = FastSlots.of(self.module)
        params = slots.current()
        grads = gradients(loss, params, not first_order, not first_order, allow_unused, allow_nograd)
        if self.inner_optimizer is None:
            _apply(slots, params, grads, self.lr)
            return
        if self.inner_state is None:
            self.inner_state = self.inner_optimizer.init(params)
        idx, new, self.inner_state = self.inner_optimizer.step_some(params, grads, self.inner_state,
                                                                    lr_list(self.lr, params))
        slots.assign(new, idx)

    def clone(self, first_order: bool | None = None, allow_unused: bool | None = None,
              allow_nograd: bool | None = None) -> MAML:
        """A learner on a shallow clone of the module: its parameters are this learner's current
        ones (gradients flow back to them), its buffers are shared."""
        # MAML(clone_module(self.module), lr=self.lr, ...) without nn.Module.__init__'s cost
        new = MAML.__new__(MAML)
        d = self.__dict__.copy()
        for key in ("_parameters", "_buffers", "_modules"):
            d[key] = d[key].copy()
        d["_modules"]["module"] = clone_module(self.module)
        d.update(first_order=self.first_order if first_order is None else first_order,
                 allow_unused=self.allow_unused if allow_unused is None else allow_unused,
                 allow_nograd=self.allow_nograd if allow_nograd is None else allow_nograd,
                 inner_state=None)
        object.__setattr__(new, "__dict__", d)
        return new


def maml_update(model: nn.Module, lr: float | Tensor, grads: list[Tensor | None] | None = None) -> nn.Module:
    """learn2learn's maml_update: p <- p - lr * g for every parameter of `model` with a gradient
    in `grads` (one per parameter, None to skip), through one fastmaml.ops.update call; the slots
    get new tensors (differentiable), the model object is updated and returned. Without `grads`,
    the parameters' `.update` attributes are applied (update_module).

    Args:
        model: the (cloned) model to update in place.
        lr: the learning rate.
        grads: one gradient (or None) per parameter, in parameters() order; None: each parameter's
            `.update`.
    """
    if grads is None:
        return update_module(model)
    slots = FastSlots.of(model)
    params = slots.current()
    grads = list(grads)
    if len(grads) != len(params):
        warnings.warn(f"maml_update: {len(params)} parameters but {len(grads)} gradients; the first "
                      f"{min(len(params), len(grads))} are applied", stacklevel=2)
    _apply(slots, params, (grads + [None] * len(params))[:len(params)], lr)
    return model


def _apply(slots: FastSlots, params: list[Tensor], grads: list[Tensor | None], lr: float | Tensor) -> None:
    """p - lr * g for every parameter with a gradient, in one dispatched update."""
    if all(g is not None for g in grads):
        new = ops.update(params, cast("list[Tensor]", grads), lr_list(lr, params), names=slots.names)
        slots.assign(new)
        return
    idx = [i for i, g in enumerate(grads) if g is not None]
    if not idx:
        return
    ps = [params[i] for i in idx]
    new = ops.update(ps, [cast(Tensor, grads[i]) for i in idx], lr_list(lr, ps), names=[slots.names[i] for i in idx])
    slots.assign(new, idx)
