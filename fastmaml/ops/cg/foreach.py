"""torch._foreach_* CG algebra: a few multi-tensor ops per call, no compiled code of ours. The
per-task reductions are one sum per tensor (there is no foreach reduction over a dim)."""

from __future__ import annotations

import torch
from torch import Tensor


def is_available(device: torch.device) -> bool:
    return True


def _coefs(c: Tensor, tensors: list[Tensor]) -> list[Tensor]:
    return [c.reshape(c.shape[0], *[1] * (t.dim() - 1)).to(t.dtype) for t in tensors]


def _half(t: Tensor) -> bool:
    return t.dtype in (torch.float16, torch.bfloat16)


def dot(a: list[Tensor], b: list[Tensor]) -> Tensor:
    T = a[0].shape[0]
    acc = torch.float64 if a[0].dtype == torch.float64 else torch.float32
    prods = torch._foreach_mul(a, b) if not _half(a[0]) else torch._foreach_mul([x.float() for x in a], [y.float() for y in b])
    return torch.stack([x.reshape(T, -1).sum(1, dtype=acc) for x in prods]).sum(0)


def matvec_dot_(hp: list[Tensor], p: list[Tensor], c0: float, c1: float) -> Tensor:
    if _half(p[0]):
        from fastmaml.ops.cg import reference

        return reference.matvec_dot_(hp, p, c0, c1)
    torch._foreach_mul_(hp, c1)
    torch._foreach_add_(hp, p, alpha=c0)
    return dot(p, hp)


def step_(x: list[Tensor], r: list[Tensor], p: list[Tensor], q: list[Tensor], alpha: Tensor) -> Tensor:
    if _half(x[0]):
        from fastmaml.ops.cg import reference

        return reference.step_(x, r, p, q, alpha)
    a = _coefs(alpha, x)
    torch._foreach_add_(x, torch._foreach_mul(p, a))
    torch._foreach_sub_(r, torch._foreach_mul(q, a))
    return dot(r, r)


def direction_(p: list[Tensor], r: list[Tensor], beta: Tensor) -> None:
    if _half(p[0]):
        from fastmaml.ops.cg import reference

        reference.direction_(p, r, beta)
        return
    torch._foreach_mul_(p, _coefs(beta, p))
    torch._foreach_add_(p, r)
