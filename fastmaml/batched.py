"""The task-batched fast path: T tasks in one forward, parameters of shape [T, *p.shape].

The vmap path runs the one-task inner loop under torch.func.vmap(grad(...)). For the common layers
the same maths written with the task dimension explicit is cheaper: a Linear over T tasks is one
`baddbmm`, a Conv2d over T tasks one grouped convolution (groups=T), a BatchNorm over T tasks one
batch norm over T*C channels; and the inner gradients of all tasks come from ONE
`torch.autograd.grad` of the summed per-task support losses w.r.t. the task-expanded parameters
theta.expand(T, ...) (the tasks do not interact, so d sum_t L_t / d phi_t = d L_t / d phi_t).

    if batched.supports(model):
        losses = batched.task_losses(learner, sx, sy, qx, qy, F.mse_loss)      # [T]

The inner loop is the learner's own (`MetaLearner.inner_loop`): this module only supplies the
gradient function, a task-batched `task_forward` and a per-task loss. So the hooks `inner_rates`
(Meta-SGD, MTNet: rates broadcast over the task dimension) and `is_first_order` keep working; a
learner that overrides `task_forward`, `inner_gammas`, `support_loss`, `query_loss`, `task_loss` or
`inner_loop` is not supported (see `learner_supported`).

`supports(model)` traces the model with torch.fx and accepts it when every step is one of the
layers below (any nesting of Sequential and modules whose forward only chains them):
Linear, Conv2d (zeros padding), BatchNorm1d/2d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d,
ReLU, Tanh, Sigmoid, LeakyReLU, ELU, GELU, SiLU, Flatten (start_dim >= 1), Identity, Dropout,
and the same activations as functions/methods, and `+` of two activations. Modules with hooks are
refused (hooks would not run).

For a plain chain of Linear layers and ReLUs under the MSE (sine regression's MLP), the inner
gradients and the query loss skip autograd recording: fastmaml/batched_mlp.py calls two C++ ops
(csrc/chain.cpp) that write out both the gradient and its backward (a Hessian-vector product), with
the same meta-gradient in a fraction of the ops and none of their Python overhead.

Activations travel in one of two layouts (NOTE: [batched layouts]): "tn" [T, N, ...], what bmm
wants, and "nt" [N, T, ...], which a grouped convolution reads as [N, T*C, H, W] with no copy. Each
layer takes either and returns the cheaper one for it; the output is returned as "tn".
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as TF
from torch import Tensor, fx, nn

from fastmaml import batched_mlp
from fastmaml.functional import LossFn, Params

TN, NT = "tn", "nt"

_ACTIVATION_MODULES = {
    nn.ReLU: lambda m, x: TF.relu(x),
    nn.Tanh: lambda m, x: torch.tanh(x),
    nn.Sigmoid: lambda m, x: torch.sigmoid(x),
    nn.LeakyReLU: lambda m, x: TF.leaky_relu(x, m.negative_slope),
    nn.ELU: lambda m, x: TF.elu(x, m.alpha),
    nn.GELU: lambda m, x: TF.gelu(x, approximate=m.approximate),
    nn.SiLU: lambda m, x: TF.silu(x),
    nn.Identity: lambda m, x: x,
    nn.Dropout: lambda m, x: TF.dropout(x, m.p, m.training),
}
_ACTIVATION_FUNCTIONS = {TF.relu: TF.relu, torch.relu: TF.relu, torch.tanh: torch.tanh, TF.tanh: torch.tanh,
                         torch.sigmoid: torch.sigmoid, TF.sigmoid: torch.sigmoid, TF.silu: TF.silu,
                         TF.gelu: TF.gelu, TF.elu: TF.elu, TF.leaky_relu: TF.leaky_relu}
_ACTIVATION_METHODS = {"relu": TF.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}
_LAYERS = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d,
           nn.AdaptiveAvgPool2d, nn.Flatten)

_plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _Plan:
    """The model as a list of steps (node name, kind, target, argument node names)."""

    def __init__(self, graph_module: fx.GraphModule, steps: list, output: str):
        self.graph_module, self.steps, self.output = graph_module, steps, output
        self.compiled: list | None = None
        self.chain = batched_mlp.chain(self)  # a Linear/ReLU chain: explicit gradients, batched_mlp.py


def _why_not(model: nn.Module) -> str | _Plan:
    """A plan for `model`, or the reason it is not supported."""
    for name, m in model.named_modules():
        if m._forward_hooks or m._forward_pre_hooks or getattr(m, "_backward_hooks", None):
            return f"module {name or type(m).__name__!r} has hooks"
    try:
        gm = fx.symbolic_trace(model)
    except Exception as error:  # noqa: BLE001 - data-dependent control flow, unsupported Python
        return f"torch.fx cannot trace it ({type(error).__name__}: {error})"
    steps, output, inputs = [], None, 0
    for node in gm.graph.nodes:
        args = [a.name for a in node.args if isinstance(a, fx.Node)]
        if node.op == "placeholder":
            inputs += 1
            if inputs > 1:
                return "forward takes more than one input"
            steps.append((node.name, "input", None, []))
        elif node.op == "call_module":
            m = gm.get_submodule(node.target)
            if type(m) not in _ACTIVATION_MODULES and type(m) not in _LAYERS:
                return f"layer {node.target!r} ({type(m).__name__}) has no task-batched form"
            if node.kwargs or len(node.args) != 1:
                return f"layer {node.target!r} is called with extra arguments"
            problem = _check_layer(node.target, m)
            if problem:
                return problem
            steps.append((node.name, "module", node.target, args))
        elif node.op == "call_function" and node.target in _ACTIVATION_FUNCTIONS:
            if len(node.args) != 1 or not args:
                return f"{node.target.__name__} is called with extra arguments"
            # fx records F.relu(x) as relu(x, inplace=False): that keyword changes nothing here
            if node.kwargs and dict(node.kwargs) != {"inplace": False}:
                return f"{node.target.__name__} is called with keyword arguments"
            steps.append((node.name, "function", _ACTIVATION_FUNCTIONS[node.target], args))
        elif node.op == "call_function" and node.target in (operator.add, torch.add):
            if len(node.args) != 2 or len(args) != 2 or node.kwargs:
                return "only `a + b` of two activations is supported"
            steps.append((node.name, "add", None, args))
        elif node.op == "call_method" and node.target in _ACTIVATION_METHODS:
            if len(node.args) != 1 or node.kwargs:
                return f".{node.target}() is called with arguments"
            steps.append((node.name, "function", _ACTIVATION_METHODS[node.target], args))
        elif node.op == "output":
            if not isinstance(node.args[0], fx.Node):
                return "forward returns more than one tensor"
            output = node.args[0].name
        else:
            what = getattr(node.target, "__name__", node.target)
            return f"the operation {node.op} {what!r} has no task-batched form"
    if inputs != 1 or output is None:
        return "forward must take one input and return one tensor"
    return _Plan(gm, steps, output)


def _check_layer(name: str, m: nn.Module) -> str | None:
    if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
        return f"layer {name!r}: padding_mode {m.padding_mode!r} (only 'zeros')"
    if isinstance(m, nn.Flatten) and (m.start_dim == 0 or m.start_dim < -1 and m.end_dim >= 0):
        return f"layer {name!r}: Flatten over the example dimension"
    if isinstance(m, nn.Flatten) and m.start_dim < 0:
        return f"layer {name!r}: Flatten with a negative start_dim"
    if isinstance(m, nn.MaxPool2d) and m.return_indices:
        return f"layer {name!r}: MaxPool2d(return_indices=True)"
    return None


def _plan(model: nn.Module) -> str | _Plan:
    plan = _plans.get(model)
    if plan is None:
        plan = _why_not(model)
        _plans[model] = plan
    return plan


def supports(model: nn.Module) -> bool:
    """Whether `model` runs task-batched here (see the module docstring for the layers)."""
    return isinstance(_plan(model), _Plan)


def why_not(model: nn.Module) -> str | None:
    """The reason `model` is not supported (None when it is)."""
    plan = _plan(model)
    return None if isinstance(plan, _Plan) else plan


# ---- layouts and layers --------------------------------------------------------------------

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


def _linear(m, p, x, layout, T):
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


def _conv2d(mod, m, p, x, layout, T):
    w = p[m + ".weight"]
    b = p.get(m + ".bias")
    x = _to(x, layout, NT)
    n = x.shape[0]
    x = x.reshape(n, -1, *x.shape[3:])  # [N, T*C, H, W]: a view when x was nt-contiguous
    y = TF.conv2d(x, w.flatten(0, 1), None if b is None else b.flatten(), mod.stride, mod.padding, mod.dilation,
                  mod.groups * T)
    return y.view(n, T, -1, *y.shape[2:]), NT


def _batch_norm(mod, m, p, buffers, x, layout, T):
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
    y = TF.batch_norm(merged, None if rm is None else rm.view(-1), None if rv is None else rv.view(-1),
                      None if w is None else w.flatten(), None if b is None else b.flatten(),
                      training, factor, mod.eps)
    return y.view(n, T, -1, *y.shape[2:]), NT


def _pool(mod, x, layout, T):
    merged, how = _merged(x, layout)
    if isinstance(mod, nn.MaxPool2d):
        y = TF.max_pool2d(merged, mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.ceil_mode)
    elif isinstance(mod, nn.AvgPool2d):
        y = TF.avg_pool2d(merged, mod.kernel_size, mod.stride, mod.padding, mod.ceil_mode, mod.count_include_pad,
                          mod.divisor_override)
    else:
        y = TF.adaptive_avg_pool2d(merged, mod.output_size)
    return _unmerge(y, how, T), how


def _flatten(mod, x, layout):
    end = mod.end_dim if mod.end_dim < 0 else mod.end_dim + 1
    return x.flatten(mod.start_dim + 1, end), layout


def _compile(plan: _Plan) -> list:
    """The plan's steps as (output name, fn(a, b, params, buffers, T) -> (y, layout), input names)."""
    gm, out = plan.graph_module, []
    for name, kind, target, args in plan.steps:
        if kind == "input":
            continue
        if kind == "module":
            mod = gm.get_submodule(target)
            if type(mod) in _ACTIVATION_MODULES:
                act = _ACTIVATION_MODULES[type(mod)]
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
    plan = _plan(model)
    if not isinstance(plan, _Plan):
        raise ValueError(f"batched.forward: the model is not supported: {plan}")  # noqa: TRY004
    if plan.compiled is None:
        plan.compiled = _compile(plan)
    T = x.shape[0]
    env: dict[str, tuple[Tensor, str]] = {plan.steps[0][0]: (x, TN)}
    for name, fn, first, second in plan.compiled:
        env[name] = fn(env[first], None if second is None else env[second], params, buffers, T)
    y, layout = env[plan.output]
    return _to(y, layout, TN)


