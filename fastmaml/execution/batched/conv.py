"""The task-batched convolution: one grouped convolution (groups = T x the layer's groups) whose
backward has a derivative without a loop over the groups.

NOTE: [grouped conv double backward] A second-order meta-gradient differentiates the inner
gradient, so torch differentiates convolution_backward, with `_convolution_double_backward`; for
groups > 1 that computes its weight term as one convolution per group and a cat: T convolutions
per layer per inner step here (96 for Conv-4 at T = 32, 768 at T = 256), the task loop that
batching exists to remove. Written by hand, the derivative is three first-order ops whatever the
groups. With y = C(x, w) + b (C bilinear) and the backward (gx, gw, gb) = (C_x^T gO, C_w^T gO,
sum gO), cotangents (vx, vw, vb) on the backward's outputs give

    d/dgO = C(vx, w) + C(x, vw) + vb     two forward convolutions
    d/dw  = C_w^T(gO) at input vx        convolution_backward's weight part
    d/dx  = C_x^T(gO) at weight vw       convolution_backward's input part

(from <vx, gx> + <vw, gw> + <vb, gb> = <C(vx, w) + C(x, vw) + vb, gO>), each differentiable by
torch in turn, so third order works (with torch's loop).

On the CPU it costs nothing measurable (a Conv-4 meta-step with torch's derivative here, the
batch norm's hand-written, at 2, 8 and 32 tasks: 1.013, 1.002 and 0.981 the time of the all
hand-written step, within the run's noise; bench/bench_batched_derivatives.py, bench/results/
batched_derivatives_cpu.json); on a GPU it removes the launches (bench/gpu measures both). Not inside
torch.func transforms, which refuse an old-style autograd.Function, nor under autocast, which
casts inside the forward what the backward would then see uncast: there the plain convolution
runs, as the chain path does (execution/chain.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as TF
from torch import Tensor
from torch._C._functorch import peek_interpreter_stack

# (stride, padding, dilation, groups), as F.conv2d takes them, padding numeric
Geometry = tuple[tuple[int, int], tuple[int, int], tuple[int, int], int]
HAND_DERIVATIVE = True  # False: torch's derivative, for the benchmark and the tests that compare the two


def hand_derivative_applies(x: Tensor) -> bool:
    """Whether a layer of x may run an old-style autograd.Function with a hand-written derivative:
    gradients are on, autocast is off and no torch.func transform is active (see above). Shared
    by batched/norm.py."""
    return (torch.is_grad_enabled() and not torch.is_autocast_enabled(x.device.type)
            and peek_interpreter_stack() is None)


def conv2d(x: Tensor, w: Tensor, b: Tensor | None, stride: Any, padding: Any, dilation: Any, groups: int) -> Tensor:
    """F.conv2d(x, w, b, stride, padding, dilation, groups), differentiated twice without a loop over
    the groups (NOTE: [grouped conv double backward])."""
    if not HAND_DERIVATIVE or isinstance(padding, str) or not hand_derivative_applies(x):
        return TF.conv2d(x, w, b, stride, padding, dilation, groups)
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)
    return _Conv.apply(x, w, b, (pair(stride), pair(padding), pair(dilation), groups))


def _vjp(g_out: Tensor, x: Tensor, w: Tensor, geometry: Geometry, mask: tuple[bool, bool, bool]) -> tuple:
    """(C_x^T g_out at weight w, C_w^T g_out at input x, sum g_out), each None unless asked by `mask`."""
    stride, padding, dilation, groups = geometry
    return torch.ops.aten.convolution_backward(g_out, x, w, [w.shape[0]] if mask[2] else None, list(stride),
                                               list(padding), list(dilation), False, [0, 0], groups, list(mask))


class _Conv(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, b: Tensor | None, geometry: Geometry) -> Tensor:
        ctx.save_for_backward(x, w)
        ctx.geometry = geometry
        ctx.has_bias = b is not None
        return TF.conv2d(x, w, b, *geometry)

    @staticmethod
    def backward(ctx: Any, g_out: Tensor) -> tuple:
        x, w = ctx.saved_tensors
        mask = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2])
        gx, gw, gb = _ConvBackward.apply(g_out, x, w, ctx.geometry, mask)
        return gx, gw, gb, None


class _ConvBackward(torch.autograd.Function):
    """(gx, gw, gb) = the convolution's backward at g_out, with the hand-written derivative."""

    @staticmethod
    def forward(ctx: Any, g_out: Tensor, x: Tensor, w: Tensor, geometry: Geometry, mask: tuple[bool, bool, bool]) -> tuple:
        ctx.save_for_backward(g_out, x, w)
        ctx.geometry = geometry
        ctx.set_materialize_grads(False)
        return _vjp(g_out, x, w, geometry, mask)

    @staticmethod
    def backward(ctx: Any, vx: Tensor | None, vw: Tensor | None, vb: Tensor | None) -> tuple:
        g_out, x, w = ctx.saved_tensors
        geometry = ctx.geometry
        want_g, want_x, want_w = ctx.needs_input_grad[:3]
        dg = dx = dw = None
        if want_g:
            terms = [TF.conv2d(vx, w, None, *geometry)] if vx is not None else []
            if vw is not None:
                terms.append(TF.conv2d(x, vw, None, *geometry))
            if vb is not None:
                terms.append(vb.view(1, -1, *([1] * (g_out.dim() - 2))).expand_as(g_out))
            dg = sum(terms[1:], terms[0]) if terms else None
        if want_w and vx is not None:
            dw = _vjp(g_out, vx, w, geometry, (False, True, False))[1]
        if want_x and vw is not None:
            dx = _vjp(g_out, x, vw, geometry, (True, False, False))[0]
        return dg, dx, dw, None, None
