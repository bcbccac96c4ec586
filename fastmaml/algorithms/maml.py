"""MAML (Finn et al., 2017) and FOMAML: the base inner loop with one scalar rate.

    phi = theta - alpha * grad L_support(theta)    (k steps)
    theta <- theta - beta * grad_theta sum_tasks L_query(phi)
Second order differentiates through the inner steps; first order (FOMAML) does not.
"""

from fastmaml.algorithms.base import MetaLearner


class MAML(MetaLearner):
    """`MAML(model, inner_lr=0.01, inner_steps=1, first_order=False, adapt_names=None, batching="auto",
    second_order="autograd")`.

    `meta_loss(support_x, support_y, query_x, query_y, loss_fn)` gives the outer loss over a batch
    of tasks; `adapt(x, y, loss_fn)` adapts one task; `maml(x, params)` runs the model.
    `second_order="hvp"` gives the same meta-gradient by a reverse recursion of batched
    Hessian-vector products, keeping only the K parameter iterates (docs/imaml.md)."""
    cli_name, paper = "maml", "Finn et al. 2017"  # fastmaml train --algo maml


class FOMAML(MAML):
    """First-order MAML: MAML with first_order=True. `second_order` is MAML's keyword: "autograd";
    "hvp" is refused with a message (first order has no second-order term to compute)."""
    cli_name, paper = "fomaml", "Finn et al. 2017 (first order)"  # fastmaml train --algo fomaml

    def __init__(self, model, inner_lr=0.01, inner_steps=1, adapt_names=None, batching="auto", *,
                 second_order="autograd"):
        super().__init__(model, inner_lr, inner_steps, True, adapt_names, batching, second_order=second_order)
