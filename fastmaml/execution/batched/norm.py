"""The task-batched batch norm in training mode (per-task statistics: one batch norm over T*C
channels) with a backward whose own derivative is written by hand.

NOTE: [batch norm double backward] A second-order meta-gradient differentiates batch norm's
backward; torch does it with `batchnorm_double_backward`, ~120 ops per layer (36 reductions), each
a pass over the activations and on a GPU a launch. Per channel, over its M elements, with
x^ = (x - mean) r, r = 1/sqrt(var + eps), the backward at g is

    gx = gamma r (g - A/M - x^ B/M),   ggamma = B,   gbeta = A,      A = sum g, B = sum g x^.

Cotangents (u, a, b) on (gx, ggamma, gbeta), with U = sum u, V = sum u x^, W = sum u g and
S = <u, gx> + a ggamma + b gbeta, give

    dS/dg     = gamma r (u - U/M - x^ V/M) + a x^ + b
    dS/dgamma = r (W - A U/M - B V/M)
    dS/dx     = r (h - mean h - x^ mean(h x^)) - (P r^2 / M) x^,

where h = dS/dx^ = (a - gamma r V/M) g - (gamma r B/M) u and P = dS/dr = gamma (W - A U/M - B V/M):
x reaches S through x^ (whose Jacobian is r (I - 1/M - x^ x^T / M), the first term) and through
the factor r of gx. mean h and mean(h x^) follow from A, B, U, V, so five reductions in all. The
statistics are recomputed from x with differentiable ops, so third order is exact (torch's batch
norm refuses a third order). A Conv-4 meta-step with torch's derivative here instead takes 1.003,
1.018 and 1.095 the time at 2, 8 and 32 tasks on the CPU (bench/bench_batched_derivatives.py,
bench/results/batched_derivatives_cpu.json); on a GPU the launches fall from ~120 to ~40 a layer.

Used in training mode with float32 or float64 activations, outside torch.func transforms (which
refuse an old-style autograd.Function) and autocast (as in batched/conv.py); otherwise F.batch_norm
runs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as TF
from torch import Tensor

from fastmaml.execution.batched.conv import hand_derivative_applies

HAND_DERIVATIVE = True  # False: torch's derivative, for the benchmark and the tests that compare the two


def batch_norm(x: Tensor, running_mean: Tensor | None, running_var: Tensor | None, weight: Tensor | None,
               bias: Tensor | None, training: bool, momentum: float, eps: float) -> Tensor:
    """F.batch_norm with the same arguments; in training mode differentiated twice by the hand-written
    formulas (NOTE: [batch norm double backward])."""
    if not HAND_DERIVATIVE or not training or x.dtype not in (torch.float32, torch.float64) or not hand_derivative_applies(x):
        return TF.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
    return _BatchNorm.apply(x, weight, bias, (running_mean, running_var), momentum, eps)


def _dims(x: Tensor) -> list[int]:
    return [0, *range(2, x.dim())]


def _channel(t: Tensor, x: Tensor) -> Tensor:
    """A per-channel [C] tensor shaped to broadcast against x [N, C, ...]."""
    return t.view(1, -1, *([1] * (x.dim() - 2)))


class _BatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None,
                running: tuple[Tensor | None, Tensor | None], momentum: float, eps: float) -> Tensor:
        y, mean, invstd = torch.native_batch_norm(x, weight, bias, running[0], running[1], True, momentum, eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx: Any, g_out: Tensor) -> tuple:
        x, weight, mean, invstd = ctx.saved_tensors
        mask = (ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1],
                ctx.has_bias and ctx.needs_input_grad[2])
        gx, gw, gb = _BatchNormBackward.apply(g_out, x, weight, mean, invstd, ctx.eps, mask)
        return gx, gw, gb, None, None, None


class _BatchNormBackward(torch.autograd.Function):
    """(gx, gweight, gbias) = batch norm's backward at g_out, with the hand-written derivative."""

    @staticmethod
    def forward(ctx: Any, g_out: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor, invstd: Tensor, eps: float,
                mask: tuple[bool, bool, bool]) -> tuple:
        ctx.save_for_backward(g_out, x, weight)
        ctx.eps = eps
        ctx.set_materialize_grads(False)
        return torch.ops.aten.native_batch_norm_backward(g_out, x, weight, None, None, mean, invstd, True, eps,
                                                         list(mask))

    @staticmethod
    def backward(ctx: Any, u: Tensor | None, a: Tensor | None, b: Tensor | None) -> tuple:
        # NOTE: [batch norm double backward]; per-channel coefficients first (small [C] ops, fused
        # with addcmul where it saves a launch), then at most five passes over the activations
        g, x, weight = ctx.saved_tensors
        want_g, want_x, want_w = ctx.needs_input_grad[:3]
        dims, s = _dims(x), x.shape[1] / x.numel()  # s = 1/M
        var, mean = torch.var_mean(x, dims, correction=0)
        r = (var + ctx.eps).rsqrt()
        xhat = (x - _channel(mean, x)) * _channel(r, x)
        gamma_r = r if weight is None else weight * r
        A, B = g.sum(dims), (g * xhat).sum(dims)
        zero = torch.zeros_like(r)
        U, V, W = ((u.sum(dims), (u * xhat).sum(dims), (u * g).sum(dims)) if u is not None else (zero, zero, zero))
        alpha = torch.addcmul(zero if a is None else a, gamma_r, V, value=-s)  # a - gamma r V/M
        dg = dx = dw = None
        if want_g:  # gamma r u + alpha x^ + (b - gamma r U/M)
            shift = torch.addcmul(zero if b is None else b, gamma_r, U, value=-s)
            dg = torch.addcmul(_channel(shift, x), _channel(alpha, x), xhat)
            if u is not None:
                dg = torch.addcmul(dg, _channel(gamma_r, x), u)
        inner = torch.add(W, torch.addcmul(A * U, B, V), alpha=-s)  # W - A U/M - B V/M
        if want_w and u is not None:
            dw = r * inner
        if want_x:  # r (alpha g + beta u) - r (mean h) - r (mean(h x^) + P r / M) x^
            beta = gamma_r * B * -s
            p = inner if weight is None else weight * inner
            r_s = r * -s
            per_x = torch.addcmul(torch.addcmul(alpha * B, beta, V), p, r) * r_s
            per_1 = torch.addcmul(alpha * A, beta, U) * r_s
            dx = torch.addcmul(torch.addcmul(_channel(per_1, x), _channel(r * alpha, x), g), _channel(per_x, x), xhat)
            if u is not None:
                dx = torch.addcmul(dx, _channel(r * beta, x), u)
        return dg, dx, dw, None, None, None, None
