"""Batched Hessian-vector products: H_t v_t for every task t of a batch at once.

    hv = fastmaml.hvp(loss_of, params, vectors, support_x, support_y)

`loss_of(params, *data)` is ONE task's scalar loss; `params` (dict name -> tensor) holds the
point each task's Hessian is taken at, with a leading task dimension (`params_batched=True`, e.g.
the adapted phi_t of every task) or shared by all tasks (`params_batched=False`, e.g. theta);
`vectors` (dict name -> [T, *param.shape]) holds v_t for the names to differentiate, the other
params being held fixed; `data` are tensors with a leading task dimension (or None). The result
has the keys and shapes of `vectors`. The Hessian is the block over `vectors`' names: pass a zero
vector for a name to get its cross term H_{name, .} v.

Methods (NOTE: [hvp methods]):
  "forward"  forward-over-reverse, torch.func.jvp of torch.func.grad under vmap: one pass
             about twice a gradient's cost, no graph kept
  "reverse"  reverse-over-reverse, torch.func.vjp of torch.func.grad under vmap (the double
             backward), for models whose ops have no forward-mode formula
  "loop"     task by task with torch.autograd.grad(create_graph=True): for models that vmap
             cannot batch either (data-dependent control flow)
  "auto"     the first of these that runs (`hvp_and_grad` reports which one did)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Literal, cast

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

Params = dict[str, Tensor]
Context = Callable[[], AbstractContextManager[Any]]  # a callable returning a context manager
METHODS = ("auto", "forward", "reverse", "loop")
_ORDER = ("forward", "reverse", "loop")


def _check(params: Mapping[str, Tensor], vectors: Mapping[str, Tensor], data: Sequence[Any],
           params_batched: bool) -> int:
    if not isinstance(vectors, Mapping) or not vectors:
        raise ValueError("hvp: vectors must be a non-empty dict name -> tensor")
    missing = [n for n in vectors if n not in params]
    if missing:
        raise KeyError(f"hvp: vectors has {missing}, which params lacks; params has {list(params)}")
    tasks = {n: v.shape[0] if v.dim() else None for n, v in vectors.items()}
    sizes = set(tasks.values())
    if None in sizes or len(sizes) != 1:
        raise ValueError(f"hvp: every vector needs the same leading task dimension, got {tasks}")
    (count,) = sizes
    T = cast(int, count)  # not None: checked above
    for n, v in vectors.items():
        p = params[n]
        shape = tuple(p.shape[1:]) if params_batched else tuple(p.shape)
        if tuple(v.shape[1:]) != shape:
            raise ValueError(f"hvp: vectors[{n!r}] has shape {list(v.shape)}, expected [{T}, *{list(shape)}] "
                             f"(a task dimension, then params[{n!r}]'s shape)")
    if params_batched:
        for n, p in params.items():
            if p.dim() == 0 or p.shape[0] != T:
                raise ValueError(f"hvp: params[{n!r}] has shape {list(p.shape)}; with params_batched=True every "
                                 f"param needs the leading task dimension {T}")
    for i, d in enumerate(data):
        if d is not None and isinstance(d, Tensor) and (d.dim() == 0 or d.shape[0] != T):
            raise ValueError(f"hvp: data[{i}] has shape {list(d.shape)}, expected a leading task dimension {T}")
    return T


def _split(params: Mapping[str, Tensor], names: Iterable[str]) -> tuple[Params, Params]:
    return {n: params[n] for n in names}, {n: p for n, p in params.items() if n not in names}


def _one_task(loss_of: Callable[..., Tensor], method: str) -> Callable[..., tuple[Params, Params]]:
    """(params, vectors, *data) -> (grad, H v) of one task, by forward or reverse mode."""

    def fn(params: Params, vectors: Params, *data: Any) -> tuple[Params, Params]:
        wrt, rest = _split(params, vectors)

        def grad_of(sub: Params) -> Params:
            return torch.func.grad(lambda s, *d: loss_of({**rest, **s}, *d))(sub, *data)

        if method == "forward":
            return cast("tuple[Params, Params]", torch.func.jvp(grad_of, (wrt,), (dict(vectors),)))
        g, vjp_fn = cast("tuple[Params, Callable[[Params], tuple[Params]]]", torch.func.vjp(grad_of, wrt))
        return g, vjp_fn(dict(vectors))[0]  # H is symmetric: v^T H = (H v)^T

    return fn


def _loop(loss_of: Callable[..., Tensor], params: Params, vectors: Params, data: Sequence[Any], params_batched: bool,
          T: int) -> tuple[Params, Params]:
    """Task by task, by double backward through torch.autograd."""
    grads: list[list[Tensor]] = []
    hvs: list[list[Tensor]] = []
    with torch.enable_grad():
        for t in range(T):
            p = {n: (x[t] if params_batched else x).detach() for n, x in params.items()}
            wrt = {n: p[n].requires_grad_() for n in vectors}
            d = [x[t] if isinstance(x, Tensor) else x for x in data]
            loss = loss_of(p, *d)
            got = torch.autograd.grad(loss, list(wrt.values()), create_graph=True, allow_unused=True)
            g = [torch.zeros_like(w) if gi is None else gi for gi, w in zip(got, wrt.values())]
            needs = [gi.requires_grad for gi in g]
            hv: list[Tensor | None] = [None] * len(g)
            if any(needs):
                outs = [gi for gi, k in zip(g, needs) if k]
                vs = [vectors[n][t] for (n, k) in zip(wrt, needs) if k]
                hv = list(torch.autograd.grad(outs, list(wrt.values()), vs, allow_unused=True))
            grads.append([gi.detach() for gi in g])
            hvs.append([torch.zeros_like(w) if h is None else h.detach() for h, w in zip(hv, wrt.values())])
    names = list(vectors)
    stack: Callable[[list[list[Tensor]]], Params] = lambda rows: {n: torch.stack([r[i] for r in rows]) for i, n in enumerate(names)}
    return stack(grads), stack(hvs)


class ForwardADLosses(TorchFunctionMode):
    """NOTE: [hvp methods] In torch 2.14 the forward-mode formula of mse_loss's backward fails
    ("ZeroTensors are immutable") under jvp(grad(...)); within this mode F.mse_loss runs as the
    same maths in primitive ops, which forward mode handles."""

    def __torch_function__(self, func: Callable[..., Any], types: Sequence[type], args: Sequence[Any] = (),
                           kwargs: Mapping[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.nn.functional.mse_loss:
            return _mse_loss(*args, **kwargs)
        return func(*args, **kwargs)


def _mse_loss(input: Tensor, target: Tensor, size_average: bool | None = None, reduce: bool | None = None,
              reduction: str = "mean", weight: Tensor | None = None) -> Tensor:
    if size_average is not None or reduce is not None or weight is not None:
        mse_loss: Callable[..., Tensor] = torch.nn.functional.mse_loss  # `weight`: newer torch only
        return mse_loss(input, target, size_average, reduce, reduction, weight=weight)
    d = (input - target).square()
    return d.mean() if reduction == "mean" else d.sum() if reduction == "sum" else d


def _run(loss_of: Callable[..., Tensor], params: Params, vectors: Params, data: Sequence[Any], params_batched: bool,
         method: str, T: int, context: Context) -> tuple[Params, Params]:
    if method == "loop":
        with context():
            return _loop(loss_of, params, vectors, data, params_batched, T)
    in_dims = (0 if params_batched else None, 0) + tuple(0 if isinstance(d, Tensor) else None for d in data)
    fn = torch.func.vmap(_one_task(loss_of, method), in_dims=in_dims, randomness="different")
    with context(), ForwardADLosses() if method == "forward" else _nullcontext():
        g, hv = fn(dict(params), dict(vectors), *data)
        return g, hv


def hvp_and_grad(loss_of: Callable[..., Tensor], params: Mapping[str, Tensor], vectors: Mapping[str, Tensor],
                 *data: Any, params_batched: bool = True, method: str = "auto",
                 context: Context | None = None) -> tuple[Params, Params, str]:
    """The per-task gradient of `loss_of` and the Hessian-vector products H_t v_t, in one pass.

    The gradient is the primal output of the jvp/vjp. The results are detached: this is for
    meta-gradients computed by hand (see fastmaml/execution/hvp_mode.py), not for differentiating
    through.

    Args:
        loss_of: `(params, *data) -> loss`, the scalar loss of one task.
        params: name -> tensor, [T, ...] per task if params_batched, else shared.
        vectors: name -> [T, ...] vectors v_t; their names are the ones differentiated.
        *data: the tasks' data, each [T, ...].
        params_batched: whether params carry the task dimension.
        method: "auto" or one of `METHODS` (NOTE: [hvp methods]).
        context: a callable returning a context manager entered around the computation (e.g.
            fastmaml.execution.batchnorm.DecomposedBatchNorm for models with batch norm).

    Returns:
        (grads, hvps, method_used): grads and hvps dicts of [T, ...] tensors.
    """
    if method not in METHODS:
        raise ValueError(f"hvp: method must be one of {METHODS}, got {method!r}")
    T = _check(params, vectors, data, params_batched)
    enter: Context = context or _nullcontext
    detached: Params = {n: p.detach() for n, p in params.items()}
    directions: Params = {n: v.detach() for n, v in vectors.items()}
    candidates = _ORDER if method == "auto" else (method,)
    errors: list[str] = []
    for m in candidates:
        try:
            with torch.no_grad() if m != "loop" else _nullcontext():
                g, hv = _run(loss_of, detached, directions, data, params_batched, m, T, enter)
        except Exception as error:
            if method != "auto":
                raise
            errors.append(f"{m}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
            continue
        if errors:
            _warn_once(m, f"fastmaml.hvp: falling back to method={m!r} ({'; '.join(errors)})")
        return {n: x.detach() for n, x in g.items()}, {n: x.detach() for n, x in hv.items()}, m
    raise RuntimeError("fastmaml.hvp: no method could compute the Hessian-vector products:\n  " + "\n  ".join(errors))


def hvp(loss_of: Callable[..., Tensor], params: Mapping[str, Tensor], vectors: Mapping[str, Tensor], *data: Any,
        params_batched: bool = True, method: str = "auto", context: Context | None = None) -> Params:
    """H_t v_t for every task t (see the module docstring).

    Args:
        loss_of: `(params, *data) -> loss`, the scalar loss of one task.
        params: name -> tensor, [T, ...] per task if params_batched, else shared.
        vectors: name -> [T, ...] vectors v_t.
        *data: the tasks' data, each [T, ...].
        params_batched: whether params carry the task dimension.
        method: "auto" or one of `METHODS`.
        context: a callable returning a context manager entered around the computation.

    Returns:
        A dict with `vectors`' keys and shapes (detached).
    """
    return hvp_and_grad(loss_of, params, vectors, *data, params_batched=params_batched, method=method,
                        context=context)[1]


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> Literal[False]:
        return False


_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
