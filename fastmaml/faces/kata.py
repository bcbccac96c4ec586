"""The two functions of the MAML coding kata, on the fastmaml functional core.

    fast = fastmaml.maml_inner_update(model, support_x, support_y, loss_fn, inner_lr)
    loss = fastmaml.maml_outer_update(model, fast, query_x, query_y, loss_fn)
    assert next(model.parameters()).grad is not None

`fast` is a copy of `model` (same class, same modules, own buffers) whose parameters are replaced
by the adapted tensors phi = theta - inner_lr * grad L_support(theta): plain (non-leaf) tensors,
still listed by `fast.parameters()` and connected to `model`'s parameters, so the query loss
differentiates back to them (second order unless first_order=True). The support pass runs on the
copy, so `model`'s BatchNorm running statistics are untouched; `maml_inner_update(fast, ...)`
chains (a further step from phi, still differentiable back to `model`).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from fastmaml import checks, functional as F
from fastmaml.functional import LossFn


def maml_inner_update(model: nn.Module, support_x: Tensor, support_y: Tensor, loss_fn: LossFn, inner_lr: float,
                      *, steps: int = 1, first_order: bool = False) -> nn.Module:
    """A new model instance whose weights are `steps` SGD steps from `model`'s on the support set.

    The steps go through the fused update; the new model is differentiable w.r.t. `model`'s
    parameters (its BatchNorm statistics are its own copy).

    Args:
        model: the model to adapt (not changed).
        support_x: the task's support inputs, [N, ...].
        support_y: the support targets.
        loss_fn: loss_fn(output, y) -> scalar.
        inner_lr: the inner learning rate, a finite number.
        steps: the number of inner steps.
        first_order: if True, no graph through the inner gradients.

    Returns:
        The adapted copy of `model`.

    Raises:
        TypeError: if `model` is not an nn.Module or `loss_fn` is not callable.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    inner_lr = checks.check_lr(inner_lr, "inner_lr")
    params = F.params_of(model)
    if not params:
        raise ValueError("model has no parameters to adapt")
    checks.check_floating(params)
    # Share (not copy) the parameters while copying the modules and buffers; adapt on the copy, so
    # the support pass updates its BatchNorm statistics, not model's; then swap in phi.
    fast = copy.deepcopy(model, {id(p): p for p in params.values()})
    with torch.enable_grad():
        phi = F.adapt(fast, params, support_x, support_y, loss_fn, lr=inner_lr, steps=steps,
                      first_order=first_order)
    for name, tensor in phi.items():
        owner, _, leaf = name.rpartition(".")
        fast.get_submodule(owner)._parameters[leaf] = tensor  # type: ignore[assignment]  # a plain tensor, as functional_call puts it
    return fast


def maml_outer_update(original_model: nn.Module, fast_model: nn.Module, query_x: Tensor, query_y: Tensor,
                      loss_fn: LossFn) -> Tensor:
    """The meta-loss loss_fn(fast_model(query_x), query_y), its gradient added to `original_model`'s.

    The gradient w.r.t. the parameters of `original_model` is added to their `.grad` (accumulating
    like backward).

    Args:
        original_model: the model `fast_model` was adapted from by `maml_inner_update`.
        fast_model: the adapted model.
        query_x: the task's query inputs.
        query_y: the query targets.
        loss_fn: loss_fn(output, y) -> scalar.

    Returns:
        The loss (detached).

    Raises:
        ValueError: if `fast_model` is not connected to `original_model`'s graph.
    """
    for arg, m in (("original_model", original_model), ("fast_model", fast_model)):
        if not isinstance(m, nn.Module):
            raise TypeError(f"{arg} must be an nn.Module, got {type(m).__name__}")
    checks.check_task(query_x, query_y, "query")
    wrt = [p for p in original_model.parameters() if p.requires_grad]
    if not wrt:
        raise ValueError("original_model has no parameter that requires grad")
    with torch.enable_grad():
        loss = loss_fn(fast_model(query_x), query_y)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(f"loss_fn must return a scalar tensor, got {loss!r}")
        if not loss.requires_grad:
            raise ValueError("fast_model is not connected to original_model's graph "
                             "(make it with maml_inner_update(original_model, ...))")
        grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    if all(g is None for g in grads):
        raise ValueError("the meta-loss does not depend on original_model's parameters; "
                         "was fast_model made from a different model?")
    for p, g in zip(wrt, grads):
        if g is not None:
            p.grad = g if p.grad is None else p.grad + g
    return loss.detach()
