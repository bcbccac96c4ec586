"""learn2learn.optim.LearnableOptimizer."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from fastmaml.faces.compat._module import FastSlots
from fastmaml.faces.compat.learn2learn.utils import update_module


class LearnableOptimizer(nn.Module):
    """An optimizer whose update is learned: `step()` sets every parameter p of `model` with a
    gradient to p - lr * T_p(p.grad), where T_p = transform(p) is a module of this optimizer. The
    new parameters keep their graph to the transforms (and only to them: p and its gradient are
    detached), so the next loss's backward gives the transforms their hypergradient while an outer
    optimizer over `self.parameters()` trains them. The step is one fastmaml.ops.update call.

    Args:
        model: the model whose parameters `step()` updates (not a submodule of the optimizer).
        transform: a callable param -> nn.Module, the learned transform T_p of that parameter's
            gradient (e.g. ModuleTransform).
        lr: the step size.
    """

    def __init__(self, model: nn.Module, transform: Callable[[Tensor], nn.Module], lr: float = 1.0) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"LearnableOptimizer: model must be an nn.Module, got {type(model).__name__}")
        self.info = {"model": model}  # not a submodule: the model's parameters are not the optimizer's
        self.transforms = nn.ModuleList([transform(p) for p in model.parameters()])
        self.lr = lr

    def step(self, closure: Callable[[], object] | None = None) -> None:
        """p <- p - lr * T_p(p.grad) for every parameter of the model with a gradient.

        Args:
            closure: accepted for torch.optim's signature, unused.
        """
        model = self.info["model"]
        slots = FastSlots.of(model)
        params = slots.current()
        if len(params) != len(self.transforms):
            raise ValueError(f"LearnableOptimizer.step: the model has {len(params)} parameters but the optimizer "
                             f"was built for {len(self.transforms)}")
        updates = [None if p.grad is None else -self.lr * t(p.grad.detach()) for p, t in zip(params, self.transforms)]
        slots.assign([p.detach() for p in params])  # cut the graph of the previous steps
        update_module(model, updates)
        for p in slots.current():
            if p.requires_grad:
                p.retain_grad()

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Zero the gradients of the model's parameters (the transforms' are the outer optimizer's).

        Args:
            set_to_none: set them to None instead of zeros.
        """
        for p in self.info["model"].parameters():
            if p.grad is not None:
                p.grad = None if set_to_none else torch.zeros_like(p)
