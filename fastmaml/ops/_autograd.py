"""Fake, autograd and vmap rules of a fused-update op family, shared by the native and triton backends.

A family is the ops `{ns}::fused_update` (out of place) and `{ns}::fused_update_` (in place) with the
schemas of csrc/ops.cpp, and optionally `{ns}::fused_update_backward`, one pass computing all the
gradients. The maths: NOTE: [update forms] in csrc/include/fastmaml/update.h.

Why not torch.library.register_autograd: the autograd.Function it generates has no setup_context,
and torch.func transforms refuse such a Function (pytorch/pytorch#170834). The Autograd kernel here
applies a `_SingleLevelFunction` instead, as functorch does for its own per-level nodes (and as the
upstream fix does): the op then behaves like a C++ op with an autograd formula, each torch.func.grad
level recording its own node as the op is redispatched level by level. So the op works inside
`torch.func.grad`, `vmap`, `vmap(grad(...))`, under plain autograd, and in any nesting of them.
"""

from __future__ import annotations

import functools

import torch
from torch import _C, Tensor
from torch._C._functorch import peek_interpreter_stack
from torch._functorch.utils import enable_single_level_autograd_function
from torch.autograd.function import _SingleLevelFunction

# Libraries holding our kernel registrations: a Library deregisters its kernels when collected.
_libraries: list[torch.library.Library] = []


def _join(params, grads, lrs, gammas) -> list[Tensor]:
    return [*params, *grads, *(lrs or ()), *(gammas or ())]


def _split(n: int, has_lrs: bool, has_gammas: bool, flat):
    """Inverse of _join: (params, grads, lrs or None, gammas or None)."""
    params, grads, rest = list(flat[:n]), list(flat[n : 2 * n]), flat[2 * n :]
    lrs = list(rest[:n]) if has_lrs else None
    gammas = list(rest[n if has_lrs else 0 :][:n]) if has_gammas else None
    return params, grads, lrs, gammas


def _grads(ctx, grad_outputs, fused_backward):
    """d params, d grads, d lrs, d gammas (None where not needed), from
    out = gamma * p - alpha * (a * g)."""
    n, has_lrs, has_gammas, alpha = ctx.layout
    params, grads, lrs, gammas = _split(n, has_lrs, has_gammas, ctx.saved_tensors)
    need = _split(n, has_lrs, has_gammas, ctx.needs_input_grad[5:])
    want = [any(x) if x is not None else False for x in need]
    gos = list(grad_outputs)
    if fused_backward is not None and not torch.is_grad_enabled() and peek_interpreter_stack() is None:
        # One pass over memory for all the gradients wanted.
        mask = [want[0] and has_gammas, want[1], want[2], want[3]]
        dp, dg, da, dgam = fused_backward(gos, params, grads, lrs, gammas, alpha, mask)
    else:
        # Differentiable torch ops: double backward (create_graph=True) and torch.func transforms.
        dp = [gam * go for gam, go in zip(gammas, gos)] if want[0] and has_gammas else None
        dg = None
        if want[1]:
            dg = [(a * go) * -alpha for a, go in zip(lrs, gos)] if has_lrs else [go * -alpha for go in gos]
        da = [(g * go) * -alpha for g, go in zip(grads, gos)] if want[2] else None
        dgam = [p * go for p, go in zip(params, gos)] if want[3] else None
    if not has_gammas:
        dp = gos  # d out / d p = 1
    # d lrs and d gammas come with params' shapes: reduce them to the shapes of lrs and gammas.
    if want[2]:
        da = [d.sum_to_size(a.shape) for d, a in zip(da, lrs)]
    if want[3]:
        dgam = [d.sum_to_size(gam.shape) for d, gam in zip(dgam, gammas)]
    out = []
    for values, needed, wanted in zip((dp, dg, da, dgam), need, want):
        if needed is not None:  # None: the list (lrs or gammas) was not passed
            out += [v if k else None for v, k in zip(values, needed)] if wanted else [None] * n
    return tuple(out)


def _function(op, fused_backward):
    """The autograd node of `op`: a single-level Function (see the module docstring)."""

    class FusedUpdate(_SingleLevelFunction):
        @staticmethod
        def forward(keyset, n, has_lrs, has_gammas, alpha, *flat):
            with _C._AutoDispatchBelowAutograd():
                return tuple(op.redispatch(keyset & _C._after_autograd_keyset,
                                           *_split(n, has_lrs, has_gammas, flat), alpha))

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.layout = inputs[1:5]
            ctx.save_for_backward(*inputs[5:])

        @staticmethod
        def backward(ctx, *grad_outputs):
            return (None,) * 5 + _grads(ctx, grad_outputs, fused_backward)

    return FusedUpdate


