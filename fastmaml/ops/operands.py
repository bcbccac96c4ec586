"""NOTE: [update operands] The fused update's operands, in this order in every schema (csrc/ops.cpp),
in the C++ checks and kernels (csrc/include/fastmaml/operands.h, update.h) and in the Python rules
(checks.py, _autograd.py, triton.py):

    params  Tensor[]    p_i, the tensors updated
    grads   Tensor[]    g_i, each of p_i's shape, dtype and device
    lrs     Tensor[]?   a_i, each broadcastable to p_i (learned rates: Meta-SGD, MAML++)
    gammas  Tensor[]?   gamma_i, each broadcastable to p_i (forget factors: ALFA)
    alpha   float       one rate for all:  out_i = gamma_i * p_i - alpha * a_i * g_i

A new operand is one entry here (LISTS, and BROADCAST when it broadcasts) and one in the schema.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from torch import Tensor

T = TypeVar("T")

LISTS = ("params", "grads", "lrs", "gammas")
OPTIONAL = frozenset({"lrs", "gammas"})
BROADCAST = frozenset({"lrs", "gammas"})  # the others must have params' shapes


def join(params: Sequence[Tensor], grads: Sequence[Tensor], lrs: Sequence[Tensor] | None,
         gammas: Sequence[Tensor] | None) -> list[Tensor]:
    """The tensor lists as one flat list (the absent optional ones left out)."""
    return [*params, *grads, *(lrs or ()), *(gammas or ())]


def split(n: int, has_lrs: bool, has_gammas: bool, flat: Sequence[T]
          ) -> tuple[list[T], list[T], list[T] | None, list[T] | None]:
    """Inverse of join: (params, grads, lrs or None, gammas or None)."""
    params, grads, rest = list(flat[:n]), list(flat[n : 2 * n]), flat[2 * n :]
    lrs = list(rest[:n]) if has_lrs else None
    gammas = list(rest[n if has_lrs else 0 :][:n]) if has_gammas else None
    return params, grads, lrs, gammas
