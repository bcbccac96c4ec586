"""The base of the whole MAML family: a model, its settings, and the hooks an algorithm overrides.

A MetaLearner wraps a model. Its meta-parameters are the model's parameters plus whatever an
algorithm adds (learned rates, forget nets, ...). For one task it runs

    phi_0 = theta;  phi_{k+1} = update(phi_k, grad L_support(phi_k))      k = 0 .. K-1
    L_task = L_query(phi_K)

and `meta_loss` reduces L_task over a batch of tasks. Algorithms change this only through the
hooks below (`inner_rates`, `inner_gammas`, `is_first_order`, `task_forward`, `support_loss`,
`query_loss`, `task_loss`, `inner_loop`); how the tasks are executed (task by task, vmap, the
task-batched layers, the hvp mode) is the execution layer's (fastmaml/execution/), which reads the
hooks a class overrides from `overridden_hooks` and never patches a learner. The update itself
always goes through fastmaml.ops (the fused-kernel dispatcher).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from fastmaml import checks, execution, functional as F
from fastmaml.execution.hooks import RECORDED
from fastmaml.execution.inner import GradsFn, unroll
from fastmaml.execution.user_compile import eager_module, outside_user_graph
from fastmaml.functional import LossFn, Params
from fastmaml.ops import optim as inner_optim
from fastmaml.secondorder.hvp import METHODS as HVP_METHODS

BATCHING = execution.MODES


class MetaLearner(nn.Module):
    overridden_hooks: frozenset[str] = frozenset()  # set per subclass by __init_subclass__
    # The command line's registry (fastmaml/train/registry.py) finds every class naming itself here:
    # a new algorithm is one file in fastmaml/algorithms/ (with its test and docs page).
    cli_name: str | None = None
    paper: str = ""
    outer_update: str = "meta_loss"  # "meta_grad": the learner's own outer update (Reptile)

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
        hvp_method: str = "auto",
        inner_optimizer="sgd",
    ):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        model = eager_module(model)  # a torch.compile'd model runs its original (issue 19)
        self.module = model
        params = F.params_of(model)
        if not params:
            raise ValueError("model has no parameters to meta-learn")
        checks.check_floating(params)
        self.inner_lr = checks.check_lr(inner_lr)
        if isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 0:
            raise ValueError(f"inner_steps must be an int >= 0, got {inner_steps!r}")
        self.inner_steps = inner_steps
        self.first_order = bool(first_order)
        self.adapt_names = F.select_names(params, adapt_names)
        if batching not in BATCHING:
            raise ValueError(f"batching must be one of {BATCHING}, got {batching!r}")
        self.batching = batching
        # "autograd": differentiate through the inner steps; "hvp": the same meta-gradient by a
        # reverse recursion of batched HVPs, O(K |theta|) memory (fastmaml/execution/hvp_mode.py).
        self.second_order = execution.check_second_order(second_order)
        if hvp_method not in HVP_METHODS:
            raise ValueError(f"hvp_method must be one of {HVP_METHODS}, got {hvp_method!r}")
        self.hvp_method = hvp_method  # NOTE: [hvp methods] in fastmaml/secondorder/hvp.py
        # the rank of one example, e.g. 2 for sequences [L, F] into a Linear; None: read from the
        # model's first layer (NOTE: [example rank] in fastmaml/checks.py)
        self.example_rank: int | None = None
        self.execution_state = execution.ExecutionState()
        # "sgd" (the plain fused update, None here), "momentum", "adam", "adamw", "rmsprop" or a
        # fastmaml.ops.optim.InnerOptimizer: the differentiable inner optimizer (docs/inner_optimizers.md)
        self.inner_optimizer = inner_optim.resolve(inner_optimizer)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # The hooks this class overrides, read by the execution layer (fastmaml/execution/hooks.py).
        cls.overridden_hooks = frozenset(h for h in RECORDED if getattr(cls, h) is not getattr(MetaLearner, h))

    @property
    def batching_used(self) -> str | None:
        """The mode the last meta-step ran in ("batched", "vmap", "loop"), None before the first."""
        return self.execution_state.used

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

        def support_loss(p, buffers, step):
            return self.support_loss(p, support_x, support_y, loss_fn, buffers, step)

        return unroll(self, params, support_loss, steps, first_order, grads_fn, buffers)

    @outside_user_graph
    def adapt(self, support_x: Tensor, support_y: Tensor, loss_fn: LossFn, steps: int | None = None,
              first_order: bool | None = None) -> Params:
        """Adapt to one task (no task dimension: support_x is [N, ...]); returns its params dict for
        `self(x, params)`. A batch of tasks [T, N, ...] is refused (see `example_rank`)."""
        checks.check_task(support_x, support_y)
        checks.check_example_rank(self, support_x, 1, "adapt")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
            raise ValueError(f"steps must be an int >= 0 (or None: inner_steps), got {steps!r}")
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
        checks.check_batch(support_x, support_y, query_x, query_y, self)
        losses = execution.meta_losses(self, support_x, support_y, query_x, query_y, loss_fn)
        return losses.mean() if reduction == "mean" else losses.sum()