# ---- the per-task loss and the inner loop -----------------------------------------------------

def per_task_loss(loss_fn: LossFn) -> Callable[[Tensor, Tensor], Tensor]:
    """loss_fn over [T, N, ...] predictions and targets -> [T] (torch.func.vmap: any loss_fn).
    The default-reduction MSE and cross-entropy, the common cases, skip vmap."""
    if _is_mse(loss_fn):
        return lambda out, y: (out - y).square().flatten(1).mean(1)
    if loss_fn is TF.cross_entropy or (type(loss_fn) is nn.CrossEntropyLoss and loss_fn.reduction == "mean"
                                       and loss_fn.weight is None and loss_fn.label_smoothing == 0
                                       and loss_fn.ignore_index < 0):
        def cross_entropy(out, y):
            if out.dim() != 3 or y.dim() != 2 or y.is_floating_point():
                return torch.func.vmap(TF.cross_entropy)(out, y)
            T, N = y.shape
            return TF.cross_entropy(out.reshape(T * N, -1), y.reshape(T * N), reduction="none").view(T, N).mean(1)
        return cross_entropy
    return torch.func.vmap(loss_fn)


def _is_mse(loss_fn: LossFn) -> bool:
    return loss_fn is TF.mse_loss or (type(loss_fn) is nn.MSELoss and loss_fn.reduction == "mean")


