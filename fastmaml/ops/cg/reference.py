"""Per-tensor pure PyTorch CG algebra: the oracle the other backends are tested against. Plain on purpose."""

from __future__ import annotations

import torch
from torch import Tensor


def is_available(device: torch.device) -> bool:
    return True


def _opmath(t: Tensor) -> Tensor:
    return t.to(torch.float64 if t.dtype == torch.float64 else torch.float32)


def _coef(c: Tensor, t: Tensor) -> Tensor:
    """A per-task [T] coefficient shaped to broadcast against t [T, ...]."""
    return c.reshape(c.shape[0], *[1] * (t.dim() - 1))


def dot(a: list[Tensor], b: list[Tensor]) -> Tensor:
    T = a[0].shape[0]
    out = torch.zeros(T, dtype=_opmath(a[0]).dtype, device=a[0].device)
    for x, y in zip(a, b):
        out += (_opmath(x) * _opmath(y)).reshape(T, -1).sum(1)
    return out


def matvec_dot_(hp: list[Tensor], p: list[Tensor], c0: float, c1: float) -> Tensor:
    for h, x in zip(hp, p):
        h.copy_(c0 * _opmath(x) + c1 * _opmath(h))
    return dot(p, hp)


def step_(x: list[Tensor], r: list[Tensor], p: list[Tensor], q: list[Tensor], alpha: Tensor) -> Tensor:
    for xi, ri, pi, qi in zip(x, r, p, q):
        a = _coef(alpha, xi)
        xi.copy_(_opmath(xi) + a * _opmath(pi))
        ri.copy_(_opmath(ri) - a * _opmath(qi))
    return dot(r, r)


def direction_(p: list[Tensor], r: list[Tensor], beta: Tensor) -> None:
    for pi, ri in zip(p, r):
        pi.copy_(_opmath(ri) + _coef(beta, pi) * _opmath(pi))
