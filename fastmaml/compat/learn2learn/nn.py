"""learn2learn.nn: the small modules learn2learn's models and examples use (Lambda, Flatten,
Scale, freeze/unfreeze). Anything else is an AttributeError, never torch.nn's namesake."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["Flatten", "Lambda", "Scale", "freeze", "unfreeze"]


class Lambda(nn.Module):
    """A module whose forward is `lmb(*args, **kwargs)`."""

    def __init__(self, lmb: Callable):
        super().__init__()
        if not callable(lmb):
            raise TypeError(f"Lambda: lmb must be callable, got {type(lmb).__name__}")
        self.lmb = lmb

    def forward(self, *args, **kwargs):
        return self.lmb(*args, **kwargs)


class Flatten(nn.Module):
    """x.view(batch, -1) (learn2learn's; torch.nn.Flatten flattens from dim 1 the same way but
    also accepts non-contiguous input)."""

    def forward(self, x):
        return x.view(x.size(0), -1)


class Scale(nn.Module):
    """x * alpha with a learnable alpha of `shape` (an int, a tuple, or None for one scalar),
    initialised to `alpha`."""

    def __init__(self, shape=None, alpha: float = 1.0):
        super().__init__()
        shape = (1,) if shape is None else (shape,) if isinstance(shape, int) else tuple(shape)
        self.alpha = nn.Parameter(torch.full(shape, float(alpha)))

    def forward(self, x):
        return x * self.alpha


def freeze(module: nn.Module) -> nn.Module:
    """Detach every parameter of `module` and stop it requiring grad (in place)."""
    for p in module.parameters():
        p.detach_()
        p.requires_grad = False
    return module


def unfreeze(module: nn.Module) -> nn.Module:
    """Make every parameter of `module` require grad again (in place)."""
    for p in module.parameters():
        p.requires_grad = True
    return module


def __getattr__(name: str):
    raise AttributeError(f"fastmaml.compat.learn2learn.nn has no {name!r}: it provides {', '.join(__all__)}; "
                         "torch.nn's modules are in torch.nn, learn2learn's others (KroneckerLinear, MetaModule, "
                         "PrototypicalClassifier, ...) in learn2learn.nn")
