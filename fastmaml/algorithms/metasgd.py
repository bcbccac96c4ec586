"""Meta-SGD (Li et al., 2017): a learned inner learning rate for every parameter element (or
every parameter tensor).

    phi = theta - alpha (.) grad L_support(theta)          (k steps, "scaled" fused form)
    (theta, alpha) <- (theta, alpha) - beta * grad sum_tasks L_query(phi)
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from fastmaml.algorithms._util import safe_names
from fastmaml.algorithms.base import MetaLearner

PER = ("element", "layer")


class MetaSGD(MetaLearner):
    """Meta-SGD: MAML with a learned inner learning rate per parameter element (or tensor).

    The rates, initialised to `inner_lr`, are parameters of this module (`metasgd.lrs`), so an
    optimizer over `metasgd.parameters()` learns them.

    Args:
        model: the network whose parameters are meta-learned.
        inner_lr: the initial value of every learned rate.
        inner_steps: the number K of inner steps per task.
        first_order: if True, no graph through the inner gradients.
        adapt_names: the names (or patterns) of the adapted parameters; None: all.
        batching: "auto", "batched", "vmap", "loop" or "compiled" (see `MetaLearner`).
        per: "element" (alpha has each parameter's shape) or "layer" (one rate, shape [1], per
            parameter tensor).
        second_order: "autograd" or "hvp" (see `MetaLearner`).
    """
    cli_name, paper = "metasgd", "Li et al. 2017"  # fastmaml train --algo metasgd

    def __init__(self, model: nn.Module, inner_lr: float = 0.01, inner_steps: int = 1, first_order: bool = False,
                 adapt_names: Iterable[str] | None = None, batching: str = "auto", per: str = "element", *,
                 second_order: str = "autograd") -> None:
        """Build the learner and its rates (the arguments: see the class docstring)."""
        super().__init__(model, inner_lr, inner_steps, first_order, adapt_names, batching,
                         second_order=second_order)
        if per not in PER:
            raise ValueError(f"per must be one of {PER}, got {per!r}")
        self.per = per
        self._keys = safe_names(self.adapt_names)
        params = self.params()
        self.lrs = nn.ParameterDict({
            key: nn.Parameter(torch.full(params[n].shape if per == "element" else (1,), self.inner_lr,
                                         dtype=params[n].dtype, device=params[n].device))
            for n, key in self._keys.items()
        })

    def inner_rates(self, step: int) -> dict[str, Tensor]:
        """The learned rates, name -> tensor (the same at every step)."""
        return {n: self.lrs[key] for n, key in self._keys.items()}
