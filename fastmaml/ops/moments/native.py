"""The compiled moment forms (`fastmaml::fused_moments`, csrc/include/fastmaml/update_ops.h) and
their autograd: one fused backward pass (`fastmaml::fused_moments_backward`) when the backward is
plain; when it must itself be differentiable (create_graph=True: second-order MAML through a
higher-order meta-gradient, gradgradcheck) the backward recomputes the forward with the reference
ops and differentiates those, so every order is exact. Inside torch.func transforms and
torch.compile the reference ops run instead of the op (it has neither a vmap rule nor a fake)."""

from __future__ import annotations

import torch
from torch import _C as _torch_C
from torch._C._functorch import peek_interpreter_stack
from torch.compiler import is_compiling

from fastmaml.ops import native as _update_native
from fastmaml.ops.moments import reference


def is_available(device: torch.device) -> bool:
    if _update_native._C is None or not hasattr(torch.ops.fastmaml, "fused_moments"):
        return False
    if device.type == "cuda" and not _update_native.cuda_kernels_built():
        return False
    if device.type not in ("cpu", "cuda"):
        return False
    try:
        g = torch.ones(2, device=device)
        d = torch.ops.fastmaml.fused_moments([g], None, None, None, None, [0.0] * 5 + [1.0, 1.0, 0.0, 0.0, 0.0, 1.0], 0)[0]
        return bool((d[0] == 1).all())
    except (RuntimeError, NotImplementedError):
        return False


def _split(n, present, flat):
    """(grads, params, m, v, b) from the flat inputs; `present` says which optional lists were passed."""
    out, pos = [list(flat[:n])], n
    for here in present:
        out.append(list(flat[pos:pos + n]) if here else None)
        pos += n if here else 0
    return out


class _Moments(torch.autograd.Function):
    @staticmethod
    def forward(ctx, form, n, present, *flat):
        grads, params, m, v, b = _split(n, present, flat)
        with _torch_C._AutoDispatchBelowAutograd():
            d, M, V, B = torch.ops.fastmaml.fused_moments(grads, params, m, v, b, form.hyper, form.flags)
        ctx.form, ctx.n, ctx.present = form, n, present
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*flat)
        outs = [*d, *M, *V, *B]
        return tuple(outs)

    @staticmethod
    def backward(ctx, *gos):
        n, present, form = ctx.n, ctx.present, ctx.form
        flat = ctx.saved_tensors
        need = ctx.needs_input_grad[3:]
        kept = [True, *present[1:]]  # which outputs exist: d, then m', v', b' as passed
        if torch.is_grad_enabled():
            return (None, None, None, *_differentiable(n, present, form, flat, need, gos, kept))
        grads, params, m, v, b = _split(n, present, flat)
        lists, pos = [], 0
        for here in kept:
            if not here:
                lists.append(None)
                continue
            chunk = gos[pos:pos + n]
            pos += n
            if all(x is None for x in chunk):
                lists.append(None)
            else:
                lists.append([torch.zeros_like(grads[i]) if x is None else x for i, x in enumerate(chunk)])
        inputs = [True, *present]
        mask, pos = [], 0
        for here in inputs:
            mask.append(here and any(need[pos:pos + n]))
            pos += n if here else 0
        if not any(mask):
            return (None,) * (3 + len(flat))
        with _torch_C._AutoDispatchBelowAutograd():
            outs = torch.ops.fastmaml.fused_moments_backward(*lists, grads, params, m, v, b, form.hyper, form.flags,
                                                            mask)
        result = []
        for here, values, wanted in zip(inputs, outs, mask):
            if here:
                result += list(values) if wanted else [None] * n
        result = [r if f else None for r, f in zip(result, need)]
        return (None, None, None, *result)


def _differentiable(n, present, form, flat, need, gos, kept):
    """The gradients of the inputs as differentiable functions of them (the reference recomputed)."""
    with torch.enable_grad():
        grads, params, m, v, b = _split(n, present, flat)
        outs = reference.moments(grads, params, m, v, b, form)
        ys, ws = [], []
        pos = 0
        for here, values in zip(kept, outs):
            if not here:
                continue
            for y, w in zip(values, gos[pos:pos + n]):
                if w is not None and y.requires_grad:
                    ys.append(y)
                    ws.append(w)
            pos += n
        wrt = [i for i, (x, f) in enumerate(zip(flat, need)) if f and x.requires_grad]
        got = torch.autograd.grad(ys, [flat[i] for i in wrt], ws, create_graph=True, allow_unused=True) if ys else []
    result = [None] * len(flat)
    for i, g in zip(wrt, got):
        result[i] = g if g is not None else torch.zeros_like(flat[i])
    return result


def moments(grads, params, m, v, b, form):
    if peek_interpreter_stack() is not None or is_compiling():
        return reference.moments(grads, params, m, v, b, form)
    n = len(grads)
    present = (params is not None, m is not None, v is not None, b is not None)
    flat = [*grads, *(x for lst in (params, m, v, b) if lst is not None for x in lst)]
    outs = _Moments.apply(form, n, present, *flat)
    d, pos, result = list(outs[:n]), n, []
    for lst in (m, v, b):
        if lst is None:
            result.append(None)
        else:
            result.append(list(outs[pos:pos + n]))
            pos += n
    return (d, *result)
