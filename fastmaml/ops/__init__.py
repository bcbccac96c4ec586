"""The one dispatcher for the fused inner update.

Every inner update in fastmaml, whatever the algorithm, is one call of

    out[i] = gamma[i] * p[i] - alpha * a[i] * g[i]        for every tensor i of the list

in one of three forms (NOTE: [update forms], same names in csrc/include/fastmaml/update.h):
  * "sgd"     lrs=None,  gammas=None:  p - alpha * g                   (MAML, FOMAML, ANIL, ...)
  * "scaled"  lrs=[a],   gammas=None:  p - alpha * a * g               (Meta-SGD, MAML++ LSLR)
  * "forget"  lrs/None,  gammas=[gam]: gam * p - alpha * [a *] g       (L2F)
a[i] and gamma[i] broadcast to p[i] (a per-layer scalar, an elementwise tensor, ...).

Backends ("reference", "foreach", "native", "triton") implement the same two functions,
`update` (out of place, differentiable) and `update_` (in place, no autograd). `reference` is the
oracle the tests check every other backend against.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

BACKENDS = ("reference", "foreach", "native", "triton")
_CHOICES = BACKENDS + ("auto",)

_backend_name = os.environ.get("FASTMAML_BACKEND", "auto")
_warned: set[str] = set()
_auto_cache: dict[tuple[str, str], str] = {}


# Backend families: the fused update (fastmaml.ops.<backend>) and batched CG's vector algebra
# (fastmaml.ops.cg.<backend>) share the backend names, the user's choice and the "auto" rule.
UPDATE = "fastmaml.ops"


def backend_module(name: str, family: str = UPDATE):
    """The module implementing backend `name` of `family` (imported lazily: triton is optional)."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {_CHOICES}, got {name!r}")
    return importlib.import_module(f"{family}.{name}")


def is_available(name: str, device: torch.device | str = "cpu", family: str = UPDATE) -> bool:
    """Whether backend `name` runs on `device` here (each backend actually runs a tiny op)."""
    try:
        return bool(backend_module(name, family).is_available(torch.device(device)))
    except ImportError:
        return False


def set_backend(name: str) -> None:
    """Choose the backend for every update: one of "auto", "reference", "foreach", "native",
    "triton". The environment variable FASTMAML_BACKEND sets the initial choice."""
    global _backend_name
    if name not in _CHOICES:
        raise ValueError(f"set_backend: name must be one of {_CHOICES}, got {name!r}")
    _backend_name = name


def get_backend() -> str:
    """The backend choice in force ("auto" unless set)."""
    if _backend_name not in _CHOICES:
        raise ValueError(f"FASTMAML_BACKEND must be one of {_CHOICES}, got {_backend_name!r}")
    return _backend_name


