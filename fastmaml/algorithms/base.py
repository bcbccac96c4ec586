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
    """A model and the settings of its inner loop: the base of every learner of the MAML family.

    `meta_loss(support_x, support_y, query_x, query_y, loss_fn)` is the outer loss over a batch of
    tasks (differentiable w.r.t. `parameters()`), `adapt(x, y, loss_fn)` adapts to one task and
    `learner(x, params)` runs the model with the adapted parameters. An algorithm subclasses it and
    overrides hooks (`inner_rates`, `inner_gammas`, `is_first_order`, `task_forward`, `support_loss`,
    `query_loss`, `task_loss`, `inner_loop`).

    Args:
        model: the network whose parameters are meta-learned (a `torch.compile`'d module runs its
            original, with a warning).
        inner_lr: the inner-loop learning rate alpha, a finite number.
        inner_steps: the number K of inner steps per task (0: no adaptation).
        first_order: if True, no graph through the inner gradients (first-order MAML).
        adapt_names: the names (or fnmatch patterns) of the parameters adapted in the inner loop;
            None adapts all. The others are shared across tasks and meta-learned only.
        batching: how tasks run: "auto" (chooses, see `fastmaml.execution.explain`), "batched"
            (task-batched layers), "vmap", "loop", "compiled" (one torch.compile graph;
            `fastmaml.compile(learner, backend=..., expected_steps=...)` sets it, or lets "auto"
            weigh it, and can compile ahead of time with AOTInductor: docs/compile.md).
        second_order: "autograd" (differentiate through the inner steps) or "hvp" (the same
            meta-gradient by a reverse recursion of batched Hessian-vector products, `O(K |theta|)`
            memory; docs/imaml.md).
        hvp_method: how the hvp mode computes Hessian-vector products: "auto" or one of
            `fastmaml.secondorder.hvp.METHODS`.
        inner_optimizer: the differentiable inner optimizer: "sgd" (the plain fused update, the
            default), "momentum", "adam", "adamw", "rmsprop", or a `fastmaml.ops.optim.InnerOptimizer`
            (docs/inner_optimizers.md).

    Raises:
        TypeError: if `model` is not an nn.Module or has non-floating parameters.
        ValueError: if an argument is out of its range (the message names it).
    """

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
        inner_optimizer: str | object = "sgd",
    ) -> None:
        """Check the settings and wrap `model` (the arguments: see the class docstring)."""
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

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        # The hooks this class overrides, read by the execution layer (fastmaml/execution/hooks.py).
        cls.overridden_hooks = frozenset(h for h in RECORDED if getattr(cls, h) is not getattr(MetaLearner, h))

    @property
    def batching_used(self) -> str | None:
        """The mode the last meta-step ran in ("batched", "vmap", "loop"), None before the first."""
        return self.execution_state.used

    # ---- hooks an algorithm may override -------------------------------------------------
    def inner_rates(self, step: int) -> float | Mapping[str, Tensor]:
        """The inner learning rate(s) of `step`: a number, or a dict name -> tensor.

        Args:
            step: the inner step, 0 .. K-1.
        """
        return self.inner_lr

    def inner_gammas(self, step: int, params: Params, grads: Params) -> Params | None:
        """Forget factors gamma (gamma * p - lr * g) of `step`, or None for the plain update.

        Args:
            step: the inner step, 0 .. K-1.
            params: the task's parameters at this step.
            grads: their support-loss gradients.
        """
        return None

    def is_first_order(self, step: int) -> bool:
        """Whether inner step `step` is taken without a graph through its gradient.

        Args:
            step: the inner step, 0 .. K-1.
        """
        return self.first_order

    def task_forward(self, params: Params, x: Tensor, buffers: Params | None, step: int | None) -> Tensor:
        """The model's output with `params`.

        Args:
            params: the parameters to run the model with (name -> tensor).
            x: the inputs of one task.
            buffers: the task's buffers (BatchNorm statistics), or None for the module's own.
            step: the inner step, None for the query.
        """
        return F.functional_forward(self.module, params, x, buffers=buffers)

    def support_loss(self, params: Params, x: Tensor, y: Tensor, loss_fn: LossFn, buffers: Params | None,
                     step: int) -> Tensor:
        """The inner (support) loss of `step` at `params`.

        Args:
            params: the task's parameters at this step.
            x: support inputs of one task.
            y: support targets.
            loss_fn: loss_fn(output, y) -> scalar.
            buffers: the task's buffers, or None.
            step: the inner step.
        """
        return loss_fn(self.task_forward(params, x, buffers, step), y)

    def query_loss(self, params: Params, x: Tensor, y: Tensor, loss_fn: LossFn, buffers: Params | None,
                   step: int | None = None) -> Tensor:
        """The outer (query) loss at `params`.

        Args:
            params: the adapted parameters.
            x: query inputs of one task.
            y: query targets.
            loss_fn: loss_fn(output, y) -> scalar.
            buffers: the task's buffers, or None.
            step: index of the iterate, None for the last.
        """
        return loss_fn(self.task_forward(params, x, buffers, step), y)

    def task_loss(self, trajectory: list[Params], query_x: Tensor, query_y: Tensor, loss_fn: LossFn,
                  buffers: Params | None) -> Tensor:
        """The task's outer loss from the parameter iterates [phi_0, ..., phi_K].

        Args:
            trajectory: the iterates of the inner loop, phi_0 = theta first.
            query_x: query inputs of one task.
            query_y: query targets.
            loss_fn: loss_fn(output, y) -> scalar.
            buffers: the task's buffers, or None.
        """
        return self.query_loss(trajectory[-1], query_x, query_y, loss_fn, buffers, None)

    # ---- the inner loop ------------------------------------------------------------------
    def params(self) -> Params:
        """The meta-parameters the inner loop starts from, name -> tensor (phi_0 = theta)."""
        return F.params_of(self.module)

    def inner_loop(self, params: Params, support_x: Tensor, support_y: Tensor, loss_fn: LossFn,
                   buffers: Params | None = None, steps: int | None = None, first_order: bool | None = None,
                   grads_fn: GradsFn = F.autograd_grads) -> list[Params]:
        """Run the inner steps on one task; return the iterates [phi_0, ..., phi_K].

        Args:
            params: phi_0, the parameters to start from.
            support_x: support inputs of one task.
            support_y: support targets.
            loss_fn: loss_fn(output, y) -> scalar.
            buffers: the task's buffers, or None.
            steps: the number of steps (None: `inner_steps`).
            first_order: overrides `first_order` for every step (None: `is_first_order(step)`).
            grads_fn: computes the support gradients (the modes pass their own).
        """
        steps = self.inner_steps if steps is None else steps

        def support_loss(p: Params, buffers: Params | None, step: int) -> Tensor:
            return self.support_loss(p, support_x, support_y, loss_fn, buffers, step)

        return unroll(self, params, support_loss, steps, first_order, grads_fn, buffers)

    @outside_user_graph
    def adapt(self, support_x: Tensor, support_y: Tensor, loss_fn: LossFn, steps: int | None = None,
              first_order: bool | None = None) -> Params:
        """Adapt to one task; return its parameters for `self(x, params)`.

        Args:
            support_x: support inputs of one task, [N, ...] (no task dimension: a batch of tasks
                [T, N, ...] is refused, see `example_rank`).
            support_y: support targets, [N, ...].
            loss_fn: loss_fn(output, y) -> scalar.
            steps: the number of inner steps (None: `inner_steps`).
            first_order: overrides `first_order` (None: keep it).

        Returns:
            The adapted parameters, name -> tensor (differentiable w.r.t. the learner's parameters
            unless first order).
        """
        checks.check_task(support_x, support_y)
        checks.check_example_rank(self, support_x, 1, "adapt")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
            raise ValueError(f"steps must be an int >= 0 (or None: inner_steps), got {steps!r}")
        with torch.enable_grad():
            return self.inner_loop(self.params(), support_x, support_y, loss_fn,
                                   steps=steps, first_order=first_order)[-1]

    def forward(self, x: Tensor, params: Mapping[str, Tensor] | None = None) -> Tensor:
        """Run the model on `x`.

        Args:
            x: the inputs.
            params: adapted parameters (from `adapt`), None for the meta-parameters.
        """
        return self.task_forward(self.params() if params is None else dict(params), x, None, None)

    # ---- the outer loss over a batch of tasks ----------------------------------------------
    @outside_user_graph
    def meta_loss(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
                  loss_fn: LossFn, reduction: str = "mean") -> Tensor:
        """The query loss after adaptation over a batch of tasks.

        Under `torch.no_grad()` the inner loop still takes its gradients and the result is detached
        (evaluation).

        Args:
            support_x: support inputs, [T, N, ...] (a leading task dimension on all four).
            support_y: support targets, [T, N, ...].
            query_x: query inputs, [T, M, ...].
            query_y: query targets, [T, M, ...].
            loss_fn: loss_fn(output, y) -> scalar, e.g. `torch.nn.functional.cross_entropy`.
            reduction: "mean" or "sum" over tasks.

        Returns:
            A scalar, differentiable w.r.t. `self.parameters()`.

        Raises:
            ValueError: if the shapes do not make a batch of tasks (the message names the argument).
        """
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        checks.check_batch(support_x, support_y, query_x, query_y, self)
        losses = execution.meta_losses(self, support_x, support_y, query_x, query_y, loss_fn)
        return losses.mean() if reduction == "mean" else losses.sum()

    @outside_user_graph
    def meta_backward(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
                      loss_fn: LossFn, reduction: str = "mean") -> Tensor:
        """`meta_loss(...).backward()` in one call: the meta-gradient is added to each parameter's
        `.grad` (accumulating, as backward does) and the meta-loss is returned detached. The same
        gradients as `meta_loss(...).backward()` in every mode; the compiled mode writes its
        precomputed meta-gradient into `.grad` directly, without an autograd graph around the
        compiled step (NOTE: [direct meta-gradient] in fastmaml/execution/compiled.py).

        Args:
            support_x: support inputs, [T, N, ...] (a leading task dimension on all four).
            support_y: support targets, [T, N, ...].
            query_x: query inputs, [T, M, ...].
            query_y: query targets, [T, M, ...].
            loss_fn: loss_fn(output, y) -> scalar.
            reduction: "mean" or "sum" over tasks.

        Returns:
            The meta-loss, a detached scalar.

        Raises:
            RuntimeError: under `torch.no_grad()` (there is no meta-gradient to take).
            ValueError: as `meta_loss`.
        """
        if not torch.is_grad_enabled():
            raise RuntimeError("meta_backward takes the meta-gradient: it cannot run under torch.no_grad() "
                               "(use meta_loss for an evaluation loss)")
        if type(self).meta_loss is not MetaLearner.meta_loss:  # an algorithm with its own outer loss (iMAML, ...)
            loss = self.meta_loss(support_x, support_y, query_x, query_y, loss_fn, reduction)
            loss.backward()
            return loss.detach()
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        checks.check_batch(support_x, support_y, query_x, query_y, self)
        return execution.meta_backward(self, support_x, support_y, query_x, query_y, loss_fn, reduction)
