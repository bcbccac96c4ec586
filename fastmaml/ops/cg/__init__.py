"""The fused vector algebra of the batched conjugate gradient (fastmaml/secondorder/cg.py), one dispatcher
over the same backends as the fused update ("reference", "foreach", "native", "triton").

Vectors are lists of tensors with a leading task dimension T (the parameters of T tasks); every
reduction is per task. NOTE: [cg ops] (same names in csrc/ops.cpp and csrc/cpu/cg.cpp):

  dot(a, b)                        -> s[t] = sum_i <a[i][t], b[i][t]>
  matvec_dot_(hp, p, c0, c1)       hp[i] <- q[i] = c0 * p[i] + c1 * hp[i];   returns <p, q> per task
  step_(x, r, p, q, alpha)         x[i] += alpha[t] p[i];  r[i] -= alpha[t] q[i];  returns <r, r> per task
  direction_(p, r, beta)           p[i] <- r[i] + beta[t] p[i]

The per-task results and `alpha`/`beta` are [T] tensors of the opmath type (float32 for the 16-bit
types and float32, float64 for float64). None of these ops is differentiable: CG runs on
detached tensors inside hand-written backward passes.

The backend is the one choice of every family (ops/dispatch.py: fastmaml.set_backend /
FASTMAML_BACKEND); "auto" takes native where its CG ops run, then triton on CUDA, then foreach.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

import torch
from torch import Tensor

from fastmaml.ops.dispatch import BACKENDS, Family

CG = Family.of_package("batched CG", __name__, BACKENDS,
                       auto={"cpu": ("native", "foreach"), "cuda": ("native", "triton", "foreach")})


def backend_module(name: str) -> ModuleType:
    """The module of CG backend `name`."""
    return CG.load(name)


def is_available(name: str, device: torch.device | str = "cpu") -> bool:
    """Whether the CG ops of backend `name` run on `device` (each backend runs a tiny dot)."""
    return CG.is_available(name, device)


def resolve_backend(device: torch.device) -> str:
    """The backend that runs the CG ops on `device` under the current choice."""
    return CG.resolve(device)


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """The type of the per-task reductions and coefficients for vectors of `dtype`."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_vectors(fn: str, lists: dict[str, Sequence[Tensor]], coefs: dict[str, Tensor] | None = None) -> int:
    """The common task count T; a ValueError/TypeError naming the list and index otherwise."""
    names = list(lists)
    first = lists[names[0]]
    for arg, seq in lists.items():
        if isinstance(seq, Tensor) or not isinstance(seq, Sequence):
            raise TypeError(f"{fn}: {arg} must be a list of tensors, got {type(seq).__name__}")
        if len(seq) != len(first):
            raise ValueError(f"{fn}: {arg} has {len(seq)} tensors but {names[0]} has {len(first)}")
    if not first:
        raise ValueError(f"{fn}: {names[0]} is empty; a vector needs at least one tensor")
    ref = first[0]
    if not isinstance(ref, Tensor) or ref.dim() == 0:
        raise ValueError(f"{fn}: {names[0]}[0] must be a tensor with a leading task dimension")
    T = ref.shape[0]
    for arg, seq in lists.items():
        for i, t in enumerate(seq):
            if not isinstance(t, Tensor):
                raise TypeError(f"{fn}: {arg}[{i}] must be a Tensor, got {type(t).__name__}")
            if not t.is_floating_point():
                raise TypeError(f"{fn}: {arg}[{i}] must be floating point, got {t.dtype}")
            if t.dtype != ref.dtype:
                raise TypeError(f"{fn}: {arg}[{i}] has dtype {t.dtype} but {names[0]}[0] has {ref.dtype}")
            if t.device != ref.device:
                raise ValueError(f"{fn}: {arg}[{i}] is on {t.device} but {names[0]}[0] is on {ref.device}")
            shape = first[i].shape
            if t.shape != shape:
                raise ValueError(f"{fn}: {arg}[{i}] has shape {list(t.shape)} but {names[0]}[{i}] has {list(shape)}")
            if t.dim() == 0 or t.shape[0] != T:
                raise ValueError(f"{fn}: {arg}[{i}] has shape {list(t.shape)}; every tensor needs the leading task "
                                 f"dimension {T}")
    for arg, c in (coefs or {}).items():
        if not isinstance(c, Tensor):
            raise TypeError(f"{fn}: {arg} must be a Tensor of shape [{T}], got {type(c).__name__}")
        if c.shape != (T,) or c.dtype != opmath_dtype(ref.dtype) or c.device != ref.device:
            raise ValueError(f"{fn}: {arg} must be a [{T}] {opmath_dtype(ref.dtype)} tensor on {ref.device}, got "
                             f"{list(c.shape)} {c.dtype} on {c.device}")
    return T


def _backend(t: Tensor) -> ModuleType:
    return CG.backend(t.device)


def dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """Per-task dot product sum_i <a[i][t], b[i][t]>, shape [T]."""
    check_vectors("cg.dot", {"a": a, "b": b})
    with torch.no_grad():
        return _backend(a[0]).dot(list(a), list(b))


def matvec_dot_(hp: Sequence[Tensor], p: Sequence[Tensor], c0: float, c1: float) -> Tensor:
    """hp <- c0 * p + c1 * hp (in place); returns <p, hp> per task."""
    check_vectors("cg.matvec_dot_", {"hp": hp, "p": p})
    with torch.no_grad():
        return _backend(p[0]).matvec_dot_(list(hp), list(p), float(c0), float(c1))


def step_(x: Sequence[Tensor], r: Sequence[Tensor], p: Sequence[Tensor], q: Sequence[Tensor], alpha: Tensor) -> Tensor:
    """x += alpha p; r -= alpha q (in place, alpha per task); returns <r, r> per task."""
    check_vectors("cg.step_", {"x": x, "r": r, "p": p, "q": q}, {"alpha": alpha})
    with torch.no_grad():
        return _backend(x[0]).step_(list(x), list(r), list(p), list(q), alpha)


def direction_(p: Sequence[Tensor], r: Sequence[Tensor], beta: Tensor) -> None:
    """p <- r + beta p (in place, beta per task)."""
    check_vectors("cg.direction_", {"p": p, "r": r}, {"beta": beta})
    with torch.no_grad():
        _backend(p[0]).direction_(list(p), list(r), beta)
