"""learn2learn-shaped MAML and MetaSGD on fastmaml's fused inner update.

    import fastmaml.compat.learn2learn as l2l        # was: import learn2learn as l2l
    maml = l2l.algorithms.MAML(model, lr=0.01)        # or l2l.MAML(model, lr=0.01)
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

import types

import torch
from torch import Tensor, nn

from fastmaml import ops
from fastmaml.compat._module import FastSlots, lr_list, share

__all__ = ["MAML", "BaseLearner", "MetaSGD", "algorithms", "clone_module"]


def clone_module(module: nn.Module) -> nn.Module:
    """A shallow clone of `module` holding its parameters, sharing its buffers (learn2learn's
    `clone_module` without the per-tensor copies)."""
    return FastSlots(module, buffer_rule=share).root


class BaseLearner(nn.Module):
    """learn2learn's BaseLearner: wraps `self.module`, forwards calls and unknown attributes to it."""

    def __init__(self, module: nn.Module | None = None):
        super().__init__()
        self.module = module

    def __getattr__(self, attr):
        try:
            return super().__getattr__(attr)
        except AttributeError:
            return getattr(self.__dict__["_modules"]["module"], attr)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def _grads(loss: Tensor, params: list[Tensor], second_order: bool, allow_unused: bool, allow_nograd: bool):
    """learn2learn's gradient rules: with allow_nograd, parameters with requires_grad=False get
    no gradient (None); otherwise torch.autograd.grad over all of them, which raises for such a
    parameter unless allow_unused... and then names the flags to set."""
    if allow_nograd:
        wrt = [i for i, p in enumerate(params) if p.requires_grad]
        got = torch.autograd.grad(loss, [params[i] for i in wrt], retain_graph=second_order,
                                  create_graph=second_order, allow_unused=allow_unused)
        grads: list[Tensor | None] = [None] * len(params)
        for i, g in zip(wrt, got):
            grads[i] = g
        return grads
    try:
        return list(torch.autograd.grad(loss, params, retain_graph=second_order, create_graph=second_order,
                                        allow_unused=allow_unused))
    except RuntimeError as e:
        raise RuntimeError(f"{e}\nfastmaml.compat.learn2learn: maybe try with allow_nograd=True and/or "
                           "allow_unused=True (as in learn2learn)") from e


class MAML(BaseLearner):
    """learn2learn.algorithms.MAML: `clone()` gives a learner whose parameters start as the
    meta-parameters; `learner.adapt(loss)` takes one SGD step p <- p - lr * dloss/dp on them
    (differentiably unless first_order), through one fastmaml.ops.update call."""

    def __init__(self, model: nn.Module, lr, first_order: bool = False, allow_unused: bool | None = None,
                 allow_nograd: bool = False):
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

    def adapt(self, loss: Tensor, first_order: bool | None = None, allow_unused: bool | None = None,
              allow_nograd: bool | None = None) -> None:
        """One gradient step on `loss`, updating this learner's parameters (not in place: the
        slots get new tensors, so the graph back to the meta-parameters is kept)."""
        first_order = self.first_order if first_order is None else first_order
        allow_unused = self.allow_unused if allow_unused is None else allow_unused
        allow_nograd = self.allow_nograd if allow_nograd is None else allow_nograd
        slots = FastSlots.of(self.module)
        params = slots.current()
        grads = _grads(loss, params, not first_order, allow_unused, allow_nograd)
        _apply(slots, params, grads, self.lr)

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
                 allow_nograd=self.allow_nograd if allow_nograd is None else allow_nograd)
        object.__setattr__(new, "__dict__", d)
        return new


class MetaSGD(BaseLearner):
    """learn2learn.algorithms.MetaSGD: a learned per-element rate for every parameter (`lrs`,
    initialised to `lr`); `adapt` takes p <- p - lrs * dloss/dp in one fastmaml.ops.update call
    (the "scaled" form), differentiable in both p and lrs."""

    def __init__(self, model: nn.Module, lr: float = 1.0, first_order: bool = False, lrs=None):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"MetaSGD: model must be an nn.Module, got {type(model).__name__}")
        self.module = model
        if lrs is None:
            lrs = nn.ParameterList([nn.Parameter(torch.ones_like(p) * lr) for p in model.parameters()])
        self.lrs = lrs
        self.first_order = first_order

    def clone(self) -> MetaSGD:
        """A learner on a shallow clone of the module, adapting with this learner's rates (the
        rates themselves, so meta-gradients reach them)."""
        return MetaSGD(clone_module(self.module), lrs=list(self.lrs), first_order=self.first_order)

    def adapt(self, loss: Tensor, first_order: bool | None = None) -> None:
        first_order = self.first_order if first_order is None else first_order
        second_order = not first_order
        slots = FastSlots.of(self.module)
        params = slots.current()
        lrs = list(self.lrs)
        if len(lrs) != len(params):
            raise ValueError(f"MetaSGD.adapt: {len(lrs)} learning rates for {len(params)} parameters")
        grads = torch.autograd.grad(loss, params, retain_graph=second_order, create_graph=second_order)
        new = ops.update(params, list(grads), lrs, names=slots.names)
        slots.assign(new)


def _apply(slots: FastSlots, params: list[Tensor], grads: list[Tensor | None], lr) -> None:
    """p - lr * g for every parameter with a gradient, in one dispatched update."""
    if all(g is not None for g in grads):
        new = ops.update(params, grads, lr_list(lr, params), names=slots.names)
        slots.assign(new)
        return
    idx = [i for i, g in enumerate(grads) if g is not None]
    if not idx:
        return
    ps = [params[i] for i in idx]
    new = ops.update(ps, [grads[i] for i in idx], lr_list(lr, ps), names=[slots.names[i] for i in idx])
    slots.assign(new, idx)


# `l2l.algorithms.MAML` spelling, for code that imports the package as l2l.
algorithms = types.SimpleNamespace(MAML=MAML, MetaSGD=MetaSGD, BaseLearner=BaseLearner)


def __getattr__(name: str):
    raise AttributeError(f"fastmaml.compat.learn2learn has no {name!r}: it provides {', '.join(__all__)}; "
                         "use learn2learn itself for the rest (data, vision, gym, ANIL/GBML wrappers, ...)")
