"""batching="auto": the mode a meta-step runs in, when the user leaves the choice to fastmaml.

The task-batched layers when they cover the learner (its model and hooks: execution/batched/run.py);
otherwise one meta-step (loss and gradient) timed each way, "vmap" and "loop", on a few tasks (on a
CUDA device with the device waited for: execution/timing.py), the faster kept per batch signature, and "loop" when the model does not run under vmap. The timing
restores buffers and the RNG, and every mode leaves the same state (NOTE: [buffer rule]), so the
choice changes speed only.

NOTE: [auto compiled] "compiled" costs a compilation per batch signature (seconds for a small MLP,
minutes for Conv-4 on a loaded 2-core CPU), so auto weighs it only for a learner that opted in with
a horizon, `fastmaml.compile(learner, expected_steps=N)`: the N meta-steps (with gradient) expected
per batch signature. Per signature, on the first such meta-step:

  1. the eager choice above is timed on the whole batch (`eager_s` a meta-step);
  2. unless this learner already compiled the step for the signature, the compilation is paid only
     when the horizon could pay it back: N * eager_s * MAX_GAIN > the estimated compile seconds
     (the most this learner's compilations took so far, COMPILE_S before the first), MAX_GAIN being
     a little above the largest saving the compiled step showed over the eager one
     (bench/results/peers_compiled.json: 30%, sine MLP at 1,000 tasks; 17% on Conv-4);
  3. if compiled, its step is timed (`compiled_s`) and "compiled" is kept when it is the faster: the
     compilation is spent by then, and the record says after how many steps it pays back. A model
     that does not compile (a graph break) keeps the eager mode, with the error as the reason.

The decision and its reasons are recorded per signature in `learner.execution_state.compile_choice`
(`fastmaml.execution.explain(learner)["auto"]` says the last). Meta-steps without gradient
(evaluation) and learners without a horizon never compile under "auto".
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from fastmaml.execution import compiled, mapped
from fastmaml.execution.batched.run import why_not_learner
from fastmaml.execution.learner import Learner
from fastmaml.execution.state import CompileChoice
from fastmaml.execution.taskmap import TaskMap
from fastmaml.execution.timing import device_seconds
from fastmaml.functional import LossFn

MODES = ("auto", "batched", "vmap", "loop", "compiled")
COMPILE_S = 60.0  # seconds a compilation is expected to take before one was measured (docs/compile.md)
MAX_GAIN = 0.35   # the largest fraction of an eager meta-step the compiled one is expected to save

Batch = tuple[Tensor, Tensor, Tensor, Tensor]
# (mode, learner, sx, sy, qx, qy, loss_fn, first_order) -> [T] losses: the execution layer's modes
RunMode = Callable[[str, Learner, Tensor, Tensor, Tensor, Tensor, LossFn, "bool | None"], Tensor]


def choose(learner: Learner, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor, loss_fn: LossFn,
           batched_ok: bool = True, run: RunMode | None = None) -> str:
    """The mode for this batch: the learner's `batching` unless "auto".

    Args:
        learner: a MetaLearner.
        sx: [T, N, ...] support inputs.
        sy: [T, N, ...] support targets.
        qx: [T, M, ...] query inputs.
        qy: [T, M, ...] query targets.
        loss_fn: loss_fn(output, y) -> scalar.
        batched_ok: whether the caller can run "batched" and "compiled" (False: Reptile's adaptation).
        run: runs a mode's losses; given, "compiled" is weighed for a learner with a horizon.
    """
    if learner.batching != "auto":
        return learner.batching
    state = learner.execution_state
    horizon = state.compile_horizon if run is not None and batched_ok and torch.is_grad_enabled() else None
    if horizon is None and batched_ok and why_not_learner(learner) is None:
        return "batched"
    key = tuple((tuple(t.shape), t.dtype, t.device) for t in (sx, sy, qx, qy)) + (learner.training,)
    if horizon is not None:
        choice = state.compile_choice.get(key)
        if choice is None:
            assert run is not None
            eager = "batched" if why_not_learner(learner) is None else _eager(learner, key, sx, sy, qx, qy, loss_fn)
            choice = state.compile_choice[key] = weigh_compiled(learner, (sx, sy, qx, qy), loss_fn, eager, horizon, run)
        state.last_compile_choice = choice
        return choice.mode
    return _eager(learner, key, sx, sy, qx, qy, loss_fn)


def _eager(learner: Learner, key: tuple, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor, loss_fn: LossFn) -> str:
    choices = learner.execution_state.auto_choice
    if key not in choices:
        choices[key] = _measure(learner, sx, sy, qx, qy, loss_fn)
    return choices[key]


@contextlib.contextmanager
def _restored(learner: Learner) -> Iterator[None]:
    """The module's buffers and the RNG as they were, after the timed steps."""
    module = learner.module
    saved = {n: b.clone() for n, b in module.named_buffers()}
    rng = torch.random.get_rng_state()
    try:
        yield
    finally:
        with torch.no_grad():
            for n, b in module.named_buffers():
                b.copy_(saved[n])
        torch.random.set_rng_state(rng)


def _measure(learner: Learner, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor, loss_fn: LossFn) -> str:
    tasks = slice(0, min(4, sx.shape[0]))
    sample = (sx[tasks], sy[tasks], qx[tasks], qy[tasks], loss_fn)
    module = learner.module
    wrt = [p for p in learner.parameters() if p.requires_grad]

    def step(vmapped: bool) -> None:
        loss = mapped.task_losses(learner, TaskMap(module, vmapped), *sample).sum()
        torch.autograd.grad(loss, wrt, allow_unused=True)

    def timed(vmapped: bool) -> float:
        return device_seconds(lambda: step(vmapped), sx.device)

    with _restored(learner):
        try:
            step(True)
        except Exception:  # noqa: BLE001 - the model does not support vmap (data-dependent control flow)
            return "loop"
        step(False)
        vmap_time = min(timed(True) for _ in range(2))
        loop_time = min(timed(False) for _ in range(2))
        return "vmap" if vmap_time <= loop_time else "loop"


def step_seconds(learner: Learner, mode: str, batch: Batch, loss_fn: LossFn, run: RunMode,
                 repeats: int = 2) -> float:
    """Wall seconds of one meta-step (losses and their gradient) in `mode`, the least of `repeats`
    (the tests replace it to inject timings).

    Args:
        learner: a MetaLearner.
        mode: the mode to time.
        batch: (sx, sy, qx, qy).
        loss_fn: loss_fn(output, y) -> scalar.
        run: runs a mode's losses.
        repeats: how many steps to time.
    """
    return min(_timed_step(learner, mode, batch, loss_fn, run) for _ in range(repeats))


def _timed_step(learner: Learner, mode: str, batch: Batch, loss_fn: LossFn, run: RunMode) -> float:
    wrt = [p for p in learner.parameters() if p.requires_grad]

    def step() -> None:
        loss = run(mode, learner, *batch, loss_fn, None).sum()
        if wrt and loss.requires_grad:
            torch.autograd.grad(loss, wrt, allow_unused=True)

    return device_seconds(step, batch[0].device)


def weigh_compiled(learner: Learner, batch: Batch, loss_fn: LossFn, eager: str, horizon: int,
                   run: RunMode) -> CompileChoice:
    """"compiled" or `eager` for this batch signature, with the reasons (NOTE: [auto compiled]).

    Args:
        learner: a MetaLearner with a horizon.
        batch: (sx, sy, qx, qy).
        loss_fn: loss_fn(output, y) -> scalar.
        eager: the mode auto chose among the eager ones.
        horizon: the meta-steps expected per batch signature.
        run: runs a mode's losses.
    """
    why = compiled.supported(learner)
    if why is not None:
        return CompileChoice(eager, eager, horizon, reason=f"{eager!r}: the compiled step does not cover it ({why})")
    state = learner.execution_state
    ready = compiled.is_compiled(learner, batch, loss_fn)
    with _restored(learner):
        run(eager, learner, *batch, loss_fn, None)  # warm-up
        eager_s = step_seconds(learner, eager, batch, loss_fn, run)
        estimate = max(state.compile_seconds, default=COMPILE_S)
        if not ready and horizon * eager_s * MAX_GAIN <= estimate:
            return CompileChoice(eager, eager, horizon, eager_s, reason=(
                f"{eager!r}: not compiled, {horizon} meta-steps of {1e3 * eager_s:.3g} ms could save at most "
                f"{horizon * eager_s * MAX_GAIN:.3g} s ({MAX_GAIN:.0%}), less than a compilation's {estimate:.3g} s"))
        try:
            first = None if ready else _timed_step(learner, "compiled", batch, loss_fn, run)  # compiles
        except Exception as error:  # noqa: BLE001 - e.g. the model does not trace as one graph (a graph break)
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            return CompileChoice(eager, eager, horizon, eager_s, reason=(
                f"{eager!r}: compiling the meta-step failed ({type(error).__name__}: {first_line[:200]})"))
        compiled_s = step_seconds(learner, "compiled", batch, loss_fn, run)
    compile_s = 0.0 if first is None else max(first - compiled_s, 0.0)
    if first is not None:
        state.compile_seconds.append(compile_s)
    paid = f"{compile_s:.3g} s to compile" if not ready else "already compiled"
    if compiled_s < eager_s:
        back = compile_s / (eager_s - compiled_s)
        return CompileChoice("compiled", eager, horizon, eager_s, compiled_s, compile_s, reason=(
            f"'compiled': {1e3 * compiled_s:.3g} ms a meta-step against {1e3 * eager_s:.3g} ms {eager!r} ({paid}, "
            f"paid back after {back:.0f} of the {horizon} meta-steps expected)"))
    return CompileChoice(eager, eager, horizon, eager_s, compiled_s, compile_s, reason=(
        f"{eager!r}: {1e3 * eager_s:.3g} ms a meta-step against {1e3 * compiled_s:.3g} ms compiled ({paid})"))
