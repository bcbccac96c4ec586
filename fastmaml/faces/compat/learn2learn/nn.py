"""learn2learn.nn: the small modules learn2learn's models and examples use (Lambda, Flatten,
Scale, freeze/unfreeze). Anything else is an AttributeError, never torch.nn's namesake."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import torch
from torch import Tensor, nn

__all__ = ["Flatten", "KroneckerLinear", "Lambda", "Scale", "freeze", "unfreeze"]


class Lambda(nn.Module):
    """A module whose forward is `lmb(*args, **kwargs)`.

    Args:
        lmb: the function the forward calls.
    """

    def __init__(self, lmb: Callable[..., Any]) -> None:
        super().__init__()
        if not callable(lmb):
            raise TypeError(f"Lambda: lmb must be callable, got {type(lmb).__name__}")
        self.lmb = lmb

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.lmb(*args, **kwargs)


class Flatten(nn.Module):
    """x.view(batch, -1) (learn2learn's; torch.nn.Flatten flattens from dim 1 the same way but
    also accepts non-contiguous input)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.view(x.size(0), -1)


class Scale(nn.Module):
    """x * alpha with a learnable alpha of `shape`, initialised to `alpha`.

    Args:
        shape: the shape of alpha: an int, a tuple, or None for one scalar.
        alpha: the initial value of every entry.
    """

    def __init__(self, shape: int | Sequence[int] | None = None, alpha: float = 1.0) -> None:
        super().__init__()
        shape = (1,) if shape is None else (shape,) if isinstance(shape, int) else tuple(shape)
        self.alpha = nn.Parameter(torch.full(shape, float(alpha)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.alpha


class KroneckerLinear(nn.Module):
    """y = L x R (+ bias) on inputs whose last two dimensions are (n, m): a linear map of n*m
    inputs with Kronecker-factored weight R^T (x) L, from n*n + m*m parameters (identity at
    initialisation). psd=True uses L^T L and R^T R. A 1-d input of n*m elements is read as the
    column-major [n, m] matrix and returned flattened the same way.

    Args:
        n: the size of the second-to-last input dimension (L is n x n).
        m: the size of the last input dimension (R is m x m).
        bias: add a learned [n, m] bias.
        psd: use L^T L and R^T R (positive semi-definite factors).
        device: where the parameters are created.
    """

    def __init__(self, n: int, m: int, bias: bool = True, psd: bool = False,
                 device: str | torch.device | None = None) -> None:
        super().__init__()
        self.left = nn.Parameter(torch.eye(n, device=device))
        self.right = nn.Parameter(torch.eye(m, device=device))
        self.bias = nn.Parameter(torch.zeros(n, m, device=device)) if bias else None
        self.psd = psd

    def forward(self, x: Tensor) -> Tensor:
        left: Tensor = self.left
        right: Tensor = self.right
        if self.psd:
            left, right = left.t() @ left, right.t() @ right
        n, m = left.shape[0], right.shape[0]
        flat = x.dim() == 1
        if flat:
            if x.numel() != n * m:
                raise ValueError(f"KroneckerLinear: a 1-d input must have n*m = {n * m} elements, got {x.numel()}")
            x = x.reshape(m, n).t()
        elif tuple(x.shape[-2:]) != (n, m):
            raise ValueError(f"KroneckerLinear: the last two dimensions must be (n, m) = ({n}, {m}), got "
                             f"{tuple(x.shape[-2:])}")
        y = left @ x @ right
        if self.bias is not None:
            y = y + self.bias
        return y.t().flatten() if flat else y


def freeze(module: nn.Module) -> nn.Module:
    """Detach every parameter of `module` and stop it requiring grad (in place).

    Args:
        module: the module to freeze; returned.
    """
    for p in module.parameters():
        p.detach_()
        p.requires_grad = False
    return module


def unfreeze(module: nn.Module) -> nn.Module:
    """Make every parameter of `module` require grad again (in place).

    Args:
        module: the module to unfreeze; returned.
    """
    for p in module.parameters():
        p.requires_grad = True
    return module


def __getattr__(name: str) -> NoReturn:
    raise AttributeError(f"fastmaml.compat.learn2learn.nn has no {name!r}: it provides {', '.join(__all__)}; "
                         "torch.nn's modules are in torch.nn, learn2learn's others (KroneckerRNN, MetaModule, "
                         "PrototypicalClassifier, ...) in learn2learn.nn")
