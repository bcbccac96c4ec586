"""ANIL (Raghu et al., 2020) and BOIL (Oh et al., 2021): MAML adapting only part of the network.

    ANIL: phi_head = theta_head - alpha grad_head L_support;  body shared (not adapted)
    BOIL: phi_body = theta_body - alpha grad_body L_support;  head frozen in the inner loop
Both meta-learn every parameter in the outer loop; they are presets of `adapt_names`.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from fastmaml import functional as F
from fastmaml.algorithms._util import head_names
from fastmaml.algorithms.maml import MAML


def _head(model: nn.Module, head: Iterable[str] | None) -> list[str]:
    if head is None:
        return head_names(model)
    return F.select_names(F.params_of(model), head, "head")


class ANIL(MAML):
    """ANIL: MAML adapting only the head in the inner loop; every parameter is meta-learned.

    Args:
        model: the network whose parameters are meta-learned.
        inner_lr: the inner learning rate alpha.
        inner_steps: the number K of inner steps per task.
        first_order: if True, no graph through the inner gradients.
        head: names/patterns of the adapted parameters (default: the parameters of the model's last
            module that has any, e.g. the final nn.Linear).
        batching: "auto", "batched", "vmap", "loop" or "compiled" (see `MetaLearner`).
        second_order: "autograd" or "hvp" (see `MetaLearner`).
    """
    cli_name, paper = "anil", "Raghu et al. 2020"  # fastmaml train --algo anil

    def __init__(self, model: nn.Module, inner_lr: float = 0.01, inner_steps: int = 1, first_order: bool = False,
                 head: Iterable[str] | None = None, batching: str = "auto", *, second_order: str = "autograd") -> None:
        """Build the learner (the arguments: see the class docstring)."""
        super().__init__(model, inner_lr, inner_steps, first_order, _head(model, head), batching,
                         second_order=second_order)
        self.head = list(self.adapt_names)


class BOIL(MAML):
    """BOIL: adapts every parameter except the head, which is frozen in the inner loop and
    meta-learned in the outer loop.

    Args:
        model: the network whose parameters are meta-learned.
        inner_lr: the inner learning rate alpha.
        inner_steps: the number K of inner steps per task.
        first_order: if True, no graph through the inner gradients.
        head: names/patterns of the head's parameters (default: the parameters of the model's last
            module that has any, e.g. the final nn.Linear).
        batching: "auto", "batched", "vmap", "loop" or "compiled" (see `MetaLearner`).
        second_order: "autograd" or "hvp" (see `MetaLearner`).

    Raises:
        ValueError: if the head covers every parameter.
    """
    cli_name, paper = "boil", "Oh et al. 2021"  # fastmaml train --algo boil

    def __init__(self, model: nn.Module, inner_lr: float = 0.01, inner_steps: int = 1, first_order: bool = False,
                 head: Iterable[str] | None = None, batching: str = "auto", *, second_order: str = "autograd") -> None:
        """Build the learner (the arguments: see the class docstring)."""
        frozen = _head(model, head)
        body = [n for n in F.params_of(model) if n not in frozen]
        if not body:
            raise ValueError(f"head {frozen} covers every parameter; BOIL needs a body to adapt")
        super().__init__(model, inner_lr, inner_steps, first_order, body, batching, second_order=second_order)
        self.head = frozen
