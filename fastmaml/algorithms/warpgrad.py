"""WarpGrad (Flennerhag et al., 2020): warp layers interleaved with the task layers.

Every chosen layer's output goes through a warp layer omega_l (a square matrix on its output
features/channels, identity at start; default: after every nn.Linear/nn.Conv except the last).
The inner loop adapts only the task parameters theta (plain SGD through the fused update); the
warp layers precondition its gradients and are meta-learned, never adapted.

objective="trajectory" (default, the paper's objective): with the task trajectory theta_0..theta_K
held fixed (first-order inner loop, stop-gradient),

    J(omega) = mean_k L_query(theta_k - alpha grad_theta L_support(theta_k; omega); omega)

and the initialisation theta_0 gets the first-order (FOMAML) gradient of L_query(theta_K), with
omega held fixed in that term. meta_loss's *value* is L_query(theta_K); its gradient is the sum
of the two (the J term enters as J - stopgrad(J)).

objective="unrolled": backpropagate through the whole inner loop (second order), like MAML with
the warp layers in the forward.

Meta-optimiser: give `warp_parameters()` a smaller rate than the initialisation (a third of it on
sine). An Adam step moves each entry of an n x n warp by about the rate, its operator norm by up to
n times that, and the operator norms scale the inner step (squared, compounding over layers); at
the initialisation's rate the inner loop outgrows its stability limit within a few dozen
meta-steps (measurements in docs/algorithms/warpgrad.md).
"""

from __future__ import annotations

import torch

from fastmaml import functional as F
from fastmaml.algorithms._util import attach_transform, layer_names
from fastmaml.algorithms.base import MetaLearner

OBJECTIVES = ("trajectory", "unrolled")


class WarpGrad(MetaLearner):
    """`WarpGrad(model, inner_lr=0.01, inner_steps=5, warp_after=None, objective="trajectory",
    batching="auto")`.

    The warp layers are registered on `model` itself (a parameter `warp` on each chosen layer and
    a forward hook applying it), so `model` changes in place."""

    def __init__(self, model, inner_lr=0.01, inner_steps=5, warp_after=None, objective="trajectory",
                 batching="auto"):
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        own = list(F.params_of(model))
        if warp_after is None:
            found = layer_names(model, None, "warp_after")
            if len(found) < 2:
                raise ValueError("warp_after: the model has a single layer; name the layer(s) to warp")
            warp_after = found[:-1]
        warp_after = layer_names(model, warp_after, "warp_after")
        warps = [attach_transform(model, layer, "warp") for layer in warp_after]
        super().__init__(model, inner_lr, inner_steps, objective == "trajectory", own, batching)
        self.warp_after = warp_after
        self.objective = objective
        self.warp_names = warps
        self._support = None

    def warp_parameters(self) -> list:
        """The warp layers, for their own (smaller) meta-learning rate."""
        params = dict(self.module.named_parameters())
        return [params[n] for n in self.warp_names]

    def inner_loop(self, params, support_x, support_y, loss_fn, *args, **kwargs):
        self._support = (support_x, support_y)  # the trajectory objective re-evaluates the support loss
        return super().inner_loop(params, support_x, support_y, loss_fn, *args, **kwargs)

    def task_loss(self, trajectory, query_x, query_y, loss_fn, buffers):
        if self.objective == "unrolled" or len(trajectory) == 1:
            return super().task_loss(trajectory, query_x, query_y, loss_fn, buffers)
        warps = set(self.warp_names)
        adapted = set(self.adapt_names)
        last = {n: p.detach() if n in warps else p for n, p in trajectory[-1].items()}
        final = self.query_loss(last, query_x, query_y, loss_fn, buffers, None)
        support_x, support_y = self._support
        terms = []
        for k, phi in enumerate(trajectory[:-1]):
            start = {n: p.detach() if n in adapted else p for n, p in phi.items()}

            def support(p, b, k=k):
                return self.support_loss(p, support_x, support_y, loss_fn, b, k)

            _, grads = F.func_grads(support, start, self.adapt_names, False, buffers)
            ahead = F.inner_update(start, grads, self.inner_rates(k))
            terms.append(self.query_loss(ahead, query_x, query_y, loss_fn, buffers, k + 1))
        warp = torch.stack(terms).mean()
        return final + (warp - warp.detach())
