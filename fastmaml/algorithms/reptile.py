"""Reptile (Nichol et al., 2018): first order, no query set.

    phi_t = k steps of SGD on task t from theta (first order, no graph through the steps)
    theta <- theta + eps * mean_t (phi_t - theta)  =  theta - eps * (theta - mean_t phi_t)

`step()` applies the outer update in place with the fused op `fastmaml.ops.update_` (the "sgd"
form with g = theta - mean phi); `meta_grad()` instead adds g to each parameter's `.grad`, so
any torch optimizer can apply it (`torch.optim.SGD(lr=eps)` gives exactly Reptile).
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn

from fastmaml import checks, execution, ops
from fastmaml.algorithms.base import MetaLearner
from fastmaml.functional import LossFn


class Reptile(MetaLearner):
    """Reptile: first-order adaptation, the outer step moves theta towards the adapted parameters.

    Inputs carry a leading task dimension: support_x [tasks, k, ...], support_y [tasks, k, ...].
    `meta_loss` (inherited) is the post-adaptation query loss, useful for evaluation; its gradient
    is first-order MAML's, not Reptile's: train with `step` or `meta_grad`.

    Args:
        model: the network whose parameters are meta-learned.
        inner_lr: the inner learning rate.
        inner_steps: the number of inner steps per task.
        adapt_names: the names (or patterns) of the adapted parameters; None: all.
        batching: "auto", "vmap" or "loop" ("batched" and "compiled" run as "vmap").
    """
    cli_name, paper = "reptile", "Nichol et al. 2018"  # fastmaml train --algo reptile
    outer_update = "meta_grad"  # its own outer update (step / meta_grad), not meta_loss().backward()

    def __init__(self, model: nn.Module, inner_lr: float = 0.02, inner_steps: int = 5,
                 adapt_names: Iterable[str] | None = None, batching: str = "auto") -> None:
        """Build the learner (the arguments: see the class docstring)."""
        super().__init__(model, inner_lr, inner_steps, True, adapt_names, batching)

    def adapted_params(self, support_x: Tensor, support_y: Tensor, loss_fn: LossFn) -> tuple[dict[str, Tensor], Tensor]:
        """The adapted params of every task, stacked, and the mean post-adaptation support loss.

        Args:
            support_x: support inputs, [T, N, ...].
            support_y: support targets, [T, N, ...].
            loss_fn: loss_fn(output, y) -> scalar.

        Returns:
            name -> [T, ...] adapted parameters (no graph), and the loss.
        """
        checks.check_batch(support_x, support_y, support_x, support_y, self)
        phis, losses = execution.adapted(self, support_x, support_y, loss_fn)
        return phis, losses.mean()

    def _direction(self, support_x: Tensor, support_y: Tensor,
                   loss_fn: LossFn) -> tuple[list[Tensor], list[Tensor], Tensor]:
        phis, loss = self.adapted_params(support_x, support_y, loss_fn)
        params = self.params()
        thetas = [params[n] for n in self.adapt_names]
        return thetas, [t.detach() - phis[n].mean(0) for n, t in zip(self.adapt_names, thetas)], loss

    def meta_grad(self, support_x: Tensor, support_y: Tensor, loss_fn: LossFn) -> Tensor:
        """Add theta - mean_t phi_t to each adapted parameter's `.grad` (accumulating like
        backward); an optimizer step with lr eps then is the Reptile update.

        Args:
            support_x: support inputs, [T, N, ...].
            support_y: support targets, [T, N, ...].
            loss_fn: loss_fn(output, y) -> scalar.

        Returns:
            The mean post-adaptation support loss.
        """
        thetas, directions, loss = self._direction(support_x, support_y, loss_fn)
        for p, d in zip(thetas, directions):
            p.grad = d.clone() if p.grad is None else p.grad.add_(d)
        return loss

    def step(self, support_x: Tensor, support_y: Tensor, loss_fn: LossFn, outer_lr: float = 0.1) -> Tensor:
        """One Reptile meta-step in place, theta <- theta - outer_lr * (theta - mean_t phi_t),
        through `fastmaml.ops.update_`.

        Args:
            support_x: support inputs, [T, N, ...].
            support_y: support targets, [T, N, ...].
            loss_fn: loss_fn(output, y) -> scalar.
            outer_lr: the outer step size eps.

        Returns:
            The mean post-adaptation support loss.
        """
        outer_lr = checks.check_lr(outer_lr, "outer_lr")
        thetas, directions, loss = self._direction(support_x, support_y, loss_fn)
        ops.update_(thetas, directions, outer_lr, names=self.adapt_names)
        return loss
