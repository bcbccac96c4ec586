"""The task-batched layers: T tasks in one forward, parameters of shape [T, *p.shape].

A Linear over T tasks is one `baddbmm`, a Conv2d over T tasks one grouped convolution (groups=T, its
second derivative without a loop over the groups: batched/conv.py), a
BatchNorm over T tasks one batch norm over T*C channels (its second derivative by hand: batched/norm.py),
a pooling one pooling over merged dims.

NOTE: [batched layouts] Activations travel in one of two layouts: "tn" [T, N, ...], what bmm wants,
and "nt" [N, T, ...], which a grouped convolution reads as [N, T*C, H, W] with no copy. Each layer
takes either and returns the cheaper one for it; `forward` returns "tn".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as TF
from torch import Tensor, nn

from fastmaml.execution.batched.conv import conv2d
from fastmaml.execution.batched.norm import batch_norm
from fastmaml.execution.batched.plan import ACTIVATION_MODULES, Plan, plan_of
from fastmaml.functional import Params

TN, NT = "tn", "nt"
Act = tuple[Tensor, str]  # an activation and its layout (TN or NT)
# a compiled step: (output name, fn(a, b, params, buffers, T) -> Act, input names)
CompiledStep = tuple[str, Callable[..., Act], str, "str | None"]


def _to(x: Tensor, layout: str, want: str) -> Tensor:
    return x if layout == want else x.transpose(0, 1)


def _merged(x: Tensor, layout: str) -> tuple[Tensor, str]:
    """x as [N, T*C, ...] (nt) or [T*N, C, ...] (tn), whichever is a view; else nt (one copy)."""
    if layout == TN and x.is_contiguous():
        return x.flatten(0, 1), TN
    x = _to(x, layout, NT)
    return x.reshape(x.shape[0], -1, *x.shape[3:]), NT


def _unmerge(y: Tensor, how: str, T: int) -> Tensor:
    if how == TN:
        return y.view(T, -1, *y.shape[1:])
    return y.view(y.shape[0], T, -1, *y.shape[2:])


def _linear(m: str, p: Params, x: Tensor, layout: str, T: int) -> Act:
    w = p[m + ".weight"]
    b = p.get(m + ".bias")
    x = _to(x, layout, TN)
    shape = x.shape
    if x.dim() != 3:
        x = x.reshape(T, -1, shape[-1])
    wt = w.transpose(1, 2)
    if shape[-1] == 1:  # an outer product: elementwise is ~3x cheaper than a bmm with k=1
        y = x * wt if b is None else torch.addcmul(b.unsqueeze(1), x, wt)
    else:
        y = torch.bmm(x, wt) if b is None else torch.baddbmm(b.unsqueeze(1), x, wt)
    if len(shape) != 3:
        y = y.view(*shape[:-1], y.shape[-1])
    return y, TN


def _conv2d(mod: nn.Conv2d, m: str, p: Params, x: Tensor, layout: str, T: int) -> Act:
    w = p[m + ".weight"]
    b = p.get(m + ".bias")
    x = _to(x, layout, NT)
    n = x.shape[0]
    x = x.reshape(n, -1, *x.shape[3:])  # [N, T*C, H, W]: a view when x was nt-contiguous
    y = conv2d(x, w.flatten(0, 1), None if b is None else b.flatten(), mod.stride, mod.padding, mod.dilation,
               mod.groups * T)
    return y.view(n, T, -1, *y.shape[2:]), NT


def _batch_norm(mod: nn.modules.batchnorm._BatchNorm, m: str, p: Params, buffers: Params | None, x: Tensor,
                layout: str, T: int) -> Act:
    # Per-task statistics: one batch norm over T*C channels of [N, T*C, ...]. Running statistics
    # (if tracked) are per task, [T, C] in `buffers`, updated in place as nn.BatchNorm does.
    w, b = p.get(m + ".weight"), p.get(m + ".bias")
    rm = rv = None
    factor = 0.0 if mod.momentum is None else mod.momentum
    if mod.track_running_stats:
        bufs = buffers if buffers is not None else {}
        rm, rv = bufs.get(m + ".running_mean"), bufs.get(m + ".running_var")
        count = bufs.get(m + ".num_batches_tracked")
        if mod.training and count is not None:
            count.add_(1)
            if mod.momentum is None:
                factor = 1.0 / float(count.reshape(-1)[0])
    training = mod.training or (rm is None and rv is None)
    x = _to(x, layout, NT)
    n = x.shape[0]
    merged = x.reshape(n, -1, *x.shape[3:])
    y = batch_norm(merged, None if rm is None else rm.view(-1), None if rv is None else rv.view(-1),
                   None if w is None else w.flatten(), None if b is None else b.flatten(), training, factor, mod.eps)
    return y.view(n, T, -1, *y.shape[2:]), NT


def _pool(mod: nn.Module, x: Tensor, layout: str, T: int) -> Act:
    merged, how = _merged(x, layout)
    if isinstance(mod, nn.MaxPool2d):
        y = TF.max_pool2d(merged, mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.ceil_mode)
    elif isinstance(mod, nn.AvgPool2d):
        y = TF.avg_pool2d(merged, mod.kernel_size, mod.stride, mod.padding, mod.ceil_mode, mod.count_include_pad,
                          mod.divisor_override)
    else:
        y = TF.adaptive_avg_pool2d(merged, cast(nn.AdaptiveAvgPool2d, mod).output_size)
    return _unmerge(y, how, T), how


def _flatten(mod: nn.Flatten, x: Tensor, layout: str) -> Act:
    end = mod.end_dim if mod.end_dim < 0 else mod.end_dim + 1
    return x.flatten(mod.start_dim + 1, end), layout


def compile_plan(plan: Plan) -> list[CompiledStep]:
    """The plan's steps as (output name, fn(a, b, params, buffers, T) -> (y, layout), input names)."""
    gm = plan.graph_module
    out: list[CompiledStep] = []
    for name, kind, target, args in plan.steps:
        if kind == "input":
            continue
        fn: Callable[..., Act]
        if kind == "module":
            mod = gm.get_submodule(cast(str, target))
            if type(mod) in ACTIVATION_MODULES:
                act = ACTIVATION_MODULES[type(mod)]
                fn = lambda a, b, p, bufs, T, act=act, mod=mod: (act(mod, a[0]), a[1])
            elif isinstance(mod, nn.Linear):
                fn = lambda a, b, p, bufs, T, m=target: _linear(m, p, a[0], a[1], T)
            elif isinstance(mod, nn.Conv2d):
                fn = lambda a, b, p, bufs, T, mod=mod, m=target: _conv2d(mod, m, p, a[0], a[1], T)
            elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
                fn = lambda a, b, p, bufs, T, mod=mod, m=target: _batch_norm(mod, m, p, bufs, a[0], a[1], T)
            elif isinstance(mod, nn.Flatten):
                fn = lambda a, b, p, bufs, T, mod=mod: _flatten(mod, a[0], a[1])
            else:
                fn = lambda a, b, p, bufs, T, mod=mod: _pool(mod, a[0], a[1], T)
        elif kind == "function":
            fn = lambda a, b, p, bufs, T, f=target: (f(a[0]), a[1])
        else:  # add
            fn = lambda a, b, p, bufs, T: (a[0] + _to(b[0], b[1], a[1]), a[1])
        out.append((name, fn, args[0], args[1] if len(args) > 1 else None))
    return out


def forward(model: nn.Module, params: Params, x: Tensor, buffers: Params | None = None) -> Tensor:
    """The model's outputs for T tasks at once: params[name] is [T, *p.shape], x is [T, N, ...],
    buffers (BatchNorm running statistics, if tracked) are [T, *b.shape]; returns [T, N, ...]."""
    plan = plan_of(model)
    if not isinstance(plan, Plan):
        raise ValueError(f"batched forward: the model is not supported: {plan}")  # noqa: TRY004
    if plan.compiled is None:
        plan.compiled = compile_plan(plan)
    T = x.shape[0]
    env: dict[str, tuple[Tensor, str]] = {plan.steps[0][0]: (x, TN)}
    for name, fn, first, second in plan.compiled:
        env[name] = fn(env[first], None if second is None else env[second], params, buffers, T)
    y, layout = env[plan.output]
    return _to(y, layout, TN)
