"""The moment forms in plain per-tensor PyTorch: the oracle of the fused op (NOTE: [moment forms]
in csrc/include/fastmaml/update.h, the same expressions in the same order). Kept plain on purpose."""

from __future__ import annotations

import torch
from torch import Tensor

from fastmaml.ops import reference as update_reference
from fastmaml.ops.moments import Form, Outputs


def is_available(device: torch.device) -> bool:
    """Always: plain torch ops."""
    return True


def _sqrt(x: Tensor) -> Tensor:
    """sqrt with the derivative 0 at 0 (a parameter whose gradient is exactly 0 throughout, e.g.
    a conv bias before batch norm: higher masks it the same way), the same values elsewhere."""
    zero = x == 0
    return torch.where(zero, 0.0, torch.where(zero, 1.0, x).sqrt())


def moments(params: list[Tensor], grads: list[Tensor], lrs: list[Tensor] | None, m: list[Tensor] | None,
            v: list[Tensor] | None, b: list[Tensor] | None, alpha: float, form: Form, direction: bool) -> Outputs:
    """(p' or d, m', v', b') as NOTE: [moment forms] (see fastmaml.ops.moments.moments)."""
    d: list[Tensor] = []
    M: list[Tensor] = []
    V: list[Tensor] = []
    B: list[Tensor] = []
    for i in range(len(grads)):
        g = grads[i] + form.wd * params[i] if form.wd else grads[i]
        mi = None if m is None else form.b1 * m[i] + form.c1 * g
        vi = None if v is None else form.b2 * v[i] + form.c2 * (g * g)
        q = g
        if form.adam:
            assert mi is not None  # checked by fastmaml.ops.moments: the adam form needs m
            q = form.s1 * mi
        if vi is not None:
            w = form.s2 * vi
            if form.centered:
                assert mi is not None
                w = w - mi * mi
            q = q / (_sqrt(w + form.eps_in) + form.eps)
        if b is not None:
            bi = form.mu * b[i] + form.c * q
            B.append(bi)
            q = q + form.mu * bi if form.nesterov else bi
        d.append(q)
        M += [] if mi is None else [mi]
        V += [] if vi is None else [vi]
    states = (None if m is None else M, None if v is None else V, None if b is None else B)
    if direction:
        return (d, *states)
    keep, dd = form.gamma(alpha, lrs is not None)
    gammas: list[Tensor] | list[float] | None = None
    if dd:
        gammas = [keep - a * dd for a in lrs or []]
    elif keep != 1:
        gammas = [keep] * len(params)
    return (update_reference.update(params, d, lrs, gammas, alpha), *states)
