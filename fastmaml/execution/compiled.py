"""The compiled meta-step: the whole meta-gradient as one graph optimised by torch.compile.

For a batch of tasks the traced function is

    losses, d(w . losses)/d meta = grad(w . vmap(task_loss)(meta, buffers, sx, sy, qx, qy))(meta)

where task_loss is the learner's own inner loop (its hooks: rates, forget factors, first-order
steps, task loss) with the inner gradients by torch.func.grad and the updates through
fastmaml.ops, and `meta` are all the learner's parameters (the model's and the algorithm's:
Meta-SGD's rates, L2F's forget nets), substituted by torch.func.functional_call. The inner
gradients and the outer one are traced, so second order needs no double backward through
aot_autograd at run time. The losses leave through HandGradLosses (NOTE: [hand meta-gradient],
fastmaml/algorithms/hvp_meta_grad.py): `loss.backward()` puts the precomputed gradient, scaled by
the incoming gradient, on the parameters. The trace uses w = 1 (mean and sum scale it); any other
incoming gradient runs the same compiled graph again with w = that gradient.

One compiled function per (learner, loss_fn, inner order, outer gradient or not); torch.compile
guards and recompiles it per shape, dtype, device and hook state (dynamic=False: one graph per
shape). Inductor's on-disk cache (TORCHINDUCTOR_CACHE_DIR, default under /tmp) lets a second
process skip most of the compilation (bench/bench_compile_cache.py measures it).

    losses = compiled_task_losses(learner, sx, sy, qx, qy, loss_fn)   # [T], differentiable
"""

from __future__ import annotations

import itertools
import types

import torch
from torch import Tensor, nn

from fastmaml import functional as F, ops
from fastmaml._batchnorm import DecomposedBatchNorm, has_batch_norm
from fastmaml.algorithms.hvp_meta_grad import HandGradLosses, TaskMap
from fastmaml.execution.user_compile import outside_user_graph

# Learners whose meta-step is not the base inner loop + task loss (they override how the loss
# over tasks is formed) cannot take this path.
_OWN_META_LOSS = ("meta_loss", "_vmap_losses")


def supported(learner) -> str | None:
    """None when `learner` can take the compiled path, else why not (a sentence)."""
    from fastmaml.algorithms.base import MetaLearner

    own = [h for h in _OWN_META_LOSS if getattr(type(learner), h) is not getattr(MetaLearner, h)]
    if own:
        return f"{type(learner).__name__} overrides {own}: its meta-step is not the base inner loop"
    if getattr(learner, "second_order", "autograd") != "autograd":
        return f"second_order={learner.second_order!r} has its own meta-gradient"
    return None


class _TaskLosses(nn.Module):
    """forward(buffers, sx, sy, qx, qy) -> [T] query losses; run under functional_call so that
    the learner's parameters are the traced inputs."""

    def __init__(self, learner, loss_fn, first_order: bool | None):
        super().__init__()
        self.learner, self.loss_fn, self.first_order = learner, loss_fn, first_order

    def forward(self, buffers, sx, sy, qx, qy):
        learner, loss_fn = self.learner, self.loss_fn
        params = learner.params()

        def one_task(sx, sy, qx, qy, buffers):
            trajectory = learner.inner_loop(params, sx, sy, loss_fn, buffers, first_order=self.first_order,
                                            grads_fn=F.func_grads)
            return learner.task_loss(trajectory, qx, qy, loss_fn, buffers)

        return torch.func.vmap(one_task, randomness="different")(sx, sy, qx, qy, buffers)


def _build(learner, loss_fn, first_order: bool | None, outer: bool, backend: str):
    runner = _TaskLosses(learner, loss_fn, first_order)
    bn = DecomposedBatchNorm if has_batch_norm(learner.module) else None

    def losses_of(meta, buffers, batch):
        tensors = {f"learner.{n}": t for n, t in meta.items()}
        if bn is None:
            return torch.func.functional_call(runner, tensors, (buffers, *batch))
        with bn():  # NOTE: [vmap batch norm] in fastmaml/_batchnorm.py
            return torch.func.functional_call(runner, tensors, (buffers, *batch))

    if not outer:
        def step(meta, buffers, weights, *batch):
            return losses_of(meta, buffers, batch)
    else:
        def weighted(meta, buffers, weights, batch):
            losses = losses_of(meta, buffers, batch)
            return (losses * weights).sum(), losses.detach()

        def step(meta, buffers, weights, *batch):
            return torch.func.grad(weighted, has_aux=True)(meta, buffers, weights, batch)

    return torch.compile(_own_code(step), fullgraph=True, dynamic=False, backend=backend)


_ids = itertools.count()


