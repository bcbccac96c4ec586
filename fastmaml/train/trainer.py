"""MetaTrainer: the outer loop around any MetaLearner.

    trainer = MetaTrainer(learner, train_tasks, F.cross_entropy, metric="accuracy", meta_batch=32,
                          iterations=60000, eval_tasks=test_tasks, eval_every=1000, run_dir="runs/x")
    trainer.fit()                  # or trainer.fit(resume=True) to continue runs/x/checkpoint.pt

One iteration draws `meta_batch` tasks from `train_tasks` (anything with `.sample(n)` returning an
object with `.tensors()` -> support_x, support_y, query_x, query_y, e.g. SineTasks or
FewShotSampler), computes the meta-gradient and steps the meta-optimizer. The meta-gradient is
`learner.meta_backward(...)` (`meta_loss(...).backward()` in one call), or, for algorithms with their own outer update (Reptile),
`learner.meta_grad(support_x, support_y, loss_fn)`, which fills `.grad` itself. A learner with a
training schedule gets `learner.set_iteration(iteration // epoch_length)` before each step (MAML++).

NOTE: [bit-identical resume] Everything an iteration draws from is saved in the checkpoint: the
parameters, the optimizer state, the global RNGs (torch, numpy, python) and each sampler's
generator. Evaluation runs on its own fixed tasks (the eval sampler is rewound to the same state
before every evaluation) and restores the global RNGs and the model's buffers afterwards, so it
never perturbs training. With `batching="auto"` the mode chosen by timing is saved and pinned on
resume, since vmap and the task loop agree only to rounding.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, NoReturn, cast

import torch

from fastmaml import distributed
from fastmaml.algorithms.base import MetaLearner
from fastmaml.functional import LossFn
from fastmaml.tasks.sampler import TaskSource
from fastmaml.train.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_sampler_state,
    rng_state,
    sampler_state,
    save_checkpoint,
    set_rng_state,
)
from fastmaml.train.evaluate import METRICS, evaluate
from fastmaml.train.metrics import MetricsLogger, atomic_write_text

if TYPE_CHECKING:
    from tqdm import tqdm as ProgressBar


class TrainingDiverged(RuntimeError):
    """The meta-loss (or its gradient) became NaN or inf; the message names the iteration."""


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _raise_interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """While training, SIGTERM (`kill`, a scheduler's preemption) stops the run like Ctrl-C: as a
    KeyboardInterrupt, after a checkpoint is saved. A handler someone else installed is left alone."""
    if not _in_main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def _deferred_sigint() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends (the optimizer step must not be cut in half)."""
    interrupting = [sig for sig in STOP_SIGNALS
                    if signal.getsignal(sig) in (signal.default_int_handler, _raise_interrupt)]
    if not _in_main_thread() or not interrupting:
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda sig, frame: caught.append(sig)) for sig in interrupting}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            raise KeyboardInterrupt