def _autograd_kernel(op, function, keyset, params, grads, lrs, gammas, alpha):
    flat = _join(params, grads, lrs, gammas)
    if _C.is_grad_enabled() and _C._any_requires_grad(*flat):
        with enable_single_level_autograd_function():
            out = function.apply(keyset, len(params), lrs is not None, gammas is not None, alpha, *flat)
        return list(out)
    with _C._AutoDispatchBelowAutograd():
        return op.redispatch(keyset & _C._after_autograd_keyset, params, grads, lrs, gammas, alpha)


def call(op, params, grads, lrs, gammas, alpha) -> list[Tensor]:
    """op(params, grads, lrs, gammas, alpha), skipping the (Python) Autograd kernel when no
    gradient is needed and no torch.func transform is active: that kernel would only redispatch."""
    if peek_interpreter_stack() is None and not (
        _C.is_grad_enabled() and _C._any_requires_grad(*_join(params, grads, lrs, gammas))
    ):
        with _C._AutoDispatchBelowAutograd():
            return op(params, grads, lrs, gammas, alpha)
    return op(params, grads, lrs, gammas, alpha)


def _dim(dims, i):
    return None if dims is None else dims[i]


def _to_front(t: Tensor, dim, size: int, ndim: int) -> Tensor:
    """t with its batch dim first, broadcastable against a batched param of `ndim` logical dims.
    An unbatched t is left as is: it broadcasts over the batch (NOTE: [operand periods])."""
    if dim is None:
        return t
    t = t.movedim(dim, 0)
    return t.reshape(size, *[1] * (ndim - t.dim() + 1), *t.shape[1:])


def _batch(info, in_dims, params, grads, lrs, gammas):
    """The physical operands with the batch first, and which tensors are batched. Unbatched params
    and grads are expanded (a stride-0 view that the kernels read without copying)."""
    size = info.batch_size
    p_dims, g_dims, l_dims, gam_dims = in_dims[:4]
    P, G, L, GAM, batched = [], [], [], [], []
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


def _vmap_update(op, info, in_dims, params, grads, lrs, gammas, alpha):
    P, G, L, GAM, batched = _batch(info, in_dims, params, grads, lrs, gammas)
    return op(P, G, L, GAM, alpha), [0 if b else None for b in batched]


def _vmap_update_(op, info, in_dims, params, grads, lrs, gammas, alpha):
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


def _fake_update(params, grads, lrs, gammas, alpha):
    return [torch.empty_like(p, memory_format=torch.contiguous_format) for p in params]


def _fake_update_(params, grads, lrs, gammas, alpha):
    return None


def _fake_backward(grad_outputs, params, grads, lrs, gammas, alpha, output_mask):
    return tuple(_fake_update(params, grads, lrs, gammas, alpha) if m else [] for m in output_mask)


def register(ns: str, fused_backward: bool) -> None:
    """Register fake, autograd and vmap rules for the ops `{ns}::fused_update` and
    `{ns}::fused_update_` (and the fake of `{ns}::fused_update_backward` if `fused_backward`)."""
    ops = getattr(torch.ops, ns)
    lib = torch.library.Library(ns, "IMPL")
    _libraries.append(lib)
    torch.library.register_fake(f"{ns}::fused_update", _fake_update, lib=lib)
    torch.library.register_fake(f"{ns}::fused_update_", _fake_update_, lib=lib)
    backward = None
    if fused_backward:
        torch.library.register_fake(f"{ns}::fused_update_backward", _fake_backward, lib=lib)
        backward = ops.fused_update_backward.default
    op = ops.fused_update.default
    kernel = functools.partial(_autograd_kernel, op, _function(op, backward))
    lib.impl("fused_update", kernel, "Autograd", with_keyset=True)
    torch.library.register_vmap(f"{ns}::fused_update", functools.partial(_vmap_update, op), lib=lib)
    torch.library.register_vmap(
        f"{ns}::fused_update_", functools.partial(_vmap_update_, ops.fused_update_.default), lib=lib
    )
