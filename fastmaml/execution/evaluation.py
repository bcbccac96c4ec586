"""Adaptation for evaluation: the query outputs of a batch of tasks after each number of inner steps
in `step_list`, first order and without a graph, by the task-batched layers, vmap or the task loop.
Each task runs on its own copy of the buffers; the module's are not touched (evaluation keeps the
model as it is)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from fastmaml import functional as F
from fastmaml.execution import buffers as B
from fastmaml.execution.batched.layers import forward
from fastmaml.execution.batched.losses import per_task_loss
from fastmaml.execution.batched.run import batched_grads, why_not_learner
from fastmaml.execution.inner import unroll
from fastmaml.execution.learner import Learner
from fastmaml.execution.taskmap import TaskMap
from fastmaml.functional import LossFn, Params

MODES = ("batched", "vmap", "loop")


def query_outputs(learner: Learner, mode: str, sx: Tensor, sy: Tensor, qx: Tensor, loss_fn: LossFn,
                  step_list: list[int]) -> list[Tensor]:
    """[T, ...] query outputs per entry of `step_list`, adapting on (sx, sy) with `mode`."""
    T, last = sx.shape[0], max(step_list)
    buffers = B.task_copies(learner.module, T)
    if mode == "batched":
        why = why_not_learner(learner)
        if why is not None:
            raise ValueError(f"batching='batched': {type(learner).__name__} is not supported by the task-batched "
                             f"layers: {why}")
        module, loss = learner.module, per_task_loss(loss_fn)
        theta = {n: p.detach().expand(T, *p.shape).requires_grad_() for n, p in learner.params().items()}

        def support_loss(p: Params, b: Params | None, step: int) -> Tensor:
            return loss(forward(module, p, sx, b), sy)

        with torch.enable_grad():
            trajectory = unroll(learner, theta, support_loss, last, True, batched_grads, buffers)
        with torch.no_grad():
            return [forward(module, {n: v.detach() for n, v in trajectory[s].items()}, qx, buffers) for s in step_list]

    mapper = TaskMap(learner.module, mode == "vmap")
    grads_fn = F.func_grads  # torch.func.grad: under vmap and in the loop alike
    theta = {k: p.detach() for k, p in learner.params().items()}

    def one_task(sx: Tensor, sy: Tensor, qx: Tensor, buffers: Params) -> list[Tensor]:
        trajectory: list[Params] | Mapping[int, Params] = learner.inner_loop(theta, sx, sy, loss_fn, buffers, steps=last, first_order=True,
                                        grads_fn=grads_fn)
        if len(trajectory) != last + 1:  # not one iterate per step (iMAML: [theta, phi])
            trajectory = {s: learner.inner_loop(theta, sx, sy, loss_fn, buffers, steps=s, first_order=True,
                                                grads_fn=grads_fn)[-1] for s in step_list}
        return [learner.task_forward({k: v.detach() for k, v in trajectory[s].items()}, qx, buffers, None)
                for s in step_list]

    with torch.enable_grad():
        return mapper(one_task, sx, sy, qx, buffers)