class MetaTrainer:
    """Meta-trains a learner: meta-batches, the outer optimizer, periodic evaluation, logs, checkpoints.

    See the module docstring for the loop and the files of a run.

    Args:
        learner: the meta-learner (a MetaLearner).
        train_tasks: the training task source (a sampler with `sample(T)`).
        loss_fn: loss_fn(output, y) -> scalar.
        metric: "accuracy" or "mse", the evaluation's score.
        optimizer: a torch optimizer over learner.parameters() (default Adam(lr=meta_lr)).
        meta_lr: the default optimizer's learning rate.
        meta_batch: tasks per meta-step.
        iterations: meta-steps in all.
        eval_tasks: the task source of the periodic evaluation (None: no evaluation).
        eval_every: iterations between evaluations (also at the end).
        eval_num_tasks: the fixed tasks each evaluation scores.
        eval_steps: the inner steps at evaluation (default: the learner's).
        eval_batch: tasks adapted at once in evaluation.
        run_dir: where checkpoint.pt, metrics.jsonl, train.csv, eval.csv and config.json go (None: nowhere).
        checkpoint_every: iterations between checkpoints (default eval_every; always at the end).
        log_every: iterations averaged into one "train" record.
        config: saved with each checkpoint.
        progress: show a tqdm bar.
        tensorboard: also log to run_dir/tensorboard (the tensorboard extra).
        grad_clip: clip the meta-gradient's global norm to this.
        device: where the tasks are moved.
        epoch_length: iterations per "epoch" for learners with a schedule (`set_iteration(epoch)`:
            MAML++ anneals its multi-step loss and derivative order over epochs of 500 iterations).
        dist: a fastmaml.distributed.DistContext (default: distributed.current()): each rank
            meta-trains on its slice of every meta-batch, the meta-gradients are all-reduced, rank 0
            alone logs, evaluates and writes checkpoints.
    """

    def __init__(self, learner: MetaLearner, train_tasks: TaskSource, loss_fn: LossFn, *, metric: str = "accuracy",
                 optimizer: torch.optim.Optimizer | None = None, meta_lr: float = 1e-3, meta_batch: int = 32,
                 iterations: int = 1000, eval_tasks: TaskSource | None = None, eval_every: int = 500, eval_num_tasks: int = 600,
                 eval_steps: int | None = None, eval_batch: int = 50, run_dir: str | os.PathLike | None = None,
                 checkpoint_every: int | None = None, log_every: int = 10, config: dict | None = None,
                 progress: bool = True, tensorboard: bool = False, grad_clip: float | None = None,
                 device: str | torch.device | None = None, epoch_length: int = 500,
                 dist: distributed.DistContext | None = None) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        for name, value, low in (("meta_batch", meta_batch, 1), ("iterations", iterations, 0),
                                 ("eval_every", eval_every, 1), ("eval_num_tasks", eval_num_tasks, 1),
                                 ("log_every", log_every, 1), ("eval_batch", eval_batch, 1),
                                 ("epoch_length", epoch_length, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if grad_clip is not None and (isinstance(grad_clip, bool) or not isinstance(grad_clip, (int, float))
                                      or not math.isfinite(grad_clip) or grad_clip <= 0):
            # clip_grads_with_norm_ scales by grad_clip / norm: 0 zeroes every gradient, < 0 flips it (ascent)
            raise ValueError(f"grad_clip must be a finite number > 0 (or None: no clipping), got {grad_clip!r}")
        if checkpoint_every is not None and (isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int)
                                             or checkpoint_every < 1):
            raise ValueError(f"checkpoint_every must be an int >= 1 (or None: eval_every), got {checkpoint_every!r}")
        self.learner, self.train_tasks, self.loss_fn, self.metric = learner, train_tasks, loss_fn, metric
        self.optimizer = optimizer or torch.optim.Adam(learner.parameters(), lr=meta_lr)
        self.meta_batch, self.iterations = meta_batch, iterations
        self.eval_tasks, self.eval_every, self.eval_num_tasks = eval_tasks, eval_every, eval_num_tasks
        self.eval_steps, self.eval_batch = eval_steps, eval_batch
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.checkpoint_every = checkpoint_every or eval_every
        self.log_every, self.config = log_every, dict(config or {})
        self.progress, self.tensorboard, self.grad_clip = progress, tensorboard, grad_clip
        self.device = torch.device(device) if device is not None else next(learner.parameters()).device
        self.dist = dist if dist is not None else distributed.current()
        self.epoch_length = epoch_length
        self.iteration = 0
        self.last_eval: dict | None = None
        self.last_checkpoint: tuple[Path, int] | None = None
        self._eval_start = sampler_state(eval_tasks)
        self.logger: MetricsLogger | None = None

    # ---- state ---------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / "checkpoint.pt"

    def state_dict(self) -> dict:
        return {
            "iteration": self.iteration,
            "learner": self.learner.state_dict(),
            "learner_class": type(self.learner).__name__,
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(),
            "samplers": {"train": sampler_state(self.train_tasks), "eval": self._eval_start},
            "batching": getattr(self.learner, "batching_used", None),
            "config": json.dumps(self.config),
            "last_eval": json.dumps(self.last_eval),
        }

    def load_state_dict(self, state: dict) -> None:
        self.learner.load_state_dict(state["learner"])
        self.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        load_sampler_state(self.train_tasks, state["samplers"]["train"])
        if state["samplers"].get("eval") is not None and self.eval_tasks is not None:
            self._eval_start = state["samplers"]["eval"]
        if getattr(self.learner, "batching", None) == "auto" and state.get("batching") in ("vmap", "loop"):
            self.learner.batching = state["batching"]  # NOTE: [bit-identical resume]
        self.iteration = int(state["iteration"])
        self.last_eval = json.loads(state.get("last_eval") or "null")

    def save(self, path: str | os.PathLike | None = None) -> Path:
        path = Path(path) if path is not None else self.checkpoint_path
        if path is None:
            raise ValueError("save() needs a path when the trainer has no run_dir")
        save_checkpoint(self.state_dict(), path)
        self.last_checkpoint = (path, self.iteration)
        return path

    def resume(self, path: str | os.PathLike | None = None) -> int:
        """Load a checkpoint (default run_dir/checkpoint.pt); returns its iteration."""
        path = Path(path) if path is not None else self.checkpoint_path
        if path is None:
            raise ValueError("resume() needs a path when the trainer has no run_dir")
        state = load_checkpoint(path, map_location=self.device)
        try:
            self.load_state_dict(state)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:  # a state that does not fit this run
            detail = " ".join(line.strip() for line in str(err).strip().splitlines()[:3])
            raise CheckpointError(f"{str(path)!r} does not fit this run (model, optimizer or samplers differ, "
                                  f"or it lacks an entry): {type(err).__name__}: {detail}") from err
        self.last_checkpoint = (Path(path), self.iteration)
        return self.iteration

    # ---- evaluation ----------------------------------------------------------------------------
    def evaluate(self, tasks: TaskSource | None = None, num_tasks: int | None = None,
                 steps: int | list[int] | None = None) -> dict:
        """Evaluate on `tasks` (default: the eval sampler rewound to its fixed start), leaving the
        global RNGs as they were."""
        if tasks is None:
            if self.eval_tasks is None:
                raise ValueError("no eval_tasks to evaluate on")
            load_sampler_state(self.eval_tasks, self._eval_start)
            tasks = self.eval_tasks
        saved = rng_state()
        try:
            return evaluate(self.learner, tasks, self.loss_fn, self.metric, num_tasks or self.eval_num_tasks,
                            self.eval_steps if steps is None else steps, self.eval_batch)
        finally:
            set_rng_state(saved)

    # ---- training ------------------------------------------------------------------------------
    def _meta_step(self) -> float:
        set_iteration = getattr(self.learner, "set_iteration", None)
        if callable(set_iteration):  # a schedule over training (MAML++)
            set_iteration(self.iteration // self.epoch_length)
        batch = self.dist.shard(self.train_tasks.sample(self.meta_batch))  # NOTE: [distributed sharding]
        sx, sy, qx, qy = (t.to(self.device) for t in batch.tensors())
        self.optimizer.zero_grad(set_to_none=True)
        meta_grad = getattr(self.learner, "meta_grad", None)
        if callable(meta_grad):  # an algorithm with its own outer update (Reptile)
            loss = meta_grad(sx, sy, self.loss_fn)
            value = float(loss.detach())
            self._check_finite(value, "meta-loss")
        else:  # meta_loss(...).backward(), the compiled mode's gradient handed over directly
            loss = self.learner.meta_backward(sx, sy, qx, qy, self.loss_fn)
            value = float(loss)
            self._check_finite(value, "meta-loss")
        value = self.dist.all_reduce_grads(self.learner.parameters(), batch.weight, loss=value,
                                           buffers=self.learner.buffers())
        grads = [p.grad for p in self.learner.parameters() if p.grad is not None]
        if grads:
            norm = torch.nn.utils.get_total_norm(grads) if hasattr(torch.nn.utils, "get_total_norm") \
                else torch.norm(torch.stack([g.norm() for g in grads]))
            self._check_finite(float(norm), "meta-gradient norm")
            if self.grad_clip is not None:
                torch.nn.utils.clip_grads_with_norm_(list(self.learner.parameters()), self.grad_clip, norm)
        return value

    def _check_finite(self, value: float, what: str) -> None:
        if math.isfinite(value):
            return
        where = (f"the last good checkpoint is {self.last_checkpoint[0]} (iteration {self.last_checkpoint[1]})"
                 if self.last_checkpoint else "no checkpoint was written")
        if self.logger is not None:
            self.logger.log({"kind": "diverged", "iteration": self.iteration + 1, "what": what, "value": str(value)})
        raise TrainingDiverged(f"{what} is {value} at iteration {self.iteration + 1}; training stopped "
                               f"and nothing was saved for it; {where}")

    def _eval_due(self, main: bool) -> bool:
        """Whether this iteration's evaluation is still to do (also after a resume whose checkpoint
        was saved by an interrupt during that evaluation)."""
        at = self.iteration > 0 and (self.iteration % self.eval_every == 0 or self.iteration == self.iterations)
        done = self.last_eval is not None and self.last_eval["iteration"] == self.iteration
        return self.eval_tasks is not None and main and at and not done

    def _evaluate_and_log(self, start: float, bar: ProgressBar | None) -> None:
        result = self.evaluate()
        self.last_eval = {"iteration": self.iteration, **result}
        cast(MetricsLogger, self.logger).log({"kind": "eval", "iteration": self.iteration, "split": "eval",
                         "elapsed_s": round(time.perf_counter() - start, 3), **result})
        if bar is not None:
            score = f"{result['mean']:.4f} +- {result['ci95']:.4f}" if math.isfinite(result["mean"]) else "diverged"
            bar.write(f"iteration {self.iteration}: {self.metric} {score} over {result['tasks']} tasks")

    def fit(self, resume: bool = False) -> dict:
        """Train up to `iterations` meta-steps; with resume=True continue from run_dir/checkpoint.pt
        when it exists. Returns {"iteration", "last_eval", "checkpoint", "wall_s"}."""
        if resume and self.checkpoint_path is not None and self.checkpoint_path.is_file():
            self.resume()
        self.dist.broadcast_module(self.learner)
        main = self.dist.is_main
        run_dir = self.run_dir if main else None  # only rank 0 writes
        self.logger = MetricsLogger(run_dir, self.tensorboard and main)
        if run_dir is not None:
            self.logger.truncate_after(self.iteration)
            atomic_write_text(run_dir / "config.json", json.dumps(self.config, indent=2) + "\n")
        self.learner.train()
        start = time.perf_counter()
        window, window_start, window_t = [], self.iteration, time.perf_counter()
        bar = None
        if self.progress and main:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.iterations, initial=self.iteration, desc="meta-train", unit="it",
                       dynamic_ncols=True, mininterval=1.0 if os.isatty(2) else 30.0)
        with _sigterm_interrupts():
            try:
                if self._eval_due(main):  # an evaluation cut short by an interrupt is redone on resume
                    self._evaluate_and_log(start, bar)
                while self.iteration < self.iterations:
                    snapshot = (rng_state(), sampler_state(self.train_tasks))
                    begun = self.iteration
                    try:
                        value = self._meta_step()
                        with _deferred_sigint():
                            self.optimizer.step()
                            self.iteration += 1
                    except KeyboardInterrupt:
                        if self.iteration == begun:  # cut inside the iteration: rewind to its start
                            set_rng_state(snapshot[0])
                            load_sampler_state(self.train_tasks, snapshot[1])
                        raise
                    window.append(value)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{value:.4g}", refresh=False)
                    done = self.iteration == self.iterations
                    if len(window) >= self.log_every or done:
                        now = time.perf_counter()
                        self.logger.log({"kind": "train", "iteration": self.iteration, "loss": sum(window) / len(window),
                                         "elapsed_s": round(now - start, 3),
                                         "iterations_per_s": round((self.iteration - window_start) / max(now - window_t, 1e-9), 3)})
                        window, window_start, window_t = [], self.iteration, now
                    if self._eval_due(main):
                        self._evaluate_and_log(start, bar)
                    if run_dir is not None and (self.iteration % self.checkpoint_every == 0 or done):
                        self.save()
            except KeyboardInterrupt:
                if run_dir is not None:
                    path = self.save()
                    msg = f"interrupted: checkpoint of iteration {self.iteration} saved to {path}"
                    (bar.write if bar is not None else print)(msg)
                raise
            finally:
                if bar is not None:
                    bar.close()
                self.logger.close()
        return {"iteration": self.iteration, "last_eval": self.last_eval,
                "checkpoint": str(self.checkpoint_path) if self.checkpoint_path else None,
                "wall_s": time.perf_counter() - start}
