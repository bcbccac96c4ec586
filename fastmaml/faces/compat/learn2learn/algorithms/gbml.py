"""learn2learn.algorithms.GBML: gradient-based meta-learning with a learned update transform."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from fastmaml.faces.compat.learn2learn.optim import DifferentiableSGD, ParameterUpdate
from fastmaml.faces.compat.learn2learn.utils import clone_module


class GBML(nn.Module):
    """Wraps `module`; `adapt(loss)` takes p <- p - lr * T(dloss/dp), where T is the module that
    `transform(p)` built for each parameter (a ParameterUpdate). With adapt_transform=True the
    transform's own parameters also take an SGD step on the next `adapt`'s loss (Alpha-MAML style);
    Meta-SGD is `transform=lambda p: l2l.nn.Scale(p.shape)`. The steps run on fastmaml.ops.update.

    Args:
        module: the model to adapt.
        transform: a callable param -> nn.Module transforming that parameter's gradient (e.g.
            ModuleTransform).
        lr: the inner learning rate.
        adapt_transform: whether the transforms are adapted too.
        first_order: no graph through the inner gradients.
        allow_unused: parameters without a gradient are allowed.
        allow_nograd: parameters with requires_grad=False are skipped.
    """

    module: nn.Module

    def __init__(self, module: nn.Module, transform: Callable[[Tensor], nn.Module | None], lr: float = 1.0,
                 adapt_transform: bool = False, first_order: bool = False, allow_unused: bool = False,
                 allow_nograd: bool = False, **kwargs: Any) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"GBML: module must be an nn.Module, got {type(module).__name__}")
        self.module = module
        self.transform = transform
        self.adapt_transform = adapt_transform
        self.lr = lr
        self.first_order = first_order
        self.allow_unused = allow_unused
        self.allow_nograd = allow_nograd
        update = kwargs.get("compute_update")
        self.compute_update = ParameterUpdate(module.parameters(), transform) if update is None else update
        self.diff_sgd = DifferentiableSGD(lr=lr)
        # whether the last adapt moved the module, so the transform's parameters have a gradient
        self._params_updated = False

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def clone(self, first_order: bool | None = None, allow_unused: bool | None = None,
              allow_nograd: bool | None = None, adapt_transform: bool | None = None) -> GBML:
        """A GBML on shallow clones of the module and of the update transform (gradients flow back
        to both originals)."""
        pick = lambda given, own: own if given is None else given  # noqa: E731
        return GBML(clone_module(self.module), self.transform, lr=self.lr,
                    adapt_transform=pick(adapt_transform, self.adapt_transform),
                    first_order=pick(first_order, self.first_order),
                    allow_unused=pick(allow_unused, self.allow_unused),
                    allow_nograd=pick(allow_nograd, self.allow_nograd),
                    compute_update=clone_module(self.compute_update))

    def adapt(self, loss: Tensor, first_order: bool | None = None, allow_nograd: bool | None = None,
              allow_unused: bool | None = None) -> None:
        first_order = self.first_order if first_order is None else first_order
        allow_unused = self.allow_unused if allow_unused is None else allow_unused
        allow_nograd = self.allow_nograd if allow_nograd is None else allow_nograd
        second_order = not first_order
        if self.adapt_transform and self._params_updated:
            # retain_graph: `loss` is differentiated again below (learn2learn frees the graph here when
            # first_order, and its next grad then fails)
            grads = torch.autograd.grad(loss, list(self.compute_update.parameters()), create_graph=second_order,
                                        retain_graph=True, allow_unused=allow_unused)
            self.diff_sgd(self.compute_update, list(grads))
            self._params_updated = False
        keep = second_order or self.adapt_transform
        updates = self.compute_update(loss, self.module.parameters(), create_graph=keep, retain_graph=keep,
                                      allow_unused=allow_unused, allow_nograd=allow_nograd)
        self.diff_sgd(self.module, updates)
        self._params_updated = True
