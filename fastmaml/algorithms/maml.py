"""MAML (Finn et al., 2017) and FOMAML: the base inner loop with one scalar rate.

    phi = theta - alpha * grad L_support(theta)    (k steps)
    theta <- theta - beta * grad_theta sum_tasks L_query(phi)
Second order differentiates through the inner steps; first order (FOMAML) does not.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from fastmaml.algorithms.base import MetaLearner


class MAML(MetaLearner):
    """MAML: K steps of SGD with one scalar rate per task, differentiated through.

    `meta_loss(support_x, support_y, query_x, query_y, loss_fn)` gives the outer loss over a batch
    of tasks; `adapt(x, y, loss_fn)` adapts one task; `maml(x, params)` runs the model.
    `second_order="hvp"` gives the same meta-gradient by a reverse recursion of batched
    Hessian-vector products, keeping only the K parameter iterates (docs/imaml.md).

    Example::

        maml = fastmaml.MAML(net, inner_lr=0.4, inner_steps=1)
        loss = maml.meta_loss(support_x, support_y, query_x, query_y, F.cross_entropy)
        loss.backward()

    Args:
        model: the network whose parameters are meta-learned.
        inner_lr: the inner learning rate alpha.
        inner_steps: the number K of inner steps per task.
        first_order: if True, no graph through the inner gradients.
        adapt_names: the names (or patterns) of the adapted parameters; None: all.
        batching: "auto", "batched", "vmap", "loop" or "compiled" (see `MetaLearner`).
        second_order: "autograd" or "hvp" (see `MetaLearner`).
        hvp_method: the hvp mode's Hessian-vector product method (see `MetaLearner`).
        inner_optimizer: "sgd" (default), "momentum", "adam", "adamw", "rmsprop" or an InnerOptimizer
            (see `MetaLearner`; docs/inner_optimizers.md).
    """
    cli_name, paper = "maml", "Finn et al. 2017"  # fastmaml train --algo maml


class FOMAML(MAML):
    """First-order MAML: MAML with first_order=True.

    Args:
        model: the network whose parameters are meta-learned.
        inner_lr: the inner learning rate alpha.
        inner_steps: the number K of inner steps per task.
        adapt_names: the names (or patterns) of the adapted parameters; None: all.
        batching: "auto", "batched", "vmap", "loop" or "compiled" (see `MetaLearner`).
        second_order: MAML's keyword, "autograd"; "hvp" is refused with a message (first order has
            no second-order term to compute).
    """
    cli_name, paper = "fomaml", "Finn et al. 2017 (first order)"  # fastmaml train --algo fomaml

    def __init__(self, model: nn.Module, inner_lr: float = 0.01, inner_steps: int = 1,
                 adapt_names: Iterable[str] | None = None, batching: str = "auto", *,
                 second_order: str = "autograd") -> None:
        """Build a MAML learner with first_order=True (the arguments: see the class docstring)."""
        super().__init__(model, inner_lr, inner_steps, True, adapt_names, batching, second_order=second_order)
