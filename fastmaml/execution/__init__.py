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
from fastmaml.execution.state import CompileChoice, ExecutionState
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
    mode = _chosen(learner, support_x, support_y, query_x, query_y, loss_fn)
    return _losses(mode, learner, support_x, support_y, query_x, query_y, loss_fn)


def meta_backward(learner: Learner, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
                  loss_fn: LossFn, reduction: str) -> Tensor:
    """The reduced query loss (detached) after its meta-gradient is added to the parameters' `.grad`:
    `meta_losses(...).mean().backward()` (or .sum()), except that the compiled mode writes its
    meta-gradient directly (NOTE: [direct meta-gradient] in execution/compiled.py).

    Args:
        learner: a MetaLearner (its settings and hooks).
        support_x: [T, N, ...] support inputs.
        support_y: [T, N, ...] support targets.
        query_x: [T, M, ...] query inputs.
        query_y: [T, M, ...] query targets.
        loss_fn: loss_fn(output, y) -> scalar.
        reduction: "mean" or "sum" over tasks.
    """
    if learner.second_order == "hvp":
        losses = hvp_meta_losses(learner, support_x, support_y, query_x, query_y, loss_fn)
    else:
        mode = _chosen(learner, support_x, support_y, query_x, query_y, loss_fn)
        if mode == "compiled":
            state = learner.execution_state
            return compiled.compiled_meta_backward(learner, support_x, support_y, query_x, query_y, loss_fn,
                                                   reduction, state.compile_backend, state.compile_cuda_graphs)
        losses = _losses(mode, learner, support_x, support_y, query_x, query_y, loss_fn)
    loss = losses.mean() if reduction == "mean" else losses.sum()
    loss.backward()
    return loss.detach()


def _chosen(learner: Learner, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
            loss_fn: LossFn) -> str:
    """The mode for this batch (auto's choice, recorded in `execution_state.used`)."""
    mode = auto.choose(learner, support_x, support_y, query_x, query_y, loss_fn, run=_losses_in)
    learner.execution_state.used = mode
    return mode


def _losses(mode: str, learner: Learner, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
            loss_fn: LossFn) -> Tensor:
    """The [T] query losses by `mode`, differentiable when gradients are enabled, else detached."""
    outer_grad = torch.is_grad_enabled()
    first_order = None if outer_grad else True  # evaluation: no graph through the inner gradients
    with torch.enable_grad():
        losses = _losses_in(mode, learner, support_x, support_y, query_x, query_y, loss_fn, first_order)
    return losses if outer_grad else losses.detach()


def _losses_in(mode: str, learner: Learner, support_x: Tensor, support_y: Tensor, query_x: Tensor,
               query_y: Tensor, loss_fn: LossFn, first_order: bool | None) -> Tensor:
    """The [T] query losses by `mode` (one of MODES but "auto"; auto times the modes through it)."""
    if mode == "batched":
        return batched.task_losses(learner, support_x, support_y, query_x, query_y, loss_fn, first_order)
    if mode == "compiled":
        state = learner.execution_state
        return compiled.compiled_task_losses(learner, support_x, support_y, query_x, query_y, loss_fn,
                                             first_order, state.compile_backend, state.compile_cuda_graphs)
    mapper = TaskMap(learner.module, mode == "vmap")
    return mapped.task_losses(learner, mapper, support_x, support_y, query_x, query_y, loss_fn, first_order)


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
    """Each mode with the reason the learner cannot take it (None: it can), and under "auto" why
    auto did or would not choose "compiled" (NOTE: [auto compiled] in execution/auto.py).

    Args:
        learner: a MetaLearner.
    """
    state = learner.execution_state
    if state.last_compile_choice is not None:
        why_auto = state.last_compile_choice.reason
    elif state.compile_horizon is None:
        why_auto = "never 'compiled': no horizon (fastmaml.compile(learner, expected_steps=N) gives one)"
    else:
        why_auto = f"weighs 'compiled' against {state.compile_horizon} meta-steps per batch signature at its first meta-step"
    return {"loop": None, "vmap": None, "batched": batched.why_not_learner(learner),
            "compiled": compiled.supported(learner), "hvp": hooks.why_not(learner, "hvp"), "auto": why_auto}


__all__ = ["MODES", "SECOND_ORDER", "CompileChoice", "ExecutionState", "adapted", "check_second_order", "explain", "meta_backward", "meta_losses"]
