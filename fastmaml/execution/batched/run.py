"""The "batched" mode: the T tasks of a meta-batch in one pass of task-batched layers.

The parameters become theta.expand(T, ...) (no copy), the layers of execution/batched/layers.py run
all tasks at once, and the inner gradients of all tasks come from ONE torch.autograd.grad of the
summed per-task support losses (the tasks share no parameter, so d sum_t L_t / d phi_t = d L_t /
d phi_t). The inner loop is the one of execution/inner.py with the learner's `inner_rates` and
`is_first_order`; the hooks this mode replaces (execution/hooks.py) must keep their defaults. For a
plain Linear/ReLU chain under the MSE the support step and query loss are the chain ops
(execution/chain.py). Same value and meta-gradient as the task loop; buffers by NOTE: [buffer rule].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
from torch import Tensor

from fastmaml.execution import buffers as B, chain, hooks
from fastmaml.execution.batched.layers import forward
from fastmaml.execution.batched.losses import is_mse, per_task_loss
from fastmaml.execution.batched.plan import Plan, plan_of, supports, why_not
from fastmaml.execution.inner import GradsFn, unroll
from fastmaml.execution.learner import Learner
from fastmaml.functional import LossFn, Params


def why_not_learner(learner: Learner) -> str | None:
    """Why `learner` cannot run batched (None when it can)."""
    return hooks.why_not(learner, "batched") or why_not(learner.module)


def batched_grads(loss_of: Callable[[Params, Params | None], Tensor], params: Params, names: list[str],
                  first_order: bool, buffers: Params | None = None) -> tuple[Tensor, Params]:
    """The [T] support losses `loss_of(params, buffers)` and their per-task gradients w.r.t.
    params[names] (each [T, ...]) by ONE torch.autograd.grad of their sum. The graph through the
    gradients is kept (second order) unless first_order."""
    losses = loss_of(params, buffers)
    wrt = [params[n] for n in names]
    grads = torch.autograd.grad(losses.sum(), wrt, create_graph=not first_order, allow_unused=True)
    return losses, {n: torch.zeros_like(w) if g is None else g for n, w, g in zip(names, wrt, grads)}


def task_losses(learner: Learner, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
                loss_fn: LossFn, first_order: bool | None = None) -> Tensor:
    """The [T] query losses after the inner loop, all T tasks at once."""
    why = why_not_learner(learner)
    if why is not None:
        raise ValueError(f"batching='batched': {type(learner).__name__} is not supported by the task-batched layers: {why}")
    module = learner.module
    T = support_x.shape[0]
    params = {n: p.expand(T, *p.shape) for n, p in learner.params().items()}
    buffers = B.task_copies(module, T)
    plan = cast(Plan, plan_of(module))  # why_not_learner said it is one
    explicit = chain.explicit(plan.chain, support_x, support_y, query_x, query_y) if is_mse(loss_fn) else None
    loss = per_task_loss(loss_fn)

    def support_loss(p: Params, b: Params | None, step: int) -> Tensor:
        return loss(forward(module, p, support_x, b), support_y)

    with torch.enable_grad():
        grads_fn: GradsFn = batched_grads if explicit is None else explicit.grads_fn
        trajectory = unroll(learner, params, support_loss, learner.inner_steps, first_order, grads_fn, buffers)
        if explicit is None:
            losses = loss(forward(module, trajectory[-1], query_x, buffers), query_y)
        else:
            losses = explicit.query_losses(trajectory[-1])
    B.merge(module, buffers)
    return losses


__all__ = ["batched_grads", "supports", "task_losses", "why_not", "why_not_learner"]
