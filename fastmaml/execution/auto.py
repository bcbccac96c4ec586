"""batching="auto": the mode a meta-step runs in, when the user leaves the choice to fastmaml.

The task-batched layers when they cover the learner (its model and hooks: execution/batched/run.py);
otherwise one meta-step (loss and gradient) timed each way, "vmap" and "loop", on a few tasks, the
faster kept per batch signature, and "loop" when the model does not run under vmap. The timing
restores buffers and the RNG, and every mode leaves the same state (NOTE: [buffer rule]), so the
choice changes speed only.
"""

from __future__ import annotations

import time

import torch

from fastmaml.execution import mapped
from fastmaml.execution.batched.run import why_not_learner
from fastmaml.execution.taskmap import TaskMap

MODES = ("auto", "batched", "vmap", "loop", "compiled")


def choose(learner, sx, sy, qx, qy, loss_fn, batched_ok: bool = True) -> str:
    """The mode for this batch: the learner's `batching` unless "auto"."""
    if learner.batching != "auto":
        return learner.batching
    if batched_ok and why_not_learner(learner) is None:
        return "batched"
    key = tuple((tuple(t.shape), t.dtype, t.device) for t in (sx, sy, qx, qy)) + (learner.training,)
    choices = learner.execution_state.auto_choice
    if key not in choices:
        choices[key] = _measure(learner, sx, sy, qx, qy, loss_fn)
    return choices[key]


def _measure(learner, sx, sy, qx, qy, loss_fn) -> str:
    tasks = slice(0, min(4, sx.shape[0]))
    sample = (sx[tasks], sy[tasks], qx[tasks], qy[tasks], loss_fn)
    module = learner.module
    saved = {n: b.clone() for n, b in module.named_buffers()}
    rng = torch.random.get_rng_state()
    wrt = [p for p in learner.parameters() if p.requires_grad]

    def step(vmapped: bool):
        loss = mapped.task_losses(learner, TaskMap(module, vmapped), *sample).sum()
        torch.autograd.grad(loss, wrt, allow_unused=True)

    def timed(vmapped: bool):
        start = time.perf_counter()
        step(vmapped)
        return time.perf_counter() - start

    try:
        try:
            step(True)
        except Exception:  # noqa: BLE001 - the model does not support vmap (data-dependent control flow)
            return "loop"
        step(False)
        vmap_time = min(timed(True) for _ in range(2))
        loop_time = min(timed(False) for _ in range(2))
        return "vmap" if vmap_time <= loop_time else "loop"
    finally:
        with torch.no_grad():
            for n, b in module.named_buffers():
                b.copy_(saved[n])
        torch.random.set_rng_state(rng)