def batched_grads(loss_of, params: Params, names: list[str], first_order: bool, buffers: Params | None = None):
    """The [T] support losses `loss_of(params, buffers)` and their per-task gradients w.r.t.
    params[names] (each [T, ...]) by ONE torch.autograd.grad of their sum: the tasks share no
    parameter, so the gradient of the sum w.r.t. phi_t is the gradient of L_t. The graph through
    the gradients is kept (second order) unless first_order."""
    losses = loss_of(params, buffers)
    wrt = [params[n] for n in names]
    grads = torch.autograd.grad(losses.sum(), wrt, create_graph=not first_order, allow_unused=True)
    return losses, {n: torch.zeros_like(w) if g is None else g for n, w, g in zip(names, wrt, grads)}


_HOOKS = ("task_forward", "inner_gammas", "support_loss", "query_loss", "task_loss", "inner_loop")


_plain_classes: dict[type, bool] = {}


def learner_supported(learner) -> bool:
    """Whether `task_losses` computes exactly what the learner's loop path does: its model is
    supported and it overrides none of the hooks that see one task's tensors."""
    cls = type(learner)
    plain = _plain_classes.get(cls)
    if plain is None:
        from fastmaml.algorithms.base import MetaLearner

        plain = _plain_classes[cls] = all(getattr(cls, h) is getattr(MetaLearner, h) for h in _HOOKS)
    return plain and supports(learner.module)