@contextlib.contextmanager
def use_backend(name: str):
    """Context manager: `with fastmaml.use_backend("reference"): ...`."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def resolve_backend(device: torch.device, family: str = UPDATE, what: str = "the inner update") -> str:
    """The backend that runs `family` on `device`: the chosen one, or for "auto" the fastest usable
    one (native, then triton on CUDA, then foreach)."""
    name = get_backend()
    if name != "auto":
        return name
    key = (family, device.type)
    if key not in _auto_cache:
        order = ("native", "triton", "foreach") if device.type == "cuda" else ("native", "foreach")
        chosen = next(b for b in order if b == "foreach" or is_available(b, device, family))
        if chosen != "native":
            _warn_once(
                f"auto-{family}-{device.type}",
                f"fastmaml: the compiled extension is not usable on {device.type}; {what} falls "
                f"back to the {chosen!r} backend (build it with `make ext`, see `fastmaml info`)",
            )
        _auto_cache[key] = chosen
    return _auto_cache[key]


def _describe(names: Sequence[str] | None, i: int) -> str:
    return f"[{i}] ({names[i]!r})" if names is not None else f"[{i}]"


def check_update_args(fn: str, params, grads, lrs, gammas, alpha, names=None) -> None:
    """Raise a ValueError/TypeError naming the argument and index on any malformed input."""
    for arg, seq in (("params", params), ("grads", grads), ("lrs", lrs), ("gammas", gammas)):
        if seq is not None and (isinstance(seq, Tensor) or not isinstance(seq, Sequence)):
            raise TypeError(f"{fn}: {arg} must be a list of tensors, got {type(seq).__name__}")
    n = len(params)
    for arg, seq in (("grads", grads), ("lrs", lrs), ("gammas", gammas)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{fn}: {arg} has {len(seq)} tensors but params has {n}")
    if isinstance(alpha, Tensor) or not isinstance(alpha, (int, float)):
        raise TypeError(f"{fn}: lr must be a Python number or a list of tensors, got {type(alpha).__name__}")
    if not math.isfinite(alpha):
        raise ValueError(f"{fn}: lr must be finite, got {alpha}")
    for i in range(n):
        p, g = params[i], grads[i]
        where = _describe(names, i)
        if not isinstance(p, Tensor) or not isinstance(g, Tensor):
            bad = "params" if not isinstance(p, Tensor) else "grads"
            raise TypeError(f"{fn}: {bad}{where} must be a Tensor, got {type((p, g)[bad == 'grads']).__name__}")
        if not p.is_floating_point():
            raise TypeError(f"{fn}: params{where} must be floating point, got {p.dtype}")
        if g.shape != p.shape:
            raise ValueError(f"{fn}: grads{where} has shape {list(g.shape)} but params{where} has {list(p.shape)}")
        if g.dtype != p.dtype:
            raise TypeError(f"{fn}: grads{where} has dtype {g.dtype} but params{where} has {p.dtype}")
        if g.device != p.device:
            raise ValueError(f"{fn}: grads{where} is on {g.device} but params{where} is on {p.device}")
        for arg, seq in (("lrs", lrs), ("gammas", gammas)):
            if seq is None:
                continue
            t = seq[i]
            if not isinstance(t, Tensor):
                raise TypeError(f"{fn}: {arg}{where} must be a Tensor, got {type(t).__name__}")
            if t.dtype != p.dtype:
                raise TypeError(f"{fn}: {arg}{where} has dtype {t.dtype} but params{where} has {p.dtype}")
            if t.device != p.device:
                raise ValueError(f"{fn}: {arg}{where} is on {t.device} but params{where} is on {p.device}")
            try:
                shape = torch.broadcast_shapes(t.shape, p.shape)
            except RuntimeError:
                shape = None
            if shape != p.shape:
                raise ValueError(
                    f"{fn}: {arg}{where} has shape {list(t.shape)}, which does not broadcast to "
                    f"params{where} shape {list(p.shape)}"
                )


def _split_lr(lr) -> tuple[list[Tensor] | None, float]:
    if isinstance(lr, (int, float)) and not isinstance(lr, bool):
        return None, float(lr)
    if isinstance(lr, Tensor):
        raise TypeError("lr must be a Python number or a list of tensors (one per param), got a Tensor")
    return list(lr), 1.0


# NOTE: [validation fast path]
# The compiled ops check every list, shape, dtype and device in C++ (csrc/include/fastmaml/
# operands.h), so for the native backend the dispatcher skips the per-tensor Python checks (tens of
# microseconds a call for a small model) and calls the op on the plain lists. If the op raises,
# check_update_args runs on the same input to raise its named, indexed message instead; if the input
# passes it, the op's own error goes on. What C++ cannot see (a non-finite lr, arguments that are not
# lists) is checked here first, cheaply.
_LISTS = (list, tuple)


def _native_fast(params, grads, lrs, gammas, alpha) -> bool:
    return (
        type(params) in _LISTS and type(grads) in _LISTS and len(params) > 0
        and (lrs is None or type(lrs) in _LISTS) and (gammas is None or type(gammas) in _LISTS)
        and isinstance(params[0], Tensor) and math.isfinite(alpha)
        and resolve_backend(params[0].device) == "native"
    )


def _fast_call(fn_name, fn, params, grads, lrs, gammas, alpha, names):
    try:
        return fn(params, grads, lrs, gammas, alpha)
    except (RuntimeError, TypeError, ValueError, IndexError):
        check_update_args(fn_name, params, grads, lrs, gammas, alpha, names)
        raise


def update(params: Sequence[Tensor], grads: Sequence[Tensor], lr, gammas=None, *, names=None) -> list[Tensor]:
    """Differentiable fused update: [gamma *] p - lr * g for every tensor of the list.

    `lr` is a number (one rate for all) or a list of tensors broadcastable to each param
    (Meta-SGD). `gammas`, if given, is a list of forget factors broadcastable to each param (L2F).
    `names` only improves error messages.
    """
    lrs, alpha = _split_lr(lr)
    if _native_fast(params, grads, lrs, gammas, alpha):
        from fastmaml.ops import native

        return _fast_call("inner_update", native.update, params, grads, lrs, gammas, alpha, names)
    check_update_args("inner_update", params, grads, lrs, gammas, alpha, names)
    if len(params) == 0:
        return []
    backend = backend_module(resolve_backend(params[0].device))
    return backend.update(list(params), list(grads), lrs, None if gammas is None else list(gammas), alpha)


def update_(params: Sequence[Tensor], grads: Sequence[Tensor], lr, gammas=None, *, names=None) -> None:
    """In-place, non-differentiable fused update (first order, evaluation, Reptile's outer step)."""
    lrs, alpha = _split_lr(lr)
    if _native_fast(params, grads, lrs, gammas, alpha):
        from fastmaml.ops import native

        _fast_call("inner_update_", native.update_, params, grads, lrs, gammas, alpha, names)
        return
    check_update_args("inner_update_", params, grads, lrs, gammas, alpha, names)
    if len(params) == 0:
        return
    backend = backend_module(resolve_backend(params[0].device))
    with torch.no_grad():
        backend.update_(list(params), list(grads), lrs, None if gammas is None else list(gammas), alpha)
