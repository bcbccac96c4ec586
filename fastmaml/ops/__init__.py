"""The fused inner update, through the one dispatcher (ops/dispatch.py).

Every inner update in fastmaml, whatever the algorithm, is one call of

    out[i] = gamma[i] * p[i] - alpha * a[i] * g[i]        for every tensor i of the list

in one of three forms (NOTE: [update forms], same names in csrc/include/fastmaml/update.h)::

  * "sgd"     lrs=None,  gammas=None:  p - alpha * g                   (MAML, FOMAML, ANIL, ...)
  * "scaled"  lrs=[a],   gammas=None:  p - alpha * a * g               (Meta-SGD, MAML++ LSLR)
  * "forget"  lrs/None,  gammas=[gam]: gam * p - alpha * [a *] g       (ALFA)

a[i] and gamma[i] broadcast to p[i] (a per-layer scalar, an elementwise tensor, ...); the operands:
NOTE: [update operands] in ops/operands.py.

Backends ("reference", "foreach", "native", "triton") implement the same two functions,
`update` (out of place, differentiable) and `update_` (in place, no autograd). `reference` is the
oracle the tests check every other backend against. The other families: ops/cg (batched CG's
vector algebra) and ops/chain (the Linear/ReLU chain's support step and query loss).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, cast

import torch
from torch import Tensor

from fastmaml.ops.checks import check_update_args
from fastmaml.ops.dispatch import BACKENDS, CHOICES, Family, get_backend, set_backend, use_backend

UPDATE = Family.of_package("update", __name__, BACKENDS,
                           auto={"cpu": ("native", "foreach"), "cuda": ("native", "triton", "foreach")})


def backend_module(name: str) -> ModuleType:
    """The module of the update's backend `name`.

    Args:
        name: a backend of `BACKENDS`.
    """
    return UPDATE.load(name)


def is_available(name: str, device: torch.device | str = "cpu") -> bool:
    """Whether the update's backend `name` runs on `device` here (each backend runs a tiny op).

    Args:
        name: a backend of `BACKENDS`.
        device: the device to try.
    """
    return UPDATE.is_available(name, device)


def resolve_backend(device: torch.device) -> str:
    """The backend that runs the update on `device` now.

    Args:
        device: the parameters' device.
    """
    return UPDATE.resolve(device)


def _split_lr(lr: float | Sequence[Tensor]) -> tuple[list[Tensor] | None, float]:
    if isinstance(lr, (int, float)) and not isinstance(lr, bool):
        return None, float(lr)
    if isinstance(lr, Tensor):
        raise TypeError("lr must be a Python number or a list of tensors (one per param), got a Tensor")
    return list(cast("Sequence[Tensor]", lr)), 1.0


# NOTE: [validation fast path]
# The compiled ops check every list, shape, dtype and device in C++ (csrc/include/fastmaml/
# operands.h), so for the native backend the dispatcher skips the per-tensor Python checks (tens of
# microseconds a call for a small model) and calls the op on the plain lists. If the op raises,
# check_update_args runs on the same input to raise its named, indexed message instead; if the input
# passes it, the op's own error goes on. What C++ cannot see (a non-finite lr, arguments that are not
# lists) is checked here first, cheaply.
_LISTS = (list, tuple)


def _native_fast(params: Sequence[Tensor], grads: Sequence[Tensor], lrs: Sequence[Tensor] | None,
                 gammas: Sequence[Tensor] | None, alpha: float) -> bool:
    return (
        type(params) in _LISTS and type(grads) in _LISTS and len(params) > 0
        and (lrs is None or type(lrs) in _LISTS) and (gammas is None or type(gammas) in _LISTS)
        and isinstance(params[0], Tensor) and math.isfinite(alpha)
        and resolve_backend(params[0].device) == "native"
    )


def _fast_call(fn_name: str, fn: Callable[..., Any], params: Sequence[Tensor], grads: Sequence[Tensor],
               lrs: Sequence[Tensor] | None, gammas: Sequence[Tensor] | None, alpha: float,
               names: Sequence[str] | None) -> Any:
    try:
        return fn(params, grads, lrs, gammas, alpha)
    except (RuntimeError, TypeError, ValueError, IndexError):
        check_update_args(fn_name, params, grads, lrs, gammas, alpha, names)
        raise


def update(params: Sequence[Tensor], grads: Sequence[Tensor], lr: float | Sequence[Tensor],
           gammas: Sequence[Tensor] | None = None, *, names: Sequence[str] | None = None) -> list[Tensor]:
    """Differentiable fused update: `[gamma *] p - lr * g` for every tensor of the list.

    Args:
        params: the tensors p[i].
        grads: their gradients g[i], same shapes.
        lr: a number (one rate for all) or a list of tensors a[i] broadcastable to each param (Meta-SGD).
        gammas: a list of forget factors broadcastable to each param (ALFA), or None.
        names: the params' names, only for error messages.

    Returns:
        The updated tensors, differentiable w.r.t. params, grads, lr and gammas.
    """
    lrs, alpha = _split_lr(lr)
    if _native_fast(params, grads, lrs, gammas, alpha):
        return _fast_call("inner_update", UPDATE.load("native").update, params, grads, lrs, gammas, alpha, names)
    check_update_args("inner_update", params, grads, lrs, gammas, alpha, names)
    if len(params) == 0:
        return []
    backend = UPDATE.backend(params[0].device)
    return backend.update(list(params), list(grads), lrs, None if gammas is None else list(gammas), alpha)


def update_(params: Sequence[Tensor], grads: Sequence[Tensor], lr: float | Sequence[Tensor],
            gammas: Sequence[Tensor] | None = None, *, names: Sequence[str] | None = None) -> None:
    """In-place, non-differentiable fused update (first order, evaluation, Reptile's outer step).

    Args:
        params: the tensors p[i].
        grads: their gradients g[i], same shapes.
        lr: a number (one rate for all) or a list of tensors a[i] broadcastable to each param (Meta-SGD).
        gammas: a list of forget factors broadcastable to each param (ALFA), or None.
        names: the params' names, only for error messages.
    """
    lrs, alpha = _split_lr(lr)
    if _native_fast(params, grads, lrs, gammas, alpha):
        _fast_call("inner_update_", UPDATE.load("native").update_, params, grads, lrs, gammas, alpha, names)
        return
    check_update_args("inner_update_", params, grads, lrs, gammas, alpha, names)
    if len(params) == 0:
        return
    backend = UPDATE.backend(params[0].device)
    with torch.no_grad():
        backend.update_(list(params), list(grads), lrs, None if gammas is None else list(gammas), alpha)


__all__ = ["BACKENDS", "CHOICES", "UPDATE", "backend_module", "check_update_args", "get_backend", "is_available",
           "resolve_backend", "set_backend", "update", "update_", "use_backend"]
