"""How a meta-step runs: the execution layer under the algorithms.

    losses = execution.meta_losses(learner, support_x, support_y, query_x, query_y, loss_fn)   # [T]

Modes (`batching`): "loop" (task by task, execution/mapped.py), "vmap" (torch.func.vmap over the
tasks, same file), "batched" (task-batched layers, execution/batched/, with the Linear/ReLU chain
ops of execution/chain.py), "compiled" (the whole meta-step as one torch.compile graph,
execution/compiled.py; `fastmaml.compile(learner)` sets it), and for second_order="hvp" the hand meta-gradient by batched HVPs
(execution/hvp_mode.py); "auto" chooses (execution/auto.py). All run the one inner loop
(execution/inner.py) with the learner's hooks (execution/hooks.py says which mode replaces which),
and leave buffers by one rule (NOTE: [buffer rule] in execution/buffers.py). This layer never imports
the algorithms: it reads a learner's settings, hooks and `overridden_hooks`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastmaml.execution import auto, compiled, hooks, mapped
from fastmaml.execution.auto import MODES
from fastmaml.execution.batched import run as batched
from fastmaml.execution.hvp_mode import SECOND_ORDER, check_second_order, hvp_meta_losses
from fastmaml.execution.learner import Learner
from fastmaml.execution.state import ExecutionState
from fastmaml.execution.taskmap import TaskMap
from fastmaml.functional import LossFn, Params


def meta_losses(learner: Learner, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
                loss_fn: LossFn) -> Tensor:
    """The [T] query losses after adaptation, differentiable w.r.t. the learner's parameters (under
    no_grad: the inner loop still takes gradients, the result is detached).

    Args:
        learner: a MetaLearner (its settings and hooks).
        support_x: [T, N, ...] support inputs.
        support_y: [T, N, ...] support targets.
        query_x: [T, M, ...] query inputs.
        query_y: [T, M, ...] query targets.
        loss_fn: loss_fn(output, y) -> scalar.
    """
    if learner.second_order == "hvp" and torch.is_grad_enabled():
        return hvp_meta_losses(learner, support_x, support_y, query_x, query_y, loss_fn)
    mode = auto.choose(learner, support_x, support_y, query_x, query_y, loss_fn)
    learner.execution_state.used = mode
    outer_grad = torch.is_grad_enabled()
    first_order = None if outer_grad else True  # evaluation: no graph through the inner gradients
    with torch.enable_grad():
        if mode == "batched":
            losses = batched.task_losses(learner, support_x, support_y, query_x, query_y, loss_fn, first_order)
        elif mode == "compiled":
            losses = compiled.compiled_task_losses(learner, support_x, support_y, query_x, query_y, loss_fn,
                                                   first_order, learner.execution_state.compile_backend)
        else:
            mapper = TaskMap(learner.module, mode == "vmap")
            losses = mapped.task_losses(learner, mapper, support_x, support_y, query_x, query_y, loss_fn, first_order)
    return losses if outer_grad else losses.detach()


def adapted(learner: Learner, support_x: Tensor, support_y: Tensor, loss_fn: LossFn) -> tuple[Params, Tensor]:
    """Every task's adapted parameters ([T, ...] per adapted name, no graph) and post-adaptation
    support losses ([T]), first order ("loop" or "vmap"; Reptile's meta-step).

    Args:
        learner: a MetaLearner (its settings and hooks).
        support_x: [T, N, ...] support inputs.
        support_y: [T, N, ...] support targets.
        loss_fn: loss_fn(output, y) -> scalar.
    """
    mode = auto.choose(learner, support_x, support_y, support_x, support_y, loss_fn, batched_ok=False)
    if mode in ("batched", "compiled"):
        mode = "vmap"
    learner.execution_state.used = mode
    with torch.enable_grad():
        return mapped.adapted(learner, TaskMap(learner.module, mode == "vmap"), support_x, support_y, loss_fn)


def explain(learner: Learner) -> dict[str, str | None]:
    """Each mode with the reason the learner cannot take it (None: it can).

    Args:
        learner: a MetaLearner.
    """
    return {"loop": None, "vmap": None, "batched": batched.why_not_learner(learner),
            "compiled": compiled.supported(learner), "hvp": hooks.why_not(learner, "hvp")}


__all__ = ["MODES", "SECOND_ORDER", "ExecutionState", "adapted", "check_second_order", "explain", "meta_losses"]