def _own_code(fn):
    """`fn` with a code object of its own. Dynamo caches compiled graphs per code object, at most
    8 of them (recompile_limit), and checks their guards one after another on every call: every
    learner, loss and order gets its own step, so each must get its own cache."""
    code = fn.__code__.replace(co_name=f"compiled_meta_step_{next(_ids)}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


def _compiled(learner, loss_fn, first_order, outer, backend):
    cache = learner.__dict__.setdefault("_compiled_steps", {})
    key = (loss_fn, first_order, outer, backend)
    if key not in cache:
        cache[key] = _build(learner, loss_fn, first_order, outer, backend)
    return cache[key]


class _Solver:
    """HandGradLosses' solver: the compiled step gives the losses and the meta-gradient of their
    sum at once; backward scales it (or reruns the step with the incoming gradient as weights)."""

    def __init__(self, run, meta: dict[str, Tensor], buffers, batch, mapper: TaskMap):
        self.run, self.meta, self.buffers, self.batch, self.map = run, meta, buffers, batch, mapper

    def forward(self) -> Tensor:
        p = next(iter(self.meta.values()))  # the losses' dtype and device are the parameters'
        ones = torch.ones(self.batch[0].shape[0], dtype=p.dtype, device=p.device)
        self.grads, losses = self.run(self.meta, self.buffers, ones, *self.batch)
        self.map.store_buffers(self.buffers)
        return losses

    def backward(self, grad_losses: Tensor) -> list[Tensor]:
        grads = self.grads
        first = grad_losses.reshape(-1)[:1]
        if bool((grad_losses == first).all()):
            c = first.reshape(())
            out = [grads[n] * c for n in self.meta]
        else:  # non-uniform weights over tasks: the same graph with w = grad_losses
            buffers = {n: b.clone() for n, b in self.buffers.items()}  # statistics already stored
            grads, _ = self.run(self.meta, buffers, grad_losses.detach(), *self.batch)
            out = [grads[n] for n in self.meta]
        self.grads = None
        return out


def compiled_task_losses(learner, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor, loss_fn,
                         first_order: bool | None = None, backend: str = "inductor") -> Tensor:
    """The [T] query losses after adaptation by the compiled meta-step, differentiable w.r.t. the
    learner's parameters (their gradient is computed in the same compiled graph). `first_order`
    overrides the learner's inner order (True: evaluation). Under torch.no_grad only the losses
    are computed (its own compiled graph). `backend`: torch.compile's ("aot_eager" traces the
    same graph without Inductor's code generation: the tests use it to check the maths quickly)."""
    why = supported(learner)
    if why is not None:
        raise ValueError(f"the compiled meta-step does not cover this learner: {why}")
    # The dispatcher's choice is made here, not in the trace (its first "auto" choice imports and
    # runs backends, which Dynamo cannot trace; so does every call of a non-native backend).
    chosen = ops.resolve_backend(sx.device)
    if chosen != "native":
        raise ValueError(f"the compiled meta-step runs the inner updates through the native backend; the "
                         f"{chosen!r} backend is in force on {sx.device.type} (see `fastmaml info`)")
    mapper = TaskMap(learner, vmapped=True)
    buffers = mapper.task_buffers(sx.shape[0])
    batch = (sx, sy, qx, qy)
    named = dict(learner.named_parameters())
    outer = torch.is_grad_enabled() and any(p.requires_grad for p in named.values())
    run = _compiled(learner, loss_fn, first_order, outer, backend)
    if not outer:
        with torch.enable_grad():  # the inner steps need gradients, the result does not
            losses = run({n: p.detach() for n, p in named.items()}, buffers, None, *batch)
        mapper.store_buffers(buffers)
        return losses.detach()
    # Parameters that do not require grad are left to functional_call, which reads the module's own.
    meta = {n: p for n, p in named.items() if p.requires_grad}
    solver = _Solver(run, {n: p.detach() for n, p in meta.items()}, buffers, batch, mapper)
    return HandGradLosses.apply(solver, *meta.values())


# HOOK (issue 19): until the mode choice of fastmaml/algorithms/base.py offers "compiled", this
# makes one learner's meta_loss take the compiled path. The lead moves it there.
def compile(learner, backend: str = "inductor"):
    """Make `learner.meta_loss` run the compiled meta-step (a ValueError says why a learner cannot);
    returns the learner. The first call per shape compiles (tens of seconds, see docs/compile.md)."""
    from fastmaml.algorithms.base import _check_batch

    why = supported(learner)
    if why is not None:
        raise ValueError(f"fastmaml.compile: {why}")

    @outside_user_graph  # a compiled graph of its own, never traced into the user's
    def meta_loss(support_x, support_y, query_x, query_y, loss_fn, reduction="mean"):
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        _check_batch(support_x, support_y, query_x, query_y)
        learner.batching_used = "compiled"
        first_order = None if torch.is_grad_enabled() else True
        losses = compiled_task_losses(learner, support_x, support_y, query_x, query_y, loss_fn,
                                      first_order, backend)
        return losses.mean() if reduction == "mean" else losses.sum()

    learner.meta_loss = meta_loss
    return learner
