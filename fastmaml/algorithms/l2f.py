"""L2F, learning to forget (Baik et al., "Learning to Forget for Meta-Learning", CVPR 2020): a
task-conditioned, layer-wise attenuation of the initialisation, then plain adaptation.

    g = grad L_support(theta)                               the task's support gradient at theta
    gamma = sigmoid(h([mean g_l]_{l=1..L}))                 one factor per adapted tensor l
    theta~_l = gamma_l * theta_l                            the attenuated initialisation
    phi_0 = theta~;  phi_{k+1} = phi_k - alpha grad L_support(phi_k)      (k = 0 .. K-1, fused update)

The attenuator h (a 3-layer ReLU MLP) is meta-learned with theta; nothing but theta is adapted.
The meta-gradient flows through gamma's dependence on g (second order), or treats g as a constant
(first order). The inner loop's trajectory starts at theta~. The per-step form that fastmaml
called L2F before is ALFA's forget factor (fastmaml/algorithms/alfa.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from fastmaml import checks, functional as F
from fastmaml.algorithms.base import MetaLearner
from fastmaml.execution.inner import GradsFn
from fastmaml.functional import LossFn, Params


class L2F(MetaLearner):
    """L2F: a task-conditioned, layer-wise attenuation of the initialisation, then plain adaptation.

    `l2f.attenuator`: Linear(L, h) - ReLU - Linear(h, h) - ReLU - Linear(h, L) for the L adapted
    tensors; its last layer starts at small weights and bias logit(init_gamma), so gamma starts near
    init_gamma for every layer. `attenuate(params, x, y, loss_fn)` gives (theta~, gamma) for one task.

    Args:
        model: the network whose parameters are meta-learned.
        inner_lr: the inner learning rate alpha.
        inner_steps: the number K of inner steps per task.
        first_order: if True, no graph through the inner gradients (nor through gamma's input).
        adapt_names: the names (or patterns) of the adapted parameters; None: all.
        batching: "auto", "vmap", "loop" or "compiled" (see `MetaLearner`).
        hidden: the attenuator's hidden width h (default 2L).
        init_gamma: the attenuation at the start, a float in (0, 1).
    """
    cli_name, paper = "l2f", "Baik et al. CVPR 2020"  # fastmaml train --algo l2f

    def __init__(self, model: nn.Module, inner_lr: float = 0.01, inner_steps: int = 1, first_order: bool = False,
                 adapt_names: Iterable[str] | None = None, batching: str = "auto", hidden: int | None = None,
                 init_gamma: float = 0.99) -> None:
        """Build the learner and its attenuator (the arguments: see the class docstring)."""
        super().__init__(model, inner_lr, inner_steps, first_order, adapt_names, batching)
        if not (isinstance(init_gamma, float) and 0.0 < init_gamma < 1.0):
            raise ValueError(f"init_gamma must be a float in (0, 1), got {init_gamma!r}")
        n = len(self.adapt_names)
        hidden = 2 * n if hidden is None else checks.check_int(hidden, "hidden", 1)
        p = next(iter(self.params().values()))
        last = nn.Linear(hidden, n)
        net = nn.Sequential(nn.Linear(n, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), last)
        with torch.no_grad():
            last.weight.mul_(0.1)
            last.bias.fill_(math.log(init_gamma / (1 - init_gamma)))
        self.attenuator = net.to(dtype=p.dtype, device=p.device)

    def attenuate(self, params: Params, support_x: Tensor, support_y: Tensor, loss_fn: LossFn,
                  buffers: Params | None = None, first_order: bool | None = None,
                  grads_fn: GradsFn = F.autograd_grads) -> tuple[Params, dict[str, Tensor]]:
        """(theta~, gamma): the attenuated initialisation of one task and its factors (name -> scalar).

        Args:
            params: theta, the parameters to attenuate.
            support_x: support inputs of one task.
            support_y: support targets.
            loss_fn: loss_fn(output, y) -> scalar.
            buffers: the task's buffers, or None.
            first_order: overrides `first_order` (None: keep it).
            grads_fn: computes the support gradient (the modes pass their own).
        """
        order = self.first_order if first_order is None else first_order

        def support_loss(p: Params, b: Params | None) -> Tensor:
            return self.support_loss(p, support_x, support_y, loss_fn, b, 0)

        _, grads = grads_fn(support_loss, params, self.adapt_names, order, buffers)
        names = self.adapt_names
        stats = torch.stack([grads[n].mean() for n in names])
        factors = torch.sigmoid(self.attenuator(stats.detach() if order else stats))
        gamma = {n: factors[i] for i, n in enumerate(names)}
        return {**params, **{n: gamma[n] * params[n] for n in names}}, gamma

    def inner_loop(self, params: Params, support_x: Tensor, support_y: Tensor, loss_fn: LossFn,
                   buffers: Params | None = None, steps: int | None = None, first_order: bool | None = None,
                   grads_fn: GradsFn = F.autograd_grads) -> list[Params]:
        start, _ = self.attenuate(params, support_x, support_y, loss_fn, buffers, first_order, grads_fn)
        return super().inner_loop(start, support_x, support_y, loss_fn, buffers, steps, first_order, grads_fn)
