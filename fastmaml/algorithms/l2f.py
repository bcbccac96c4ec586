"""L2F, learning to forget (Baik et al., 2020), in its per-step form (as in ALFA):

    gamma_k = sigmoid(h_k([mean grad_l, mean phi_l]_{l=1..L}))        one factor per layer l
    phi_{k+1,l} = gamma_{k,l} * phi_{k,l} - alpha * grad_l L_support(phi_k)     ("forget" fused form)
The attenuator h_k (a small MLP per inner step) is meta-learned with theta; nothing but theta is
adapted. The statistics are detached when the step is first order (so loop and vmap agree).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fastmaml.algorithms._util import check_int
from fastmaml.algorithms.base import MetaLearner


class L2F(MetaLearner):
    """`L2F(model, inner_lr=0.01, inner_steps=1, first_order=False, adapt_names=None,
    batching="auto", hidden=None, init_gamma=0.99)`.

    `forget_nets[k]`: Linear(2L, hidden) - ReLU - Linear(hidden, L) for the L adapted tensors
    (hidden defaults to 2L); its output bias starts at logit(init_gamma), so gamma starts near
    init_gamma for every layer."""

    def __init__(self, model, inner_lr=0.01, inner_steps=1, first_order=False, adapt_names=None,
                 batching="auto", hidden=None, init_gamma=0.99):
        super().__init__(model, inner_lr, inner_steps, first_order, adapt_names, batching)
        if not (isinstance(init_gamma, float) and 0.0 < init_gamma < 1.0):
            raise ValueError(f"init_gamma must be a float in (0, 1), got {init_gamma!r}")
        n = len(self.adapt_names)
        hidden = 2 * n if hidden is None else check_int(hidden, "hidden", 1)
        p = next(iter(self.params().values()))
        nets = []
        for _ in range(max(inner_steps, 1)):
            net = nn.Sequential(nn.Linear(2 * n, hidden), nn.ReLU(), nn.Linear(hidden, n))
            with torch.no_grad():
                net[2].weight.mul_(0.1)
                net[2].bias.fill_(math.log(init_gamma / (1 - init_gamma)))
            nets.append(net.to(dtype=p.dtype, device=p.device))
        self.forget_nets = nn.ModuleList(nets)

    def inner_gammas(self, step, params, grads):
        names = list(grads)
        stats = torch.stack([grads[n].mean() for n in names] + [params[n].mean() for n in names])
        if self.is_first_order(step):
            stats = stats.detach()
        gamma = torch.sigmoid(self.forget_nets[min(step, len(self.forget_nets) - 1)](stats))
        return {n: gamma[i] for i, n in enumerate(names)}