def _explicit(learner, loss_fn: LossFn, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor):
    """fastmaml/batched_mlp.py's (grads_fn, query_losses) where they compute exactly what the learner
    does (a Linear/ReLU chain, the MSE, no overridden loss hook), else None."""
    if not _is_mse(loss_fn) or not learner_supported(learner):
        return None
    chain = _plan(learner.module).chain
    return None if chain is None else batched_mlp.explicit(chain, sx, sy, qx, qy)


class _BatchedForward:
    """The learner's task_forward, task-batched, for the duration of a `with`."""

    def __init__(self, learner):
        self.learner = learner

    def __call__(self, params, x, buffers, step):
        return forward(self.learner.module, params, x, buffers)

    def __enter__(self):
        # An instance attribute shadows the (not overridden: see learner_supported) method.
        self.learner.__dict__["task_forward"] = self
        return self

    def __exit__(self, *exc):
        self.learner.__dict__.pop("task_forward", None)


def task_losses(learner, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
                loss_fn: LossFn, first_order: bool | None = None) -> Tensor:
    """The [T] query losses after the learner's inner loop, all T tasks at once: the learner's own
    `inner_loop` with params of shape [T, *p.shape] (theta expanded, no copy), `batched_grads`
    (one autograd.grad for all tasks) and `forward`. Same value and meta-gradient as the loop
    path. BatchNorm running statistics (if tracked) are updated per task and the module keeps
    their mean over tasks, as the vmap path does; num_batches_tracked counts T batches per
    forward, as the loop path does."""
    if not supports(learner.module):
        raise ValueError(f"batched.task_losses: the model is not supported: {why_not(learner.module)}")
    T = support_x.shape[0]
    params = {n: p.expand(T, *p.shape) for n, p in learner.params().items()}
    own = list(learner.module.named_buffers())
    buffers = {n: b.expand(T, *b.shape).clone() for n, b in own}
    loss = per_task_loss(loss_fn)
    explicit = _explicit(learner, loss_fn, support_x, support_y, query_x, query_y)
    with torch.enable_grad(), _BatchedForward(learner):
        trajectory = learner.inner_loop(params, support_x, support_y, loss, buffers, first_order=first_order,
                                        grads_fn=batched_grads if explicit is None else explicit[0])
        if explicit is None:
            losses = learner.task_loss(trajectory, query_x, query_y, loss, buffers)
        else:
            losses = explicit[1](trajectory[-1])
    with torch.no_grad():
        for name, b in own:
            new = buffers[name]
            # Statistics: the mean over tasks. Counts (num_batches_tracked): every task's forward
            # is a batch seen, as in the task loop.
            b.copy_(new.mean(0) if b.is_floating_point() else b + (new[0] - b) * T)
    return losses
