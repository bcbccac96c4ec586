"""ALFA (Baik et al., "Meta-Learning with Adaptive Hyperparameters", NeurIPS 2020): at every inner
step a meta-learned network generates per-layer learning rates alpha and weight-decay factors beta
from the task's current state,

    tau_k = [mean grad_l L_support(phi_k), mean phi_{k,l}]_{l=1..L}          (2L numbers)
    (a_k, b_k) = g(tau_k)                                                    (3-layer ReLU MLP, 2L outputs)
    alpha_{k,l} = alpha0_{k,l} * a_{k,l},   beta_{k,l} = beta0_{k,l} * b_{k,l}
    phi_{k+1,l} = beta_{k,l} * phi_{k,l} - alpha_{k,l} * grad_l L_support(phi_k)   ("forget" fused form)

g is shared by the steps; alpha0, beta0 (one per step and layer, starting at inner_lr and 1) and g
are meta-learned with theta. g's last layer starts at zero weights and bias 1, so the first
meta-step is exactly MAML. tau is detached in first-order steps, so loop and vmap agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from fastmaml import checks, functional as F
from fastmaml.algorithms.base import MetaLearner
from fastmaml.execution.inner import GradsFn
from fastmaml.functional import LossFn, Params


class ALFA(MetaLearner):
    """ALFA: a meta-learned network generates each step's per-layer learning rates and forget factors.

    `alfa.generator`: Linear(2L, h) - ReLU - Linear(h, h) - ReLU - Linear(h, 2L) for the L adapted
    tensors; `alfa.alpha0`, `alfa.beta0`: [K, L]. `hyperparameters(step, params, grads)` gives the
    step's (alpha, beta) dicts.

    Args:
        model: the network whose parameters are meta-learned.
        inner_lr: the initial per-step, per-layer rate alpha0.
        inner_steps: the number K of inner steps per task.
        first_order: if True, no graph through the inner gradients (tau detached).
        adapt_names: the names (or patterns) of the adapted parameters; None: all.
        batching: "auto", "vmap", "loop" or "compiled" (see `MetaLearner`).
        hidden: the generator's hidden width h (default 2L).
    """
    cli_name, paper = "alfa", "Baik et al. NeurIPS 2020"  # fastmaml train --algo alfa

    def __init__(self, model: nn.Module, inner_lr: float = 0.01, inner_steps: int = 1, first_order: bool = False,
                 adapt_names: Iterable[str] | None = None, batching: str = "auto", hidden: int | None = None) -> None:
        """Build the learner and its generator (the arguments: see the class docstring)."""
        super().__init__(model, inner_lr, inner_steps, first_order, adapt_names, batching)
        n = len(self.adapt_names)
        hidden = 2 * n if hidden is None else checks.check_int(hidden, "hidden", 1)
        p = next(iter(self.params().values()))
        kw: dict[str, Any] = dict(dtype=p.dtype, device=p.device)
        last = nn.Linear(hidden, 2 * n)
        self.generator = nn.Sequential(nn.Linear(2 * n, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                       last).to(**kw)
        with torch.no_grad():
            last.weight.zero_()
            last.bias.fill_(1.0)
        steps = max(inner_steps, 1)
        self.alpha0 = nn.Parameter(torch.full((steps, n), self.inner_lr, **kw))
        self.beta0 = nn.Parameter(torch.ones(steps, n, **kw))

    def hyperparameters(self, step: int, params: Params, grads: Params,
                        first_order: bool) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(alpha, beta) of `step`: dicts name -> scalar tensor, from the layer-wise means.

        Args:
            step: the inner step.
            params: the task's parameters at this step.
            grads: their support gradients (the adapted names).
            first_order: if True, the generator's input is detached.
        """
        names = list(grads)
        tau = torch.stack([grads[n].mean() for n in names] + [params[n].mean() for n in names])
        if first_order:
            tau = tau.detach()
        a, b = self.generator(tau).chunk(2)
        k = min(step, self.alpha0.shape[0] - 1)
        alpha, beta = self.alpha0[k] * a, self.beta0[k] * b
        return {n: alpha[i] for i, n in enumerate(names)}, {n: beta[i] for i, n in enumerate(names)}

    def inner_loop(self, params: Params, support_x: Tensor, support_y: Tensor, loss_fn: LossFn,
                   buffers: Params | None = None, steps: int | None = None, first_order: bool | None = None,
                   grads_fn: GradsFn = F.autograd_grads) -> list[Params]:
        # The base loop asks for the rates before the gradient; ALFA's rates depend on it.
        steps = self.inner_steps if steps is None else steps
        trajectory = [params]
        for step in range(steps):
            order = self.is_first_order(step) if first_order is None else first_order

            def support_loss(p: Params, b: Params | None, step: int = step) -> Tensor:
                return self.support_loss(p, support_x, support_y, loss_fn, b, step)

            _, grads = grads_fn(support_loss, params, self.adapt_names, order, buffers)
            alpha, beta = self.hyperparameters(step, params, grads, order)
            params = F.inner_update(params, grads, alpha, beta)
            trajectory.append(params)
        return trajectory
