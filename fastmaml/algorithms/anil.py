"""ANIL (Raghu et al., 2020) and BOIL (Oh et al., 2021): MAML adapting only part of the network.

    ANIL: phi_head = theta_head - alpha grad_head L_support;  body shared (not adapted)
    BOIL: phi_body = theta_body - alpha grad_body L_support;  head frozen in the inner loop
Both meta-learn every parameter in the outer loop; they are presets of `adapt_names`.
"""

from __future__ import annotations

from fastmaml import functional as F
from fastmaml.algorithms._util import head_names
from fastmaml.algorithms.maml import MAML


def _head(model, head):
    if head is None:
        return head_names(model)
    return F.select_names(F.params_of(model), head, "head")


class ANIL(MAML):
    """`ANIL(model, inner_lr=0.01, inner_steps=1, first_order=False, head=None, batching="auto",
    second_order="autograd")`.

    `head`: names/patterns of the adapted parameters (default: the parameters of the model's last
    module that has any, e.g. the final nn.Linear)."""
    cli_name, paper = "anil", "Raghu et al. 2020"  # fastmaml train --algo anil

    def __init__(self, model, inner_lr=0.01, inner_steps=1, first_order=False, head=None, batching="auto", *,
                 second_order="autograd"):
        super().__init__(model, inner_lr, inner_steps, first_order, _head(model, head), batching,
                         second_order=second_order)
        self.head = list(self.adapt_names)


class BOIL(MAML):
    """`BOIL(model, inner_lr=0.01, inner_steps=1, first_order=False, head=None, batching="auto",
    second_order="autograd")`.

    Adapts every parameter except the head (`head` as in ANIL); the head is frozen in the inner
    loop and meta-learned in the outer loop."""
    cli_name, paper = "boil", "Oh et al. 2021"  # fastmaml train --algo boil

    def __init__(self, model, inner_lr=0.01, inner_steps=1, first_order=False, head=None, batching="auto", *,
                 second_order="autograd"):
        frozen = _head(model, head)
        body = [n for n in F.params_of(model) if n not in frozen]
        if not body:
            raise ValueError(f"head {frozen} covers every parameter; BOIL needs a body to adapt")
        super().__init__(model, inner_lr, inner_steps, first_order, body, batching, second_order=second_order)
        self.head = frozen
