"""The autograd of the moments op's fused backends (native, triton): one autograd.Function whose
forward is the backend's kernel and whose backward is the backend's fused backward pass when it
has one and the backward is plain; when the backward must itself be differentiable (create_graph:
a higher-order meta-gradient, gradgradcheck) or the backend has no fused backward, it recomputes
the forward with the reference ops and differentiates those, so every order is exact. Inside
torch.func transforms and torch.compile the reference ops run instead (no vmap rule, no fake).
The operands: fastmaml.ops.operands.MOMENTS (NOTE: [update operands])."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import _C as _torch_C, Tensor
from torch._C._functorch import peek_interpreter_stack
from torch.compiler import is_compiling

from fastmaml.ops.moments import Form, Outputs, reference
from fastmaml.ops.operands import MOMENTS

_STATES = (MOMENTS.index("m"), MOMENTS.index("v"), MOMENTS.index("b"))
_LRS = MOMENTS.index("lrs")


class Kernels(NamedTuple):
    """A backend's ops, with the schemas of csrc/ops.cpp.

    Args:
        forward: fused_moments(params, grads, lrs, m, v, b, alpha, hyper, flags) -> (p', m', v', b').
        backward: fused_moments_backward(grad_out, grad_m, grad_v, grad_b, params, grads, lrs, m, v,
            b, alpha, hyper, flags, mask) -> the six gradients, or None (the reference's autograd).
    """

    forward: Callable[..., Any]
    backward: Callable[..., Any] | None


class _Moments(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, kernels: Kernels, n: int, present: tuple[bool, ...], alpha: float, form: Form,
                direction: bool, *flat: Tensor) -> tuple[Tensor, ...]:
        lists = MOMENTS.split(n, present, flat)
        with _torch_C._AutoDispatchBelowAutograd():
            outs = kernels.forward(*lists, alpha, form.hyper(alpha, present[_LRS]), form.flags(direction))
        ctx.spec = (kernels, n, present, alpha, form, direction)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*flat)
        return tuple(t for lst in outs for t in lst)

    @staticmethod
    def backward(ctx: Any, *gos: Tensor | None) -> tuple[Tensor | None, ...]:
        kernels, n, present, alpha, form, direction = ctx.spec
        flat, need = ctx.saved_tensors, ctx.needs_input_grad[6:]
        kept = [True] + [present[k] for k in _STATES]  # the outputs: p', then the states passed
        if torch.is_grad_enabled() or kernels.backward is None:
            grads = _by_reference(n, present, alpha, form, direction, flat, need, gos, kept)
        else:
            grads = _fused(kernels.backward, n, present, alpha, form, direction, flat, need, gos, kept)
        return (None,) * 6 + tuple(grads)


def _output_grads(n: int, gos: tuple[Tensor | None, ...], kept: list[bool],
                  like: list[Tensor]) -> list[list[Tensor] | None]:
    """The gradients of the four outputs as lists (zeros for the unused tensors of a used output),
    None where the output is absent or unused."""
    lists: list[list[Tensor] | None] = []
    pos = 0
    for here in kept:
        chunk = gos[pos:pos + n] if here else ()
        pos += n if here else 0
        if all(x is None for x in chunk):
            lists.append(None)
        else:
            lists.append([torch.zeros_like(like[i]) if x is None else x for i, x in enumerate(chunk)])
    return lists


def _fused(backward: Callable[..., Any], n: int, present: tuple[bool, ...], alpha: float, form: Form,
           direction: bool, flat: tuple[Tensor, ...], need: tuple[bool, ...], gos: tuple[Tensor | None, ...],
           kept: list[bool]) -> list[Tensor | None]:
    """One fused backward pass."""
    lists: list[Any] = MOMENTS.split(n, present, flat)  # params and grads are lists, the others may be None
    mask, pos = [], 0
    for here in present:
        mask.append(here and any(need[pos:pos + n]))
        pos += n if here else 0
    if not any(mask):
        return [None] * len(flat)
    with _torch_C._AutoDispatchBelowAutograd():
        outs = backward(*_output_grads(n, gos, kept, lists[0]), *lists, alpha,
                        form.hyper(alpha, present[_LRS]), form.flags(direction), mask)
    result: list[Tensor | None] = []
    for k, (here, values, wanted) in enumerate(zip(present, outs, mask)):
        if not here:
            continue
        if not wanted:
            result += [None] * n
        elif k == _LRS:  # d lrs comes with params' shapes
            result += [d if d.shape == a.shape else d.sum_to_size(a.shape) for d, a in zip(values, lists[k])]
        else:
            result += list(values)
    return [r if f else None for r, f in zip(result, need)]


def _by_reference(n: int, present: tuple[bool, ...], alpha: float, form: Form, direction: bool,
                  flat: tuple[Tensor, ...], need: tuple[bool, ...], gos: tuple[Tensor | None, ...],
                  kept: list[bool]) -> list[Tensor | None]:
    """The gradients of the inputs through the reference ops recomputed: differentiable functions
    of the inputs when grad mode is on (create_graph)."""
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        inputs = list(flat) if create_graph else [x.detach().requires_grad_(f) for x, f in zip(flat, need)]
        params, grads, lrs, m, v, b = MOMENTS.split(n, present, inputs)
        assert params is not None and grads is not None
        outs = reference.moments(params, grads, lrs, m, v, b, alpha, form, direction)
        ys, ws, pos = [], [], 0
        for here, values in zip(kept, outs):
            if not here:
                continue
            for y, w in zip(values or [], gos[pos:pos + n]):
                if w is not None and y.requires_grad:
                    ys.append(y)
                    ws.append(w)
            pos += n
        wrt = [i for i, (x, f) in enumerate(zip(inputs, need)) if f and x.requires_grad]
        got = torch.autograd.grad(ys, [inputs[i] for i in wrt], ws, create_graph=create_graph,
                                  allow_unused=True) if ys else []
    result: list[Tensor | None] = [None] * len(flat)
    for i, g in zip(wrt, got):
        result[i] = g if g is not None else torch.zeros_like(flat[i])
    return result


def moments(kernels: Kernels, params: list[Tensor], grads: list[Tensor], lrs: list[Tensor] | None,
            m: list[Tensor] | None, v: list[Tensor] | None, b: list[Tensor] | None, alpha: float, form: Form,
            direction: bool) -> Outputs:
    """(p' or d, m', v', b') through `kernels` (see fastmaml.ops.moments.moments)."""
    values = (params, grads, lrs, m, v, b)
    if peek_interpreter_stack() is not None or is_compiling():
        return reference.moments(*values, alpha, form, direction)
    n = len(params)
    present = tuple(x is not None for x in values)
    outs = _Moments.apply(kernels, n, present, alpha, form, direction, *MOMENTS.join(values))
    states: list[list[Tensor] | None] = []
    pos = n
    for k in _STATES:
        states.append(list(outs[pos:pos + n]) if present[k] else None)
        pos += n if present[k] else 0
    return list(outs[:n]), states[0], states[1], states[2]
