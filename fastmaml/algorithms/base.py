"""The one inner loop of the whole MAML family.

A MetaLearner wraps a model. Its meta-parameters are the model's parameters plus whatever an
algorithm adds (learned rates, forget nets, ...). For one task it runs

    phi_0 = theta;  phi_{k+1} = update(phi_k, grad L_support(phi_k))      k = 0 .. K-1
    L_task = L_query(phi_K)

and `meta_loss` reduces L_task over a batch of tasks, task by task ("loop"), all tasks in one
torch.func.vmap pass ("vmap"), or with the task dimension written into the layers ("batched",
fastmaml/batched.py: params [T, ...], bmm / grouped conv, one autograd.grad for all tasks).
Algorithms change the loop only through the hooks below (`inner_rates`, `inner_gammas`, `task_forward`, `support_loss`, `query_loss`, `is_first_order`,
`task_loss`); the update itself
always goes through fastmaml.ops (the fused-kernel dispatcher).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

from fastmaml import batched, functional as F
from fastmaml._batchnorm import DecomposedBatchNorm, has_batch_norm
from fastmaml.algorithms.hvp_meta_grad import check_second_order, hvp_meta_losses
from fastmaml.execution.user_compile import eager_module, outside_user_graph
from fastmaml.functional import LossFn, Params

BATCHING = ("auto", "batched", "vmap", "loop")
GradsFn = Callable[..., tuple[Tensor, Params]]


class MetaLearner(nn.Module):
    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        first_order: bool = False,
        adapt_names: Iterable[str] | None = None,
        batching: str = "auto",
        *,
        second_order: str = "autograd",
    ):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        model = eager_module(model)  # a torch.compile'd model runs its original (issue 19)
        self.module = model
        params = F.params_of(model)
        if not params:
            raise ValueError("model has no parameters to meta-learn")
        F.check_floating(params)
        self.inner_lr = F.check_lr(inner_lr)
        if isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 0:
            raise ValueError(f"inner_steps must be an int >= 0, got {inner_steps!r}")
        self.inner_steps = inner_steps
        self.first_order = bool(first_order)
        self.adapt_names = F.select_names(params, adapt_names)
        if batching not in BATCHING:
            raise ValueError(f"batching must be one of {BATCHING}, got {batching!r}")
        self.batching = batching
        self.batching_used: str | None = None
        # "autograd": differentiate through the inner steps; "hvp": the same meta-gradient by a
        # reverse recursion of batched HVPs, O(K |theta|) memory (fastmaml/algorithms/hvp_meta_grad.py).
        self.second_order = check_second_order(second_order)
        self._auto_choice: dict[tuple, str] = {}

    # ---- hooks an algorithm may override -------------------------------------------------
    def inner_rates(self, step: int):
        """The inner learning rate(s) of `step`: a number, or a dict name -> tensor."""
        return self.inner_lr

    def inner_gammas(self, step: int, params: Params, grads: Params) -> Params | None:
        """Forget factors gamma (gamma * p - lr * g) of `step`, or None for the plain update."""
        return None

    def is_first_order(self, step: int) -> bool:
        return self.first_order

    def task_forward(self, params: Params, x: Tensor, buffers: Params | None, step: int | None) -> Tensor:
        """The model's output with `params`; `step` is the inner step (None for the query)."""
        return F.functional_forward(self.module, params, x, buffers=buffers)

    def support_loss(self, params: Params, x: Tensor, y: Tensor, loss_fn: LossFn, buffers, step: int) -> Tensor:
        """The inner (support) loss of `step` at `params`."""
        return loss_fn(self.task_forward(params, x, buffers, step), y)

    def query_loss(self, params: Params, x: Tensor, y: Tensor, loss_fn: LossFn, buffers, step: int | None = None) -> Tensor:
        """The outer (query) loss at `params` (`step`: index of the iterate, None for the last)."""
        return loss_fn(self.task_forward(params, x, buffers, step), y)

    def task_loss(self, trajectory: list[Params], query_x, query_y, loss_fn: LossFn, buffers) -> Tensor:
        """The task's outer loss from the parameter iterates [phi_0, ..., phi_K]."""
        return self.query_loss(trajectory[-1], query_x, query_y, loss_fn, buffers, None)

    # ---- the inner loop ------------------------------------------------------------------
    def params(self) -> Params:
        return F.params_of(self.module)

    def inner_loop(self, params: Params, support_x, support_y, loss_fn: LossFn, buffers=None,
                   steps: int | None = None, first_order: bool | None = None,
                   grads_fn: GradsFn = F.autograd_grads) -> list[Params]:
        """Run the inner steps on one task; return the iterates [phi_0, ..., phi_K]."""
        steps = self.inner_steps if steps is None else steps
        trajectory = [params]
        for step in range(steps):
            order = self.is_first_order(step) if first_order is None else first_order

            def support_loss(p, buffers, step=step):
                return self.support_loss(p, support_x, support_y, loss_fn, buffers, step)

            _, grads = grads_fn(support_loss, params, self.adapt_names, order, buffers)
            params = F.inner_update(params, grads, self.inner_rates(step), self.inner_gammas(step, params, grads))
            trajectory.append(params)
        return trajectory

    @outside_user_graph
    def adapt(self, support_x: Tensor, support_y: Tensor, loss_fn: LossFn, steps: int | None = None,
              first_order: bool | None = None) -> Params:
        """Adapt to one task (no task dimension); returns its params dict for `self(x, params)`."""
        F.check_task(support_x, support_y)
        with torch.enable_grad():
            return self.inner_loop(self.params(), support_x, support_y, loss_fn,
                                   steps=steps, first_order=first_order)[-1]

    def forward(self, x: Tensor, params: Mapping[str, Tensor] | None = None) -> Tensor:
        return self.task_forward(self.params() if params is None else dict(params), x, None, None)

    # ---- the outer loss over a batch of tasks ----------------------------------------------
    @outside_user_graph
    def meta_loss(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
                  loss_fn: LossFn, reduction: str = "mean") -> Tensor:
        """Query loss after adaptation over a batch of tasks (leading task dimension on all four
        inputs), "mean" or "sum" over tasks; differentiable w.r.t. self.parameters()."""
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        _check_batch(support_x, support_y, query_x, query_y)
        if self.second_order == "hvp" and torch.is_grad_enabled():
            losses = hvp_meta_losses(self, support_x, support_y, query_x, query_y, loss_fn)
            return losses.mean() if reduction == "mean" else losses.sum()
        if self.batching == "batched" or (self.batching == "auto" and batched.learner_supported(self)):
            mode = "batched"  # "auto": the task-batched layers when they cover the model and hooks
        else:
            mode = self._batching_for(support_x, support_y, query_x, query_y, loss_fn)
        self.batching_used = mode
        # Under no_grad (evaluation) the inner loop still needs gradients, but no graph through them.
        outer_grad = torch.is_grad_enabled()
        run = {"batched": self._batched_losses, "vmap": self._vmap_losses}.get(mode, self._loop_losses)
        with torch.enable_grad():
            losses = run(support_x, support_y, query_x, query_y, loss_fn, None if outer_grad else True)
        loss = losses.mean() if reduction == "mean" else losses.sum()
        return loss if outer_grad else loss.detach()

    def _loop_losses(self, sx, sy, qx, qy, loss_fn, first_order=None) -> Tensor:
        params = self.params()
        losses = []
        for t in range(sx.shape[0]):
            trajectory = self.inner_loop(params, sx[t], sy[t], loss_fn, first_order=first_order)
            losses.append(self.task_loss(trajectory, qx[t], qy[t], loss_fn, None))
        return torch.stack(losses)

    def _batched_losses(self, sx, sy, qx, qy, loss_fn, first_order=None) -> Tensor:
        if not batched.learner_supported(self):
            why = batched.why_not(self.module) or "the learner overrides a per-task hook"
            raise ValueError(f"batching='batched': {type(self).__name__} has no task-batched form here: {why}")
        return batched.task_losses(self, sx, sy, qx, qy, loss_fn, first_order)

    def _vmap_losses(self, sx, sy, qx, qy, loss_fn, first_order=None) -> Tensor:
        params = self.params()
        # Each task gets its own copy of the buffers (BatchNorm running statistics update in
        # place); afterwards the module keeps the mean over tasks of the updated statistics.
        buffers = {n: b.unsqueeze(0).expand(sx.shape[0], *b.shape).clone() for n, b in self.module.named_buffers()}

        def one_task(sx, sy, qx, qy, buffers):
            trajectory = self.inner_loop(params, sx, sy, loss_fn, buffers, first_order=first_order,
                                         grads_fn=F.func_grads)
            return self.task_loss(trajectory, qx, qy, loss_fn, buffers)

        # NOTE: [vmap batch norm] in fastmaml/_batchnorm.py.
        mode = DecomposedBatchNorm() if has_batch_norm(self.module) else contextlib.nullcontext()
        with mode:
            losses = torch.func.vmap(one_task, randomness="different")(sx, sy, qx, qy, buffers)
        with torch.no_grad():
            for name, b in self.module.named_buffers():
                new = buffers[name]
                b.copy_(new.mean(0) if b.is_floating_point() else new[0])
        return losses

    def _batching_for(self, *batch) -> str:
        if self.batching != "auto":
            return self.batching
        key = tuple((tuple(t.shape), t.dtype, t.device) for t in batch[:4]) + (self.training,)
        if key not in self._auto_choice:
            self._auto_choice[key] = self._measure_batching(*batch)
        return self._auto_choice[key]

    def _measure_batching(self, sx, sy, qx, qy, loss_fn) -> str:
        """"auto": time one meta-step (loss and gradient) each way on a few tasks and keep the
        faster; "loop" if the model does not run under vmap. Buffers and RNG are restored."""
        tasks = slice(0, min(4, sx.shape[0]))
        sample = (sx[tasks], sy[tasks], qx[tasks], qy[tasks], loss_fn)
        saved = {n: b.clone() for n, b in self.module.named_buffers()}
        rng = torch.random.get_rng_state()
        wrt = [p for p in self.parameters() if p.requires_grad]

        def step(fn):
            loss = fn(*sample).sum()
            torch.autograd.grad(loss, wrt, allow_unused=True)

        def timed(fn):
            start = time.perf_counter()
            step(fn)
            return time.perf_counter() - start

        try:
            try:
                step(self._vmap_losses)
            except Exception:  # the model does not support vmap (e.g. data-dependent control flow)
                return "loop"
            step(self._loop_losses)
            vmap_time = min(timed(self._vmap_losses) for _ in range(2))
            loop_time = min(timed(self._loop_losses) for _ in range(2))
            return "vmap" if vmap_time <= loop_time else "loop"
        finally:
            with torch.no_grad():
                for n, b in self.module.named_buffers():
                    b.copy_(saved[n])
            torch.random.set_rng_state(rng)


def _check_batch(support_x, support_y, query_x, query_y) -> None:
    args = {"support_x": support_x, "support_y": support_y, "query_x": query_x, "query_y": query_y}
    for name, t in args.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
        if t.dim() < 2:
            raise ValueError(f"{name} must have a leading task dimension and an example dimension, got shape {list(t.shape)}")
    tasks = {name: t.shape[0] for name, t in args.items()}
    if len(set(tasks.values())) != 1:
        raise ValueError(f"support and query must have the same number of tasks (leading dimension), got {tasks}")
    if tasks["support_x"] == 0:
        raise ValueError("the batch of tasks is empty")
    for what, x, y in (("support", support_x, support_y), ("query", query_x, query_y)):
        if x.shape[1] != y.shape[1]:
            raise ValueError(f"{what}_x has {x.shape[1]} examples per task but {what}_y has {y.shape[1]}")
    if support_x.shape[1] == 0:
        raise ValueError(f"the support set is empty (support_x has shape {list(support_x.shape)})")
