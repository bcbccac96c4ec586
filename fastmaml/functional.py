"""The functional core: parameters travel as dict[str, Tensor], the model runs through
torch.func.functional_call, buffers pass through and are never adapted.

    params = fastmaml.params_of(model)                 # the meta-parameters, still tracked
    phi = fastmaml.adapt(model, params, x_s, y_s, loss_fn, lr=0.01, steps=5)
    loss = loss_fn(fastmaml.functional_forward(model, phi, x_q), y_q)
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from fastmaml import ops
from fastmaml.checks import check_names, check_rates, check_task

Params = dict[str, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


def params_of(model: nn.Module) -> Params:
    """The model's parameters by name (the tensors themselves: gradients flow back to them).

    Args:
        model: any nn.Module.
    """
    return dict(model.named_parameters())


def buffers_of(model: nn.Module) -> Params:
    """The model's buffers by name (BatchNorm's running statistics, ...).

    Args:
        model: any nn.Module.
    """
    return dict(model.named_buffers())


def functional_forward(model: nn.Module, params: Mapping[str, Tensor], *args: Any,
                       buffers: Mapping[str, Tensor] | None = None, **kwargs: Any) -> Any:
    """Run `model` with `params` in place of its parameters.

    Args:
        model: the module to run.
        params: name -> tensor; missing names fall back to the model's own.
        *args: the model's positional inputs.
        buffers: name -> tensor (default: the model's own, updated in place as usual).
        **kwargs: the model's keyword inputs.

    Raises:
        ValueError: if a name is neither a parameter nor a buffer of `model` (a misspelled key).
    """
    tensors = dict(params)
    if buffers is not None:
        tensors.update(buffers)
    if not torch.compiler.is_compiling():
        check_names(model, tensors)
    return functional_call(model, tensors, args, kwargs)


def select_names(all_names: Iterable[str], patterns: Iterable[str] | None, arg: str = "adapt_names") -> list[str]:
    """The names matched by `patterns`, in the order of `all_names`.

    A pattern matches a name exactly, as a module prefix ("head" matches "head.weight"), or as a glob
    ("*.bias").

    Args:
        all_names: the names to choose from.
        patterns: a name/pattern or a list of them; None: all.
        arg: the argument's name in error messages.

    Raises:
        ValueError: if a pattern matches nothing, or the list is empty.
    """
    names = list(all_names)
    if patterns is None:
        return names
    if isinstance(patterns, str):
        patterns = [patterns]
    patterns = list(patterns)
    if not patterns:
        raise ValueError(f"{arg} must name at least one parameter, got an empty list")
    chosen = set()
    for pattern in patterns:
        hits = [n for n in names if n == pattern or n.startswith(pattern + ".") or fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise ValueError(f"{arg}: {pattern!r} matches no parameter; the parameters are {names}")
        chosen.update(hits)
    return [n for n in names if n in chosen]


def inner_update(params: Mapping[str, Tensor], grads: Mapping[str, Tensor], lr: float | Mapping[str, Tensor],
                 gamma: Mapping[str, Tensor] | None = None) -> Params:
    """p - lr * g (or gamma * p - lr * g) for every name in `grads`, in one fused op.

    Other params pass through unchanged. Differentiable in params, grads, lr and gamma.

    Args:
        params: name -> tensor.
        grads: name -> gradient, for the names to update.
        lr: a number, or a dict name -> tensor broadcastable to the param (Meta-SGD).
        gamma: a dict name -> forget factor broadcastable to the param (ALFA), or None.

    Returns:
        A new dict with the updated tensors.

    Raises:
        KeyError: if grads, lr or gamma lacks a name the others have.
    """
    names = list(grads)
    missing = [n for n in names if n not in params]
    if missing:
        raise KeyError(f"inner_update: grads has {missing} which params lacks")
    if isinstance(lr, Mapping):
        lack = [n for n in names if n not in lr]
        if lack:
            raise KeyError(f"inner_update: lr has no rate for {lack}")
        rates: float | list[Tensor] = [lr[n] for n in names]
    else:
        rates = lr
    gammas = None
    if gamma is not None:
        lack = [n for n in names if n not in gamma]
        if lack:
            raise KeyError(f"inner_update: gamma has no factor for {lack}")
        gammas = [gamma[n] for n in names]
    new = ops.update([params[n] for n in names], [grads[n] for n in names], rates, gammas, names=names)
    out = dict(params)
    out.update(zip(names, new))
    return out


def autograd_grads(loss_of: Callable[[Params, Params | None], Tensor], params: Params, names: list[str],
                   first_order: bool, buffers: Params | None = None) -> tuple[Tensor, Params]:
    """The support loss `loss_of(params, buffers)` and its gradients w.r.t. params[names], by autograd.

    The graph through the gradients is kept (second order) unless first_order. Unused params get zero
    gradients.

    Args:
        loss_of: (params, buffers) -> scalar loss.
        params: name -> tensor.
        names: the names to differentiate w.r.t.
        first_order: if True, no graph through the gradients.
        buffers: passed to `loss_of`.
    """
    loss = loss_of(params, buffers)
    wrt = [params[n] for n in names]
    grads = torch.autograd.grad(loss, wrt, create_graph=not first_order, allow_unused=True)
    return loss, {n: torch.zeros_like(w) if g is None else g for n, w, g in zip(names, wrt, grads)}


def func_grads(loss_of: Callable[[Params, Params | None], Tensor], params: Params, names: list[str],
               first_order: bool, buffers: Params | None = None) -> tuple[Tensor, Params]:
    """Same as `autograd_grads` by torch.func.grad, which composes with vmap (the task-batched path).

    An outer autograd pass differentiates through it (second order); first order differentiates a
    detached copy so the gradients are constants to the outer pass. Buffers are an explicit input:
    BatchNorm updates them in place, which grad allows only on inputs.

    Args:
        loss_of: (params, buffers) -> scalar loss.
        params: name -> tensor.
        names: the names to differentiate w.r.t.
        first_order: if True, the gradients are constants to an outer pass.
        buffers: passed to `loss_of`.
    """
    if first_order:
        params = {n: p.detach() for n, p in params.items()}
    rest = {n: p for n, p in params.items() if n not in names}

    def loss_wrt(adapted: Params, buffers: Params | None) -> tuple[Tensor, Tensor]:
        loss = loss_of({**rest, **adapted}, buffers)
        return loss, loss.detach()

    grads, loss = torch.func.grad(loss_wrt, has_aux=True)({n: params[n] for n in names}, buffers)
    return loss, grads


def adapt(
    model: nn.Module,
    params: Mapping[str, Tensor],
    support_x: Tensor,
    support_y: Tensor,
    loss_fn: LossFn,
    *,
    lr: float | Mapping[str, Tensor] = 0.01,
    steps: int = 1,
    first_order: bool = False,
    adapt_names: Iterable[str] | None = None,
    buffers: Mapping[str, Tensor] | None = None,
) -> Params:
    """`steps` inner steps of gradient descent on one task's support set, phi <- phi - lr * grad L_support(phi).

    Args:
        model: the module to run.
        params: phi_0, name -> tensor (e.g. `params_of(model)`).
        support_x: the task's support inputs, [N, ...].
        support_y: the support targets.
        loss_fn: loss_fn(output, y) -> scalar.
        lr: a number, or a dict name -> tensor (per-parameter rates).
        steps: the number of steps, an int >= 0.
        first_order: if True, no graph through the inner gradients.
        adapt_names: names/patterns of the adapted params (None: all); the others pass through.
        buffers: name -> tensor for the model's buffers (None: its own).

    Returns:
        The adapted params (a new dict).
    """
    params = dict(params)
    check_task(support_x, support_y)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    names = select_names(params, adapt_names)
    check_rates(lr, names)

    def loss_of(p: Params, buffers: Params | None) -> Tensor:
        return loss_fn(functional_forward(model, p, support_x, buffers=buffers), support_y)

    for _ in range(steps):
        _, grads = autograd_grads(loss_of, params, names, first_order, None if buffers is None else dict(buffers))
        params = inner_update(params, grads, lr)
    return params
