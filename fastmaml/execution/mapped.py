"""The per-task modes, "loop" and "vmap": the learner's own inner loop and task loss on one task,
mapped over the batch (execution/taskmap.py), each task on its own buffers (NOTE: [buffer rule])."""

from __future__ import annotations

from torch import Tensor

from fastmaml import functional as F
from fastmaml.execution import buffers as B
from fastmaml.execution.inner import GradsFn
from fastmaml.execution.learner import Learner
from fastmaml.execution.taskmap import TaskMap
from fastmaml.functional import LossFn, Params


def _grads_fn(mapper: TaskMap) -> GradsFn:
    # torch.func.grad composes with vmap; the loop takes plain autograd
    return F.func_grads if mapper.vmapped else F.autograd_grads


def task_losses(learner: Learner, mapper: TaskMap, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor, loss_fn: LossFn,
                first_order: bool | None = None) -> Tensor:
    """The [T] query losses after adaptation, differentiable w.r.t. the learner's parameters."""
    params = learner.params()
    buffers = B.task_copies(learner.module, sx.shape[0])
    grads_fn = _grads_fn(mapper)

    def one_task(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor, buffers: Params) -> Tensor:
        trajectory = learner.inner_loop(params, sx, sy, loss_fn, buffers, first_order=first_order, grads_fn=grads_fn)
        return learner.task_loss(trajectory, qx, qy, loss_fn, buffers)

    losses = mapper(one_task, sx, sy, qx, qy, buffers)
    B.merge(learner.module, buffers)
    return losses


def adapted(learner: Learner, mapper: TaskMap, sx: Tensor, sy: Tensor, loss_fn: LossFn) -> tuple[Params, Tensor]:
    """Every task's adapted parameters (names in adapt_names, stacked [T, ...], no graph) and its
    support loss after adaptation ([T]): first order, from the learner's parameters detached."""
    theta = {n: p.detach().requires_grad_() for n, p in learner.params().items()}
    buffers = B.task_copies(learner.module, sx.shape[0])
    grads_fn = _grads_fn(mapper)

    def one_task(sx: Tensor, sy: Tensor, buffers: Params) -> tuple[Params, Tensor]:
        phi = learner.inner_loop(theta, sx, sy, loss_fn, buffers, first_order=True, grads_fn=grads_fn)[-1]
        loss = learner.support_loss(phi, sx, sy, loss_fn, buffers, learner.inner_steps)
        return {n: phi[n].detach() for n in learner.adapt_names}, loss.detach()

    phis, losses = mapper(one_task, sx, sy, buffers)
    B.merge(learner.module, buffers)
    return phis, losses
