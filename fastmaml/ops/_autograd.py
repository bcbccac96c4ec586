"""Fake, autograd and vmap rules of a fused-update op family, shared by the native and triton backends.

A family is the ops `{ns}::fused_update` (out of place) and `{ns}::fused_update_` (in place) with the
schemas of csrc/ops.cpp, and optionally `{ns}::fused_update_backward`, one pass computing all the
gradients. The maths: NOTE: [update forms] in csrc/include/fastmaml/update.h.

The native family's autograd formula is a C++ node (NOTE: [update autograd] in csrc/autograd.cpp).
The Triton family's is here, in Python. Why not torch.library.register_autograd: the autograd.Function
it generates has no setup_context, and torch.func transforms refuse such a Function
(pytorch/pytorch#170834). The Autograd kernel here applies a `_SingleLevelFunction` instead, as
functorch does for its own per-level nodes (and as the upstream fix does): the op then behaves like a
C++ op with an autograd formula, each torch.func.grad level recording its own node as the op is
redispatched level by level. So the op works inside `torch.func.grad`, `vmap`, `vmap(grad(...))`,
`grad(vmap(...))` and under plain autograd; but nested grad levels (grad(grad), jacrev(jacrev),
vmap(grad(grad))) would give wrong gradients through it and forward AD would drop tangents
(measured against reference; the C++ node gets them right, tests/ops/test_update_autograd.py), so
both are refused with an error naming the backends that handle them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import _C, Tensor
from torch._C._functorch import (
    TransformType,
    get_single_level_autograd_function_allowed as _allowed,
    peek_interpreter_stack,
    set_single_level_autograd_function_allowed as _set_allowed,
)
from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters
from torch._ops import OpOverload
from torch.autograd import forward_ad as _forward_ad
from torch.autograd.function import _SingleLevelFunction
from torch.compiler import is_compiling as _is_compiling

from fastmaml.ops import operands

# Libraries holding our kernel registrations: a Library deregisters its kernels when collected.
_libraries: list[torch.library.Library] = []


# Functions of the out-of-place ops, by op (filled by register()).
_functions: dict[OpOverload, type[_SingleLevelFunction]] = {}


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: object) -> None:
    """Saves only what the wanted gradients read: gamma for d p, a for d g, g for d a, p for d gamma
    (NOTE: [update forms]), so that g, the inner gradient, is not kept alive when d a is not wanted.
    a and gamma also go with their own gradients (the fused backward takes them for their shapes)."""
    n, has_lrs, has_gammas, alpha = inputs[1:5]
    flat, need = inputs[5:], ctx.needs_input_grad[5:]
    params, grads, lrs, gammas = operands.split(n, has_lrs, has_gammas, flat)
    need_p, need_g, need_a, need_gam = operands.split(n, has_lrs, has_gammas, need)
    want = (any(need_p), any(need_g), has_lrs and any(need_a or ()), has_gammas and any(need_gam or ()))
    ctx.layout = (n, has_lrs, has_gammas, alpha, want)
    # (the optional lists are None exactly when their has_* flag is False)
    ctx.shapes = ([a.shape for a in lrs or ()] if want[2] else None,
                  [g.shape for g in gammas or ()] if want[3] else None)
    saved: list[Tensor] = []
    if has_gammas and (want[0] or want[3]):
        saved += gammas or ()
    if has_lrs and (want[1] or want[2]):
        saved += lrs or ()
    if want[2]:
        saved += grads
    if want[3]:
        saved += params
    ctx.save_for_backward(*saved)


def _grads(ctx: Any, gos: Sequence[Tensor]) -> tuple[Tensor | None, ...]:
    """d params, d grads, d lrs, d gammas (None where not needed), from
    out = gamma * p - alpha * (a * g), with differentiable torch ops (double backward, torch.func)."""
    n, has_lrs, has_gammas, alpha, want = ctx.layout
    saved = ctx.saved_tensors
    pos = 0

    def take(cond: bool) -> list[Tensor] | None:
        nonlocal pos
        if not cond:
            return None
        pos += n
        return list(saved[pos - n : pos])

    gammas = take(has_gammas and (want[0] or want[3]))
    lrs = take(has_lrs and (want[1] or want[2]))
    grads = take(want[2])
    params = take(want[3])
    # (a list taken is None exactly when its condition is False)
    dp: list[Tensor] | None = None
    dg: list[Tensor] | None = None
    da: list[Tensor] | None = None
    dgam: list[Tensor] | None = None
    if want[0] and has_gammas:
        dp = [gam * go for gam, go in zip(gammas or (), gos)]
    if want[1]:
        dg = [(a * go) * -alpha for a, go in zip(lrs or (), gos)] if has_lrs else [go * -alpha for go in gos]
    if want[2]:
        da = [(g * go) * -alpha for g, go in zip(grads or (), gos)]
    if want[3]:
        dgam = [p * go for p, go in zip(params or (), gos)]
    if want[0] and not has_gammas:
        dp = list(gos)  # d out / d p = 1
    # d lrs and d gammas come with params' shapes: reduce them to the shapes of lrs and gammas.
    lr_shapes, gamma_shapes = ctx.shapes
    if want[2]:
        da = [d if d.shape == s else d.sum_to_size(s) for d, s in zip(da or (), lr_shapes)]
    if want[3]:
        dgam = [d if d.shape == s else d.sum_to_size(s) for d, s in zip(dgam or (), gamma_shapes)]
    need = ctx.needs_input_grad[5:]
    out: list[Tensor | None] = []
    for k, (values, wanted) in enumerate(zip((dp, dg, da, dgam), want)):
        if k == 2 and not has_lrs or k == 3 and not has_gammas:
            continue  # the list was not passed: no entries
        flags = need[len(out) : len(out) + n]
        out += [v if f else None for v, f in zip(values or (), flags)] if wanted else [None] * n
    return tuple(out)


def _function(op: OpOverload) -> type[_SingleLevelFunction]:
    """The autograd node of `op`: a single-level Function (see the module docstring)."""

    class FusedUpdate(_SingleLevelFunction):
        @staticmethod
        def forward(keyset: Any, n: int, has_lrs: bool, has_gammas: bool, alpha: float,
                    *flat: Tensor) -> tuple[Tensor, ...]:
            with _C._AutoDispatchBelowAutograd():
                if keyset is None:  # applied by call(), outside any transform
                    return tuple(op(*operands.split(n, has_lrs, has_gammas, flat), alpha))
                return tuple(op.redispatch(keyset & _C._after_autograd_keyset,
                                           *operands.split(n, has_lrs, has_gammas, flat), alpha))

        setup_context = staticmethod(_setup_context)

        @staticmethod
        def backward(ctx: Any, *grad_outputs: Tensor) -> tuple[Tensor | None, ...]:
            return (None,) * 5 + _grads(ctx, grad_outputs)

    return FusedUpdate


def _apply(function: type[_SingleLevelFunction], keyset: Any, params: Sequence[Tensor], grads: Sequence[Tensor], lrs: Sequence[Tensor] | None, gammas: Sequence[Tensor] | None, alpha: float,
           flat: list[Tensor]) -> list[Tensor]:
    # enable_single_level_autograd_function(), without the cost of a generator context manager
    previous = _allowed()
    _set_allowed(True)
    try:
        # apply: from torch's C base class, which its type stubs leave out
        return list(cast(Any, function).apply(keyset, len(params), lrs is not None, gammas is not None, alpha, *flat))
    finally:
        _set_allowed(previous)


def _autograd_kernel(op: OpOverload, function: type[_SingleLevelFunction], keyset: Any, params: Sequence[Tensor], grads: Sequence[Tensor], lrs: Sequence[Tensor] | None, gammas: Sequence[Tensor] | None, alpha: float
                     ) -> list[Tensor]:
    in_transform = peek_interpreter_stack() is not None
    levels = [i.key() for i in retrieve_all_functorch_interpreters()] if in_transform else []
    if TransformType.Jvp in levels or levels.count(TransformType.Grad) > 1:  # see the docstring
        raise NotImplementedError(
            f"{op.name()}: forward-mode or nested torch.func differentiation (jvp, jacfwd, hessian, "
            "grad(grad), jacrev(jacrev)) would give wrong gradients through this backend's Python "
            "autograd; use the 'native', 'foreach' or 'reference' backend for it")
    flat = operands.join(params, grads, lrs, gammas)
    if _C.is_grad_enabled() and _C._any_requires_grad(*flat):
        return _apply(function, keyset, params, grads, lrs, gammas, alpha, flat)
    with _C._AutoDispatchBelowAutograd():
        return op.redispatch(keyset & _C._after_autograd_keyset, params, grads, lrs, gammas, alpha)


def call(op: OpOverload, params: Sequence[Tensor], grads: Sequence[Tensor], lrs: Sequence[Tensor] | None, gammas: Sequence[Tensor] | None, alpha: float) -> list[Tensor]:
    """op(params, grads, lrs, gammas, alpha) with the least Python in the way: inside a torch.func
    transform, torch.compile or a forward-AD dual level, through the dispatcher (Autograd kernel,
    which refuses tangents it would drop, vmap rule, fake kernel);
    otherwise straight to the device kernel when no gradient is needed, or to the op's Function
    when one is (the Autograd kernel would only redispatch)."""
    if peek_interpreter_stack() is not None or _is_compiling() or _forward_ad._current_level >= 0:
        return op(params, grads, lrs, gammas, alpha)
    if _C.is_grad_enabled():
        flat = operands.join(params, grads, lrs, gammas)
        if _C._any_requires_grad(*flat):
            function = _functions.get(op)
            if function is not None:
                return _apply(function, None, params, grads, lrs, gammas, alpha, flat)
            return op(params, grads, lrs, gammas, alpha)
    with _C._AutoDispatchBelowAutograd():
        return op(params, grads, lrs, gammas, alpha)


def _dim(dims: Sequence[int | None] | None, i: int) -> int | None:
    return None if dims is None else dims[i]


def _to_front(t: Tensor, dim: int | None, size: int, ndim: int) -> Tensor:
    """t with its batch dim first, broadcastable against a batched param of `ndim` logical dims.
    An unbatched t is left as is: it broadcasts over the batch (NOTE: [operand periods])."""
    if dim is None:
        return t
    t = t.movedim(dim, 0)
    return t.reshape(size, *[1] * (ndim - t.dim() + 1), *t.shape[1:])


def _batch(info: Any, in_dims: tuple[Any, ...], params: Sequence[Tensor], grads: Sequence[Tensor], lrs: Sequence[Tensor] | None,
           gammas: Sequence[Tensor] | None
           ) -> tuple[list[Tensor], list[Tensor], list[Tensor] | None, list[Tensor] | None, list[bool]]:
    """The physical operands with the batch first, and which tensors are batched. Unbatched params
    and grads are expanded (a stride-0 view that the kernels read without copying)."""
    size = info.batch_size
    p_dims, g_dims, l_dims, gam_dims = in_dims[:4]
    P: list[Tensor] = []
    G: list[Tensor] = []
    L: list[Tensor] = []
    GAM: list[Tensor] = []
    batched: list[bool] = []
    for i in range(len(params)):
        dims = (p_dims[i], g_dims[i], _dim(l_dims, i), _dim(gam_dims, i))
        batched.append(any(d is not None for d in dims))
        p, g = params[i], grads[i]
        if batched[-1]:
            p = p.movedim(dims[0], 0) if dims[0] is not None else p.expand(size, *p.shape)
            g = g.movedim(dims[1], 0) if dims[1] is not None else g.expand(size, *g.shape)
        P.append(p)
        G.append(g)
        ndim = p.dim() - 1 if batched[-1] else p.dim()
        if lrs is not None:
            L.append(_to_front(lrs[i], dims[2], size, ndim))
        if gammas is not None:
            GAM.append(_to_front(gammas[i], dims[3], size, ndim))
    return P, G, L if lrs is not None else None, GAM if gammas is not None else None, batched


def _vmap_update(op: OpOverload, info: Any, in_dims: tuple[Any, ...], params: Sequence[Tensor], grads: Sequence[Tensor], lrs: Sequence[Tensor] | None, gammas: Sequence[Tensor] | None, alpha: float
                 ) -> tuple[list[Tensor], list[int | None]]:
    P, G, L, GAM, batched = _batch(info, in_dims, params, grads, lrs, gammas)
    return op(P, G, L, GAM, alpha), [0 if b else None for b in batched]


def _vmap_update_(op: OpOverload, info: Any, in_dims: tuple[Any, ...], params: Sequence[Tensor], grads: Sequence[Tensor], lrs: Sequence[Tensor] | None, gammas: Sequence[Tensor] | None, alpha: float
                  ) -> tuple[None, None]:
    for i, d in enumerate(in_dims[0]):
        others = (in_dims[1][i], _dim(in_dims[2], i), _dim(in_dims[3], i))
        if d is None and any(o is not None for o in others):
            raise ValueError(
                f"{op._schema.name}: params[{i}] is not batched but another operand is: an in-place update "
                f"cannot write a batch of results into it"
            )
    P, G, L, GAM, _ = _batch(info, in_dims, params, grads, lrs, gammas)
    op(P, G, L, GAM, alpha)
    return None, None


def _check(fn: str, params: Any, grads: Any, lrs: Any, gammas: Any, alpha: Any) -> None:
    # The fake kernels also run, as the Meta kernels, when a meta tensor is mixed with real ones:
    # they check the input as the device kernels do (NOTE: [validation fast path] in __init__.py).
    from fastmaml.ops.checks import check_update_args

    check_update_args(fn, params, grads, lrs, gammas, alpha)


def _fake_update(params: Sequence[Tensor], grads: Sequence[Tensor], lrs: Sequence[Tensor] | None, gammas: Sequence[Tensor] | None, alpha: float) -> list[Tensor]:
    _check("fused_update", params, grads, lrs, gammas, alpha)
    return [torch.empty_like(p, memory_format=torch.contiguous_format) for p in params]


def _fake_update_(params: Sequence[Tensor], grads: Sequence[Tensor], lrs: Sequence[Tensor] | None, gammas: Sequence[Tensor] | None, alpha: float) -> None:
    _check("fused_update_", params, grads, lrs, gammas, alpha)
    return None


def _fake_backward(grad_outputs: Sequence[Tensor], params: Sequence[Tensor], grads: Sequence[Tensor], lrs: Sequence[Tensor] | None, gammas: Sequence[Tensor] | None, alpha: float,
                   output_mask: Sequence[bool]) -> tuple[list[Tensor], ...]:
    return tuple(_fake_update(params, grads, lrs, gammas, alpha) if m else [] for m in output_mask)


def register(ns: str, compiled: bool) -> None:
    """Register fake and vmap rules for the ops `{ns}::fused_update` and `{ns}::fused_update_`, and
    either the Python autograd formula of `{ns}::fused_update` or, for a `compiled` family whose
    formula is in C++ (csrc/autograd.cpp), the fake of its `{ns}::fused_update_backward`."""
    ops = getattr(torch.ops, ns)
    lib = torch.library.Library(ns, "IMPL")
    _libraries.append(lib)
    torch.library.register_fake(f"{ns}::fused_update", _fake_update, lib=lib)
    torch.library.register_fake(f"{ns}::fused_update_", _fake_update_, lib=lib)
    op = ops.fused_update.default
    if compiled:
        torch.library.register_fake(f"{ns}::fused_update_backward", _fake_backward, lib=lib)
    else:
        _functions[op] = _function(op)
        lib.impl("fused_update", functools.partial(_autograd_kernel, op, _functions[op]), "Autograd", with_keyset=True)
    torch.library.register_vmap(f"{ns}::fused_update", functools.partial(_vmap_update, op), lib=lib)
    torch.library.register_vmap(
        f"{ns}::fused_update_", functools.partial(_vmap_update_, ops.fused_update_.default), lib=lib
    )
