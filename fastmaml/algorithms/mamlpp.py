"""MAML++ (Antoniou et al., "How to train your MAML", 2019): MAML with

* LSLR  per-layer per-step learned inner rates:  phi_{k+1} = phi_k - alpha_{l,k} grad_l L_support(phi_k)
* BNRS  per-step BatchNorm running statistics:    the iterate phi_k runs with statistics set k
* BNWB  per-step BatchNorm weights and biases:    set k of (gamma, beta), meta-learned, not adapted
* MSL   multi-step loss: L_task = sum_{k=1..K} w_k(i) L_query(phi_k), annealed towards the final step
* DA    derivative-order annealing: first order while the iteration i < first_order_iterations

Iterate indexing: the support loss at phi_k (inner step k) and the query loss at phi_k both use
BatchNorm set k (k = 0..K, K + 1 sets; the query after all steps uses set K).

The counter i advances by one after every training `meta_loss` (module in training mode, grad
enabled) unless `iteration_counter="manual"`; `set_iteration(i)` sets it either way (the trainer
sets it to the epoch, iteration // epoch_length, before each step: MAML++ counts epochs, MSL for 10
and first order for 50 in the paper, 500 iterations an epoch). Counting meta-steps, the paper's
schedule is msl_iterations=5000, first_order_iterations=25000. The counter is saved in
`state_dict()`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, cast

import torch
from torch import Tensor, nn

from fastmaml import checks, functional as F
from fastmaml.algorithms._util import safe_names
from fastmaml.algorithms.base import MetaLearner
from fastmaml.functional import LossFn, Params

COUNTERS = ("meta_loss", "manual")


class MAMLpp(MetaLearner):
    """MAML++: per-step learned rates and BatchNorm sets, the multi-step loss, derivative-order annealing.

    `per_step_bn=True` gives every nn.BatchNorm layer K + 1 sets of running statistics (buffers
    `step_running_mean/var`, [K + 1, C]) and of affine parameters (`step_weight/bias`, [K + 1, C],
    initialised from the layer's own, which are then unused). BatchNorm parameters are not adapted
    by default. `adapt(..., steps=n)` with n > K reuses the last rate and BN set.

    Args:
        model: the network whose parameters are meta-learned (its BatchNorm layers get per-step sets).
        inner_lr: the initial per-layer, per-step rate.
        inner_steps: the number K >= 1 of inner steps per task.
        adapt_names: the names (or patterns) of the adapted parameters; None: all but BatchNorm's.
        batching: "auto", "vmap", "loop" or "compiled" (see `MetaLearner`).
        msl_iterations: the iterations over which the multi-step loss anneals to the final step.
        first_order_iterations: the iterations run first order (derivative-order annealing).
        per_step_bn: BNRS and BNWB, per-step BatchNorm statistics and affine parameters.
        learn_rates: LSLR, whether the per-step rates are meta-learned.
        iteration_counter: "meta_loss" (each training meta_loss counts one) or "manual"
            (`set_iteration` only).
    """
    cli_name, paper = "mamlpp", "Antoniou et al. 2019"  # fastmaml train --algo mamlpp

    def __init__(self, model: nn.Module, inner_lr: float = 0.01, inner_steps: int = 5,
                 adapt_names: Iterable[str] | None = None, batching: str = "auto", msl_iterations: int = 10,
                 first_order_iterations: int = 50, per_step_bn: bool = True, learn_rates: bool = True,
                 iteration_counter: str = "meta_loss") -> None:
        """Build the learner (the arguments: see the class docstring)."""
        if iteration_counter not in COUNTERS:
            raise ValueError(f"iteration_counter must be one of {COUNTERS}, got {iteration_counter!r}")
        checks.check_int(inner_steps, "inner_steps", 1)
        self_bn = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        bn_params = [f"{n}.{p}" if n else p for n, m in self_bn for p, _ in m.named_parameters(recurse=False)]
        if per_step_bn:
            for name, bn in self_bn:
                _add_step_bn(name, bn, inner_steps + 1)
        if adapt_names is None:
            names = [n for n in F.params_of(model) if n not in bn_params and not _is_step_bn(n)]
            adapt_names = names or None
        super().__init__(model, inner_lr, inner_steps, False, adapt_names, batching)
        self.iteration_counter = iteration_counter
        self.msl_iterations = checks.check_int(msl_iterations, "msl_iterations")
        self.first_order_iterations = checks.check_int(first_order_iterations, "first_order_iterations")
        self.per_step_bn = bool(per_step_bn)
        self._bn = [n for n, _ in self_bn]
        self.iteration = 0
        self._keys = safe_names(self.adapt_names)
        dtype = next(iter(self.params().values())).dtype
        device = next(iter(self.params().values())).device
        self.lslr = nn.ParameterDict({
            key: nn.Parameter(torch.full((inner_steps,), self.inner_lr, dtype=dtype, device=device),
                              requires_grad=learn_rates)
            for key in self._keys.values()
        })

    # ---- the iteration counter -------------------------------------------------------------
    def set_iteration(self, iteration: int) -> None:
        """Set the annealing counter (epoch or iteration, as long as you are consistent).

        Args:
            iteration: the counter's new value, an int >= 0.
        """
        self.iteration = checks.check_int(iteration, "iteration")

    def meta_loss(self, *args: Any, **kwargs: Any) -> Tensor:
        """`MetaLearner.meta_loss`, then one count of the iteration counter (training only)."""
        loss = super().meta_loss(*args, **kwargs)
        if self.iteration_counter == "meta_loss" and self.training and torch.is_grad_enabled():
            self.iteration += 1
        return loss

    def get_extra_state(self) -> dict[str, int]:
        return {"iteration": self.iteration}

    def set_extra_state(self, state: Mapping[str, int]) -> None:
        self.iteration = int(state["iteration"])

    def msl_weights(self) -> Tensor:
        """The multi-step-loss weights w_1..w_K at the current iteration (MAML++'s schedule: all
        1/K at first, the non-final ones decaying linearly to 0.03/K over msl_iterations)."""
        K = self.inner_steps
        w = torch.full((K,), 1.0 / K, dtype=torch.float64)
        if self.msl_iterations == 0 or K == 1:
            w.zero_()
            w[-1] = 1.0
            return w
        decay = 1.0 / K / self.msl_iterations
        floor = 0.03 / K
        i = min(self.iteration, self.msl_iterations)
        w[:-1] = max(1.0 / K - i * decay, floor)
        w[-1] = min(1.0 / K + i * (K - 1) * decay, 1.0 - (K - 1) * floor)
        return w

    # ---- hooks -----------------------------------------------------------------------------
    def is_first_order(self, step: int) -> bool:
        return self.first_order or self.iteration < self.first_order_iterations

    def inner_rates(self, step: int) -> dict[str, Tensor]:
        k = min(step, self.inner_steps - 1)
        return {n: self.lslr[key][k] for n, key in self._keys.items()}

    def task_forward(self, params: Params, x: Tensor, buffers: Params | None, step: int | None) -> Tensor:
        if not self._bn or not self.per_step_bn:
            return super().task_forward(params, x, buffers, step)
        k = self.inner_steps if step is None else min(step, self.inner_steps)
        params = dict(params)
        own = buffers if buffers is not None else dict(self.module.named_buffers())
        chosen = {} if buffers is None else dict(buffers)
        for name in self._bn:
            prefix = f"{name}." if name else ""
            for p in ("weight", "bias"):
                if prefix + "step_" + p in params:
                    params[prefix + p] = params[prefix + "step_" + p][k]
            for b in ("running_mean", "running_var"):
                if prefix + "step_" + b in own:
                    chosen[prefix + b] = own[prefix + "step_" + b][k]
        return F.functional_forward(self.module, params, x, buffers=chosen)

    def task_loss(self, trajectory: list[Params], query_x: Tensor, query_y: Tensor, loss_fn: LossFn,
                  buffers: Params | None) -> Tensor:
        K = len(trajectory) - 1
        if self.training and self.iteration < self.msl_iterations and K == self.inner_steps > 1:
            w = self.msl_weights().tolist()
            return sum(w[k - 1] * self.query_loss(trajectory[k], query_x, query_y, loss_fn, buffers, k)
                       for k in range(1, K + 1))
        return self.query_loss(trajectory[-1], query_x, query_y, loss_fn, buffers, None)


def _is_step_bn(name: str) -> bool:
    return name.rpartition(".")[2] in ("step_weight", "step_bias")


def _add_step_bn(name: str, bn: nn.modules.batchnorm._BatchNorm, sets: int) -> None:
    if hasattr(bn, "step_running_mean") or "step_weight" in bn._parameters:
        raise ValueError(f"batch norm layer {name!r} already has per-step statistics (wrapped twice?)")
    if bn.track_running_stats:
        bn.register_buffer("step_running_mean", cast(Tensor, bn.running_mean).detach().clone().expand(sets, -1).contiguous())
        bn.register_buffer("step_running_var", cast(Tensor, bn.running_var).detach().clone().expand(sets, -1).contiguous())
    if bn.affine:
        bn.step_weight = nn.Parameter(bn.weight.detach().clone().expand(sets, -1).contiguous())
        bn.step_bias = nn.Parameter(bn.bias.detach().clone().expand(sets, -1).contiguous())
