"""CAVIA (Zintgraf et al., 2019): fast context adaptation via meta-learning.

    c_0 = 0;   c_{k+1} = c_k - alpha grad_c L_support(theta, c_k)       (only c is adapted)
    theta <- theta - beta grad_theta sum_tasks L_query(theta, c_K)
The context vector c (`num_context` numbers, zero at the start of every task) is concatenated
to the model's input (default) or to the input of a named submodule; the network theta is shared
across tasks and meta-learned (through the context's inner steps, second order by default).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fastmaml import checks, functional as F
from fastmaml.algorithms.base import MetaLearner
from fastmaml.functional import Params

CONTEXT = "cavia.context"


def _concat(x: Tensor, context: Tensor) -> Tensor:
    """Append the context to each example's features: the last axis of [N, F] (or [..., F]) inputs,
    the channel axis of [N, C, ...] image inputs (constant over space)."""
    if x.dim() <= 2:
        return torch.cat([x, context.expand(*x.shape[:-1], context.shape[-1])], -1)
    shape = (x.shape[0], context.shape[-1]) + tuple(x.shape[2:])
    return torch.cat([x, context.reshape(1, -1, *([1] * (x.dim() - 2))).expand(shape)], 1)


class CAVIA(MetaLearner):
    """CAVIA: only a context vector, concatenated to an input, is adapted; the network is shared.

    The context is the params-dict entry "cavia.context".

    Args:
        model: the network; it must accept its input with `num_context` extra features (on its
            input, or on the input of submodule `context_at`, e.g. an nn.Linear whose in_features
            counts them).
        num_context: the context's size.
        inner_lr: the inner learning rate of the context.
        inner_steps: the number of inner steps per task.
        first_order: if True, no graph through the inner gradients.
        context_at: the submodule whose input gets the context; None: the model's input.
        batching: "auto", "vmap", "loop" or "compiled" (see `MetaLearner`).

    Raises:
        ValueError: if `context_at` names no submodule or `num_context` < 1.
    """
    cli_name, paper = "cavia", "Zintgraf et al. 2019"  # fastmaml train --algo cavia

    def __init__(self, model: nn.Module, num_context: int = 4, inner_lr: float = 1.0, inner_steps: int = 1,
                 first_order: bool = False, context_at: str | None = None, batching: str = "auto") -> None:
        """Build the learner (the arguments: see the class docstring)."""
        super().__init__(model, inner_lr, inner_steps, first_order, None, batching)
        self.num_context = checks.check_int(num_context, "num_context", 1)
        if CONTEXT in self.adapt_names:
            raise ValueError(f"model already has a parameter named {CONTEXT!r}")
        self.adapt_names = [CONTEXT]
        self.context_at = context_at
        self._context: Tensor | None = None
        if context_at is not None:
            try:
                target = model.get_submodule(context_at)
            except AttributeError:
                raise ValueError(f"context_at: model has no submodule {context_at!r}") from None
            target.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        context = self._context
        if context is None:  # the model called directly: a zero context
            p = next(iter(F.params_of(self.module).values()))
            context = torch.zeros(self.num_context, dtype=p.dtype, device=p.device)
        return (_concat(args[0], context),) + tuple(args[1:])

    def params(self) -> Params:
        """The model's parameters and a zero context (requires grad), the start of every task."""
        params = F.params_of(self.module)
        p = next(iter(params.values()))
        params[CONTEXT] = torch.zeros(self.num_context, dtype=p.dtype, device=p.device, requires_grad=True)
        return params

    def task_forward(self, params: Params, x: Tensor, buffers: Params | None, step: int | None) -> Tensor:
        """The model's output with the context of `params` concatenated (see the class docstring)."""
        params = dict(params)
        context = params.pop(CONTEXT)
        if self.context_at is None:
            return F.functional_forward(self.module, params, _concat(x, context), buffers=buffers)
        self._context = context
        try:
            return F.functional_forward(self.module, params, x, buffers=buffers)
        finally:
            self._context = None
