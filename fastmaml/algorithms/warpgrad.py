"""WarpGrad (Flennerhag et al., 2020): warp layers interleaved with the task layers.

The warp layers omega are meta-learned and never adapted; the inner loop adapts only the task
parameters theta (plain SGD through the fused update), and the warps precondition its gradients.
Either WarpGrad attaches them (`warp_after`: a square matrix on the output features/channels of
each chosen nn.Linear/nn.Conv, identity at start; default after every such layer but the last), or
the model has them already (`warp_names`: e.g. `fastmaml.models.conv4(warp=True)`, whose blocks
carry identity-initialised 3x3 convolutional warps, the paper's CNN warp layers).

objective="trajectory" (default, the paper's objective): with the task trajectory theta_0..theta_K
held fixed (first-order inner loop, stop-gradient),

    J(omega) = mean_k L_query(theta_k - alpha grad_theta L_support(theta_k; omega); omega)

and the initialisation theta_0 gets the first-order (FOMAML) gradient of L_query(theta_K), with
omega held fixed in that term. meta_loss's *value* is L_query(theta_K); its gradient is the sum
of the two (the J term enters as J - stopgrad(J)).

buffer_size > 0 (the paper's replay buffer): each meta_loss stores the points (theta_k, task) of its
tasks' trajectories in a buffer of the last `buffer_size` points, and J is the mean over `replay`
points drawn uniformly from the buffer (default: as many as the batch added) instead of over the
batch's own trajectories; the warps thus learn from the trajectories of earlier meta-steps too.

objective="unrolled": backpropagate through the whole inner loop (second order), like MAML with
the warp layers in the forward.

Meta-optimiser: give `warp_parameters()` a smaller rate than the initialisation (a third of it on
sine). An Adam step moves each entry of an n x n warp by about the rate, its operator norm by up to
n times that, and the operator norms scale the inner step (squared, compounding over layers); at
the initialisation's rate the inner loop outgrows its stability limit within a few dozen
meta-steps (measurements in docs/algorithms/warpgrad.md).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import Any, cast

import torch
from torch import Tensor, nn

from fastmaml import checks, functional as F
from fastmaml.algorithms._util import attach_transform, layer_names
from fastmaml.algorithms.base import MetaLearner
from fastmaml.execution.batchnorm import has_batch_norm
from fastmaml.execution.inner import GradsFn
from fastmaml.functional import LossFn, Params

# one replay-buffer point: (inner step k, theta_k's adapted parameters, support x, support y, query x, query y)
Point = tuple[int, Params, Tensor, Tensor, Tensor, Tensor]

OBJECTIVES = ("trajectory", "unrolled")


class WarpGrad(MetaLearner):
    """WarpGrad: meta-learned warp layers interleaved with the task layers precondition the inner loop.

    `warp_after` registers the warp layers on `model` itself (a parameter `warp` on each chosen layer
    and a forward hook applying it), so `model` changes in place; `warp_names` instead names the warp
    parameters the model already has. The buffer (`warpgrad.buffer`) is not part of `state_dict()`: a
    resumed run starts with an empty one.

    Args:
        model: the network whose parameters are meta-learned.
        inner_lr: the inner learning rate alpha.
        inner_steps: the number K of inner steps per task.
        warp_after: the nn.Linear/nn.Conv layers to put a warp after (default: every such layer but
            the last).
        objective: "trajectory" (the paper's, first-order inner loop) or "unrolled" (second order
            through the inner loop).
        batching: "auto", "vmap", "loop" or "compiled" (see `MetaLearner`).
        warp_names: names or globs (e.g. "*.warp.*") of warp parameters the model has; not with
            `warp_after`.
        buffer_size: the replay buffer's size in trajectory points (0: no buffer).
        replay: the points drawn from the buffer per meta-step (default: as many as the batch added).
    """
    cli_name, paper = "warpgrad", "Flennerhag et al. 2020"  # fastmaml train --algo warpgrad

    def __init__(self, model: nn.Module, inner_lr: float = 0.01, inner_steps: int = 5,
                 warp_after: Iterable[str] | None = None, objective: str = "trajectory", batching: str = "auto",
                 warp_names: Iterable[str] | None = None, buffer_size: int = 0, replay: int | None = None) -> None:
        """Build the learner, attaching the warps (the arguments: see the class docstring)."""
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if warp_names is not None:
            if warp_after is not None:
                raise ValueError("give warp_after (layers to attach warps to) or warp_names (warps the model has), not both")
            warps = F.select_names(F.params_of(model), warp_names, "warp_names")
        else:
            if warp_after is None:
                found = layer_names(model, None, "warp_after")
                if len(found) < 2:
                    raise ValueError("warp_after: the model has a single layer; name the layer(s) to warp")
                warp_after = found[:-1]
            warp_after = layer_names(model, warp_after, "warp_after")
            warps = [attach_transform(model, layer, "warp") for layer in warp_after]
        task = [n for n in F.params_of(model) if n not in warps]
        if not task:
            raise ValueError(f"warp_names {warp_names!r} cover every parameter; WarpGrad needs task parameters to adapt")
        super().__init__(model, inner_lr, inner_steps, objective == "trajectory", task, batching)
        self.warp_after = warp_after
        self.objective = objective
        self.warp_names = warps
        self.buffer_size = checks.check_int(buffer_size, "buffer_size")
        self.replay = None if replay is None else checks.check_int(replay, "replay", 1)
        self.buffer: collections.deque[Point] = collections.deque(maxlen=max(self.buffer_size, 1))
        self._support: tuple[Tensor, Tensor] | None = None

    def warp_parameters(self) -> list[nn.Parameter]:
        """The warp layers, for their own (smaller) meta-learning rate."""
        params = dict(self.module.named_parameters())
        return [params[n] for n in self.warp_names]

    def inner_loop(self, params: Params, support_x: Tensor, support_y: Tensor, loss_fn: LossFn, *args: Any,
                   **kwargs: Any) -> list[Params]:
        self._support = (support_x, support_y)  # the trajectory objective re-evaluates the support loss
        return super().inner_loop(params, support_x, support_y, loss_fn, *args, **kwargs)

    def lookahead(self, phi: Params, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
                  loss_fn: LossFn, buffers: Params | None = None, step: int = 0) -> Tensor:
        """L_query(phi - alpha grad L_support(phi; omega); omega) with phi (the task parameters) fixed.

        The term of J for one trajectory point; differentiable w.r.t. the warps.

        Args:
            phi: the trajectory point (all parameters).
            support_x: support inputs of one task.
            support_y: support targets.
            query_x: query inputs.
            query_y: query targets.
            loss_fn: loss_fn(output, y) -> scalar.
            buffers: the task's buffers, or None.
            step: the point's inner step.
        """
        adapted = set(self.adapt_names)
        start = {n: p.detach() if n in adapted else p for n, p in phi.items()}

        def support(p: Params, b: Params | None) -> Tensor:
            return self.support_loss(p, support_x, support_y, loss_fn, b, step)

        _, grads = F.func_grads(support, start, self.adapt_names, False, buffers)
        ahead = F.inner_update(start, grads, self.inner_rates(step))
        return self.query_loss(ahead, query_x, query_y, loss_fn, buffers, step + 1)

    def task_loss(self, trajectory: list[Params], query_x: Tensor, query_y: Tensor, loss_fn: LossFn,
                  buffers: Params | None) -> Tensor:
        if self.objective == "unrolled" or len(trajectory) == 1:
            return super().task_loss(trajectory, query_x, query_y, loss_fn, buffers)
        warps = set(self.warp_names)
        last = {n: p.detach() if n in warps else p for n, p in trajectory[-1].items()}
        final = self.query_loss(last, query_x, query_y, loss_fn, buffers, None)
        if self.buffer_size:
            return final  # meta_loss adds J over the replay buffer
        support_x, support_y = cast("tuple[Tensor, Tensor]", self._support)  # set by inner_loop
        warp = torch.stack([self.lookahead(phi, support_x, support_y, query_x, query_y, loss_fn, buffers, k)
                            for k, phi in enumerate(trajectory[:-1])]).mean()
        return final + (warp - warp.detach())

    # ---- the replay buffer -------------------------------------------------------------------
    def meta_loss(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor, loss_fn: LossFn,
                  reduction: str = "mean") -> Tensor:
        """`MetaLearner.meta_loss`, plus the replay buffer's J term in its gradient when `buffer_size` > 0."""
        loss = super().meta_loss(support_x, support_y, query_x, query_y, loss_fn, reduction)
        if not (self.buffer_size and self.objective == "trajectory" and torch.is_grad_enabled() and self.inner_steps):
            return loss
        added = self._record(support_x, support_y, query_x, query_y, loss_fn)
        warp = self.replay_objective(loss_fn, self.replay or added)
        return loss + (warp - warp.detach()) * (1.0 if reduction == "mean" else support_x.shape[0])

    def _record(self, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor, loss_fn: LossFn) -> int:
        """Push the points theta_0..theta_{K-1} of each task's trajectory (detached), task by task;
        return how many."""
        theta = {n: p.detach() for n, p in self.params().items()}

        def points(x: Tensor, y: Tensor, grads_fn: GradsFn) -> list[Params]:
            trajectory = self.inner_loop(theta, x, y, loss_fn, first_order=True, grads_fn=grads_fn)[:-1]
            return [{n: phi[n].detach() for n in self.adapt_names} for phi in trajectory]

        with torch.enable_grad():
            if self._mapped():
                batched = torch.func.vmap(lambda x, y: points(x, y, F.func_grads), randomness="different")(sx, sy)
                per_task = [[{n: v[t] for n, v in phi.items()} for phi in batched] for t in range(sx.shape[0])]
            else:
                per_task = [points(sx[t], sy[t], F.func_grads) for t in range(sx.shape[0])]
        for t, trajectory in enumerate(per_task):
            for k, phi in enumerate(trajectory):
                self.buffer.append((k, phi, sx[t], sy[t], qx[t], qy[t]))
        return sum(len(tr) for tr in per_task)

    def _mapped(self) -> bool:
        """vmap over tasks / points unless batching="loop" or the model has batch norm."""
        return self.batching != "loop" and not has_batch_norm(self.module)

    def replay_objective(self, loss_fn: LossFn, count: int) -> Tensor:
        """J over `count` points drawn uniformly (with replacement) from the buffer.

        Args:
            loss_fn: loss_fn(output, y) -> scalar.
            count: the number of points.
        """
        points = [self.buffer[i] for i in torch.randint(len(self.buffer), (count,)).tolist()]
        params = self.params()
        if not self._mapped() or len({p[2].shape for p in points}) > 1:
            return torch.stack([self.lookahead({**params, **phi}, sx, sy, qx, qy, loss_fn, None, k)
                                for k, phi, sx, sy, qx, qy in points]).mean()
        stacked = [torch.stack([cast(Tensor, p[i]) for p in points]) for i in range(2, 6)]
        phis = {n: torch.stack([p[1][n] for p in points]) for n in self.adapt_names}

        def one(phi: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:  # step 0 for every point: WarpGrad's rate and forward do not depend on k
            return self.lookahead({**params, **phi}, sx, sy, qx, qy, loss_fn, None, 0)

        return torch.func.vmap(one, randomness="different")(phis, *stacked).mean()
