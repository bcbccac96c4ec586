"""Meta-SGD (Li et al., 2017): a learned inner learning rate for every parameter element (or
every parameter tensor).

    phi = theta - alpha (.) grad L_support(theta)          (k steps, "scaled" fused form)
    (theta, alpha) <- (theta, alpha) - beta * grad sum_tasks L_query(phi)
"""

from __future__ import annotations

import torch
from torch import nn

from fastmaml.algorithms._util import safe_names
from fastmaml.algorithms.base import MetaLearner

PER = ("element", "layer")


class MetaSGD(MetaLearner):
    """`MetaSGD(model, inner_lr=0.01, inner_steps=1, first_order=False, adapt_names=None,
    batching="auto", per="element", second_order="autograd")`.

    `per="element"`: alpha has each parameter's shape; `per="layer"`: one rate (shape [1]) per
    parameter tensor. The rates, initialised to `inner_lr`, are parameters of this module
    (`metasgd.lrs`), so an optimizer over `metasgd.parameters()` learns them."""
    cli_name, paper = "metasgd", "Li et al. 2017"  # fastmaml train --algo metasgd

    def __init__(self, model, inner_lr=0.01, inner_steps=1, first_order=False, adapt_names=None,
                 batching="auto", per="element", *, second_order="autograd"):
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

    def inner_rates(self, step):
        return {n: self.lrs[key] for n, key in self._keys.items()}
