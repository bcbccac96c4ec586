"""Evaluation on held-out tasks: adapt a batch of tasks at once and score their query sets.

Each chunk of `batch` tasks is adapted at once (first order, no graph, per-task buffers) by the
execution layer (fastmaml/execution/evaluation.py): the task-batched layers where they cover the
learner (one autograd.grad for all tasks), one torch.func.vmap pass (batch norm decomposed,
NOTE: [vmap batch norm]), or task by task. "auto" times each way that runs on a few tasks of the
first chunk and keeps the fastest, remembered per batch shape in the learner's execution state (on 2 CPU cores the task loop can win for Conv-4, see
bench/bench_evaluate.py). The scores are the same whichever way runs.
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from fastmaml.algorithms.base import MetaLearner
from fastmaml.execution.batched.run import why_not_learner
from fastmaml.execution.evaluation import MODES, query_outputs
from fastmaml.execution.timing import device_seconds
from fastmaml.functional import LossFn
from fastmaml.tasks.sampler import TaskSource
from fastmaml.train.metrics import mean_ci95

METRICS = ("accuracy", "mse")


def query_metric(metric: str, output: Tensor, target: Tensor) -> float:
    if metric == "accuracy":
        return float((output.argmax(-1) == target).float().mean())
    return float(torch.nn.functional.mse_loss(output, target))


def outputs_by(mode: str, learner: MetaLearner, sx: Tensor, sy: Tensor, qx: Tensor, loss_fn: LossFn,
               step_list: list[int]) -> list[Tensor]:
    return query_outputs(learner, mode, sx, sy, qx, loss_fn, step_list)


def fastest_mode(learner: MetaLearner, sx: Tensor, sy: Tensor, qx: Tensor, loss_fn: LossFn, step_list: list[int],
                 tasks: int = 8) -> str:
    """The fastest of MODES on the first `tasks` tasks (process CPU time; on CUDA wall time with the
    device waited for); a mode that raises (a model vmap cannot run, one the batched layers do not
    cover) is skipped; the loop always runs."""
    sample = (sx[:tasks], sy[:tasks], qx[:tasks])
    times: dict[str, float] = {}
    for mode in MODES:
        if mode == "batched" and why_not_learner(learner) is not None:
            continue
        try:
            times[mode] = device_seconds(lambda: outputs_by(mode, learner, *sample, loss_fn, step_list), sx.device,
                                         time.process_time)
        except Exception:  # noqa: BLE001 - this way does not run the model; the loop always does
            if mode == "loop":
                raise
            continue
    return min(times, key=lambda mode: times[mode])


def evaluate(learner: MetaLearner, tasks: TaskSource, loss_fn: LossFn, metric: str = "accuracy", num_tasks: int = 600,
             steps: int | list[int] | None = None, batch: int = 50, progress: bool = False,
             batching: str = "auto") -> dict:
    """Adapt to `num_tasks` tasks from `tasks` and score the query sets: {"metric", "mean", "ci95",
    "loss", "tasks", "inner_steps"} (95% interval over tasks). `steps` may be a list, giving also
    "curve": one {"inner_steps", "mean", "ci95", "loss"} per entry (the iterates of one inner loop).
    Adaptation is first order (no graph is kept), `batch` tasks at a time; the learner's buffers
    are restored afterwards. A task whose query loss or output is NaN/inf has diverged: it scores
    NaN, so the mean is NaN (shown as "diverged"), never a chance-level accuracy. `progress`: a tqdm
    bar over tasks. `batching`: "batched", "vmap", "loop"
    (one task at a time) or "auto" (the fastest of them on the first tasks).

    Args:
        learner: the meta-learner (anything with `adapt` and `meta_loss`).
        tasks: the task source (a sampler with `sample(T)`).
        loss_fn: loss_fn(output, y) -> scalar.
        metric: "accuracy" or "mse".
        num_tasks: how many tasks to score.
        steps: the inner steps at test time, an int or a list of them (None: the learner's).
        batch: tasks adapted at once.
        progress: show a progress bar.
        batching: the execution mode for the adaptation.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    for name, value in (("num_tasks", num_tasks), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    default = learner.inner_steps
    step_list = [default] if steps is None else ([steps] if isinstance(steps, int) else sorted(set(steps)))
    if not step_list or min(step_list) < 0:
        raise ValueError(f"steps must be >= 0, got {steps!r}")
    scores: dict[int, list[float]] = {s: [] for s in step_list}
    losses: dict[int, list[float]] = {s: [] for s in step_list}
    saved = {n: b.clone() for n, b in learner.named_buffers()}
    device = next(learner.parameters()).device
    if batching not in ("auto", *MODES):
        raise ValueError(f"batching must be one of {('auto', *MODES)}, got {batching!r}")
    if batching == "batched" and why_not_learner(learner) is not None:
        raise ValueError(f"batching='batched': {type(learner).__name__} is not supported by the task-batched "
                         f"layers: {why_not_learner(learner)}")
    mode = None if batching == "auto" else batching
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_tasks, desc="evaluate", unit="task", dynamic_ncols=True,
                   disable=None)  # None: off when stderr is not a terminal (logs, pipes)
    try:
        done = 0
        while done < num_tasks:
            n = min(batch, num_tasks - done)
            sx, sy, qx, qy = (t.to(device) for t in tasks.sample(n).tensors())
            if mode is None:  # "auto": timed once per batch signature, then remembered by the learner
                key = ("evaluate", tuple((tuple(t.shape), t.dtype, t.device) for t in (sx, sy, qx)), tuple(step_list))
                choices = learner.execution_state.auto_choice
                mode = choices[key] = choices.get(key) or fastest_mode(learner, sx, sy, qx, loss_fn, step_list)
            outs = outputs_by(mode, learner, sx, sy, qx, loss_fn, step_list)
            with torch.no_grad():
                for s, out in zip(step_list, outs):
                    for t in range(n):
                        loss = float(loss_fn(out[t], qy[t]))
                        # a diverged task (NaN/inf loss) scores NaN: argmax of NaN outputs is no accuracy
                        finite = math.isfinite(loss) and bool(torch.isfinite(out[t]).all())
                        scores[s].append(query_metric(metric, out[t], qy[t]) if finite else math.nan)
                        losses[s].append(loss)
            done += n
            if bar is not None:
                bar.update(n)
    finally:
        if bar is not None:
            bar.close()
        with torch.no_grad():
            for name, b in learner.named_buffers():
                b.copy_(saved[name])
    curve = []
    for s in step_list:
        mean, ci = mean_ci95(scores[s])
        curve.append({"inner_steps": s, "mean": mean, "ci95": ci, "loss": math.fsum(losses[s]) / len(losses[s])})
    main = next((c for c in curve if c["inner_steps"] == (steps if isinstance(steps, int) else default)), curve[-1])
    result = {"metric": metric, "mean": main["mean"], "ci95": main["ci95"], "loss": main["loss"],
              "tasks": num_tasks, "inner_steps": main["inner_steps"]}
    if isinstance(steps, (list, tuple)):
        result["curve"] = curve
    return result
