"""The one inner loop of the whole family, whatever runs it (a learner's task, T tasks batched):

    phi_0 = params;  phi_{k+1} = update(phi_k, grad L_support(phi_k))      k = 0 .. steps-1

with the learner's hooks `is_first_order`, `inner_rates` and `inner_gammas` deciding each step, and
the update always the fused op (fastmaml.functional.inner_update -> fastmaml.ops).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from fastmaml import functional as F
from fastmaml.execution.learner import Learner
from fastmaml.functional import Params

# grads_fn(loss_of, params, names, first_order, buffers) -> (loss, {name: grad}), with
# loss_of(params, buffers) the support loss: F.autograd_grads, F.func_grads, batched_grads, ...
GradsFn = Callable[..., tuple[Tensor, Params]]
# support_loss(params, buffers, step) -> the support loss of one step
StepLoss = Callable[[Params, Params | None, int], Tensor]


def unroll(learner: Learner, params: Params, support_loss: StepLoss, steps: int, first_order: bool | None,
           grads_fn: GradsFn, buffers: Params | None = None) -> list[Params]:
    """The iterates [phi_0, ..., phi_steps]; `support_loss(params, buffers, step)` is the loss of
    one step; `first_order` (None: the learner's `is_first_order(step)`) drops the graph through
    the gradients."""
    trajectory = [params]
    optimizer, state = getattr(learner, "inner_optimizer", None), None  # None: the plain update
    for step in range(steps):
        order = learner.is_first_order(step) if first_order is None else first_order

        def loss_of(p: Params, b: Params | None, step: int = step) -> Tensor:
            return support_loss(p, b, step)

        _, grads = grads_fn(loss_of, params, learner.adapt_names, order, buffers)
        gammas = learner.inner_gammas(step, params, grads)
        if optimizer is None:
            params = F.inner_update(params, grads, learner.inner_rates(step), gammas)
        elif gammas is not None:
            raise ValueError(f"{type(learner).__name__}: forget factors (inner_gammas) do not combine with "
                             f"inner_optimizer={optimizer!r}")
        else:
            params, state = optimizer.step_named(params, grads, learner.inner_rates(step), state)
        trajectory.append(params)
    return trajectory
