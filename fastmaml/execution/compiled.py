"""The compiled meta-step: the whole meta-gradient as one graph optimised by torch.compile.

For a batch of tasks the traced function is

    losses, d(w . losses)/d meta = grad(w . vmap(task_loss)(meta, buffers, sx, sy, qx, qy))(meta)

where task_loss is the learner's own inner loop (its hooks: rates, forget factors, first-order
steps, task loss) with the inner gradients by torch.func.grad and the updates through
fastmaml.ops, and `meta` are all the learner's parameters (the model's and the algorithm's:
Meta-SGD's rates, ALFA's generators), substituted by torch.func.functional_call. The inner
gradients and the outer one are traced, so second order needs no double backward through
aot_autograd at run time. The losses leave through HandGradLosses (NOTE: [hand meta-gradient],
fastmaml/execution/hvp_mode.py): `loss.backward()` puts the precomputed gradient on the
parameters. The step runs with w = 1/T, what `meta_loss`'s mean passes back, so that gradient is
handed over as it is (no multiply, no copy: bench/README.md measured the hand-over); another
uniform incoming gradient (a sum) scales it, and a non-uniform one runs the same compiled graph
again with w = that gradient.

The inner updates inside the graph are the update family's reference form (plain PyTorch, p - a * g
and its forget form), which Inductor fuses with the gradient computation around it, whatever backend
the eager modes use: the native op is opaque to Inductor (a call it cannot fuse: the sine step took
~20% longer with it, bench/README.md), and the dispatcher's lookup of an unloaded backend cannot be
traced, so the reference module is loaded first and chosen while the graph runs.

On a GPU, `fastmaml.compile(learner, cuda_graphs=True)` has Inductor replay the graph as CUDA
graphs (NOTE: [compiled buffers], NOTE: [cuda graph outputs] below).

One compiled function per (learner, loss_fn, inner order, outer gradient or not, CUDA graphs or not); torch.compile
guards and recompiles it per shape, dtype, device and hook state (dynamic=False: one graph per
shape). Inductor's on-disk cache (TORCHINDUCTOR_CACHE_DIR, default under /tmp) lets a second
process skip most of the compilation (bench/bench_compile_cache.py measures it). `batching="auto"`
weighs this path only for a learner given a horizon (NOTE: [auto compiled] in execution/auto.py),
which asks `is_compiled` whether a shape has its graph already.

    losses = compiled_task_losses(learner, sx, sy, qx, qy, loss_fn)   # [T], differentiable
"""

from __future__ import annotations

import itertools
import os
import sys
import types
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from fastmaml import functional as F, ops
from fastmaml.execution import buffers as B, hooks
from fastmaml.execution.aoti import AotiStep, inductor_configs
from fastmaml.execution.batchnorm import DecomposedBatchNorm, has_batch_norm
from fastmaml.execution.hvp_mode import HandGradLosses
from fastmaml.execution.learner import Learner
from fastmaml.functional import LossFn, Params

Batch = tuple[Tensor, Tensor, Tensor, Tensor]


def supported(learner: Learner) -> str | None:
    """None when `learner` can take the compiled path, else why not (a sentence). The path runs the
    learner's own hooks under vmap, so every hook is covered; a learner with its own meta_loss
    (iMAML) never reaches the execution layer's modes.

    Args:
        learner: a MetaLearner.
    """
    why = hooks.why_not(learner, "compiled")
    if why is not None:
        return why
    if learner.second_order != "autograd":
        return f"second_order={learner.second_order!r} has its own meta-gradient"
    return None


class _TaskLosses(nn.Module):
    """forward(buffers, sx, sy, qx, qy) -> [T] query losses; run under functional_call so that
    the learner's parameters are the traced inputs."""

    def __init__(self, learner: Learner, loss_fn: LossFn, first_order: bool | None) -> None:
        super().__init__()
        self.learner, self.loss_fn, self.first_order = learner, loss_fn, first_order

    def forward(self, buffers: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        learner, loss_fn = self.learner, self.loss_fn
        params = learner.params()

        def one_task(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor, buffers: Params) -> Tensor:
            trajectory = learner.inner_loop(params, sx, sy, loss_fn, buffers, first_order=self.first_order,
                                            grads_fn=F.func_grads)
            return learner.task_loss(trajectory, qx, qy, loss_fn, buffers)

        return torch.func.vmap(one_task, randomness="different")(sx, sy, qx, qy, buffers)


_CUDA_GRAPHS_BACKEND = "cuda_graphs=True needs backend='inductor' (Inductor replays its graph as CUDA graphs), got backend={backend}"


def _build(learner: Learner, loss_fn: LossFn, first_order: bool | None, outer: bool,
           backend: str | Callable, cuda_graphs: bool) -> Callable:
    runner = _TaskLosses(learner, loss_fn, first_order)
    bn = DecomposedBatchNorm if has_batch_norm(learner.module) else None

    def losses_of(meta: Params, buffers: Params, batch: tuple[Tensor, ...]) -> tuple[Tensor, Params]:
        """The [T] losses and the module's buffers after the tasks (NOTE: [compiled buffers])."""
        tensors = {f"learner.{n}": t for n, t in meta.items()}
        copies = B.stacked(buffers, batch[0].shape[0])
        if bn is None:
            losses = torch.func.functional_call(runner, tensors, (copies, *batch))
        else:
            with bn():  # NOTE: [vmap batch norm] in fastmaml/execution/batchnorm.py
                losses = torch.func.functional_call(runner, tensors, (copies, *batch))
        return losses, B.merged(buffers, copies)

    step: Callable
    if not outer:
        def step(meta: Params, buffers: Params, weights: Tensor | None, *batch: Tensor) -> tuple[Tensor, Params]:
            return losses_of(meta, buffers, batch)
    else:
        def weighted(meta: Params, buffers: Params, weights: Tensor,
                     batch: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, Params]]:
            losses, new_buffers = losses_of(meta, buffers, batch)
            return (losses * weights).sum(), (losses.detach(), new_buffers)

        def step(meta: Params, buffers: Params, weights: Tensor, *batch: Tensor) -> tuple[Params, Tensor, Params]:
            grads, (losses, new_buffers) = torch.func.grad(weighted, has_aux=True)(meta, buffers, weights, batch)
            return grads, losses, new_buffers

    if cuda_graphs and backend != "inductor":
        raise ValueError(_CUDA_GRAPHS_BACKEND.format(backend=repr(backend)))
    if backend == "aoti":  # ahead of time, keyed by fastmaml itself (NOTE: [aoti keys] in execution/aoti.py)
        return AotiStep(step, learner)
    options: dict[str, Any] | None = inductor_configs() if backend == "inductor" else None
    if cuda_graphs and options is not None:  # what mode="reduce-overhead" sets (torch.compile: a mode or options)
        options["triton.cudagraphs"] = True
    return torch.compile(_own_code(step), fullgraph=True, dynamic=False, backend=backend, options=options)


_ids = itertools.count()


def _own_code(fn: Callable) -> Callable:
    """`fn` with a code object of its own. Dynamo caches compiled graphs per code object, at most
    8 of them (recompile_limit), and checks their guards one after another on every call: every
    learner, loss and order gets its own step, so each must get its own cache."""
    code = fn.__code__.replace(co_name=f"compiled_meta_step_{next(_ids)}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


class _Step:
    """One compiled function and the batch signatures it ran (compiled) for. Calls run it with the
    inner updates in their reference form (see the module docstring).

    NOTE: [compiled buffers] The step takes the module's buffers and returns what they become (the
    [buffer rule] written functionally: the per-task copies are made and merged inside the graph),
    which the caller copies into the module. A graph that changed its inputs in place could not
    be replayed as CUDA graphs.

    NOTE: [cuda graph outputs] A step compiled with CUDA graphs (Inductor's CUDA graph trees) returns
    tensors in the graph's own memory, which its next replay overwrites (torch then refuses to read
    them). The meta-gradient outlives the call (in `.grad`, in HandGradLosses until backward), so
    every CUDA output except the buffers (last, copied into the module at once) is copied out: the
    meta-gradient and the losses, by one multi-tensor copy."""

    def __init__(self, fn: Callable, cuda_graphs: bool = False) -> None:
        self.fn, self.cuda_graphs = fn, cuda_graphs
        self.warned_cpu = False
        self.signatures: set[tuple] = set()
        ops.UPDATE.load("reference")  # imported before the trace, which only reads the loaded module

    def __call__(self, *args: Any) -> Any:
        if isinstance(self.fn, AotiStep):  # traces only when it compiles, under the reference backend itself
            return self.fn(*args)
        with ops.use_backend("reference"):  # Dynamo may trace at any call (a recompilation)
            out = self.fn(*args)
        if not self.cuda_graphs:
            return out
        if not self.warned_cpu and not args[-1].is_cuda:
            self.warned_cpu = True
            warnings.warn("fastmaml.compile(..., cuda_graphs=True): the batch is not on a CUDA device, so the "
                          "compiled step runs without CUDA graphs (as with cuda_graphs=False)", RuntimeWarning,
                          stacklevel=_first_frame_outside_fastmaml())
        return (*_copied_out(out[:-1]), out[-1])


def _first_frame_outside_fastmaml() -> int:
    """warnings.warn's stacklevel, for its caller here, of the nearest frame outside fastmaml and
    torch: the user's line, however many calls lie between (meta_backward, meta_loss, torch's
    wrappers that keep them out of a graph the user compiles)."""
    packages = tuple(os.path.dirname(os.path.abspath(str(m.__file__))) + os.sep for m in (sys.modules["fastmaml"], torch))
    frame: types.FrameType | None = sys._getframe(2)  # the caller of warnings.warn is level 1
    level = 2
    while frame is not None and frame.f_code.co_filename.startswith(packages):
        frame, level = frame.f_back, level + 1
    return level


def _copied_out(outputs: tuple) -> tuple:
    """`outputs` with each CUDA tensor copied out of the graph's memory (NOTE: [cuda graph outputs]),
    by one multi-tensor copy rather than one copy kernel per tensor."""
    leaves, spec = torch.utils._pytree.tree_flatten(outputs)
    graph_owned = [i for i, t in enumerate(leaves) if isinstance(t, Tensor) and t.is_cuda]
    if not graph_owned:  # a step on the CPU: no graph memory
        return outputs
    copies = [torch.empty_like(leaves[i]) for i in graph_owned]
    torch._foreach_copy_(copies, [leaves[i] for i in graph_owned])
    for i, t in zip(graph_owned, copies):
        leaves[i] = t
    return torch.utils._pytree.tree_unflatten(leaves, spec)


def _signature(learner: Learner, batch: Batch) -> tuple:
    return tuple((t.shape, t.dtype, t.device) for t in batch) + (learner.training,)


def _compiled(learner: Learner, loss_fn: LossFn, first_order: bool | None, outer: bool,
              backend: str | Callable, cuda_graphs: bool) -> _Step:
    cache = learner.execution_state.compiled
    key = (loss_fn, first_order, outer, backend, cuda_graphs)
    if key not in cache:
        cache[key] = _Step(_build(learner, loss_fn, first_order, outer, backend, cuda_graphs), cuda_graphs)
    return cache[key]


def is_compiled(learner: Learner, batch: Batch, loss_fn: LossFn) -> bool:
    """Whether `learner` ran its compiled meta-step (with gradient, its own inner order) on a batch
    of this signature, so that running it again does not compile.

    Args:
        learner: a MetaLearner.
        batch: (sx, sy, qx, qy).
        loss_fn: loss_fn(output, y) -> scalar.
    """
    state = learner.execution_state
    step = state.compiled.get((loss_fn, None, True, state.compile_backend, state.compile_cuda_graphs))
    return step is not None and _signature(learner, batch) in step.signatures


class _Solver:
    """HandGradLosses' solver: the compiled step gives the losses and the meta-gradient of their
    mean at once (weights 1/T, what `meta_loss`'s default reduction passes back); backward hands
    it over as it is for that incoming gradient, scales it for another uniform one, and reruns the
    step with the incoming gradient as weights otherwise."""

    def __init__(self, run: _Step, meta: dict[str, Tensor], batch: Batch, module: nn.Module) -> None:
        self.run, self.meta, self.batch, self.module = run, meta, batch, module
        self.grads: Params | None = None

    def forward(self) -> Tensor:
        self.weights, self.grads, losses = _weighted(self.run, self.meta, self.batch, self.module, "mean")
        return losses

    def backward(self, grad_losses: Tensor) -> list[Tensor]:
        grads, self.grads = self.grads, None  # handed over, not copied (AccumulateGrad takes them)
        assert grads is not None
        if torch.equal(grad_losses, self.weights):
            return [grads.pop(n) for n in self.meta]
        first = grad_losses.reshape(-1)[:1]
        if torch.equal(grad_losses, first.expand_as(grad_losses)):
            c = first.reshape(()) * grad_losses.shape[0]  # the traced weights are 1/T
            return [grads.pop(n) * c for n in self.meta]
        # non-uniform weights over tasks: the same graph with w = grad_losses (the buffers it returns
        # are dropped: the forward stored the step's)
        grads, _, _ = self.run(self.meta, dict(self.module.named_buffers()), grad_losses.detach(), *self.batch)
        return [grads[n] for n in self.meta]


def _weighted(run: _Step, meta: dict[str, Tensor], batch: Batch, module: nn.Module,
              reduction: str) -> tuple[Tensor, Params, Tensor]:
    """(weights, meta-gradient of the weighted sum of the losses, losses) by the compiled step with
    weights 1/T ("mean") or 1 ("sum"); the buffers it returns stored in `module`."""
    p = next(iter(meta.values()))  # the losses' dtype and device are the parameters'
    tasks = batch[0].shape[0]
    weights = torch.full((tasks,), 1 / tasks if reduction == "mean" else 1.0, dtype=p.dtype, device=p.device)
    grads, losses, buffers = run(meta, dict(module.named_buffers()), weights, *batch)
    B.assign(module, buffers)
    return weights, grads, losses


def _direct(params: list[Tensor]) -> bool:
    """NOTE: [direct meta-gradient] `meta_backward` in the compiled mode runs the step with the
    reduction's weights and adds its meta-gradient to `.grad` itself, as AccumulateGrad would at
    the end of `meta_loss(...).backward()` (a None `.grad` takes the tensor, another is added to in
    place), without the autograd engine's run over the reduction, the HandGradLosses node and one
    AccumulateGrad per parameter (~0.12 ms of a 0.66 ms sine step, bench/README.md). Hooks on a
    parameter are autograd's to run: a learner with any (or with no parameter requiring grad, which
    backward refuses) takes the autograd hand-over instead."""
    trainable = False
    for p in params:
        if p._backward_hooks or p._post_accumulate_grad_hooks:
            return False
        trainable = trainable or p.requires_grad
    return trainable


def compiled_meta_backward(learner: Learner, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor, loss_fn: LossFn,
                           reduction: str, backend: str | Callable = "inductor", cuda_graphs: bool = False) -> Tensor:
    """The meta-loss (detached) after the compiled step's meta-gradient is added to the parameters'
    `.grad`: directly (NOTE: [direct meta-gradient]), or by `compiled_task_losses(...).mean()` (or
    .sum()) `.backward()` where a parameter hook needs autograd. The same gradient either way.

    Args:
        learner: a MetaLearner the compiled meta-step covers.
        sx: [T, N, ...] support inputs.
        sy: [T, N, ...] support targets.
        qx: [T, M, ...] query inputs.
        qy: [T, M, ...] query targets.
        loss_fn: loss_fn(output, y) -> scalar.
        reduction: "mean" or "sum" over tasks.
        backend: as `compiled_task_losses`.
        cuda_graphs: as `compiled_task_losses`.
    """
    named = dict(learner.named_parameters())
    if not _direct(list(named.values())):
        losses = compiled_task_losses(learner, sx, sy, qx, qy, loss_fn, backend=backend, cuda_graphs=cuda_graphs)
        loss = losses.mean() if reduction == "mean" else losses.sum()
        loss.backward()
        return loss.detach()
    why = supported(learner)
    if why is not None:
        raise ValueError(f"the compiled meta-step does not cover this learner: {why}")
    batch = (sx, sy, qx, qy)
    meta = {n: p.detach() for n, p in named.items() if p.requires_grad}
    run = _compiled(learner, loss_fn, None, True, backend, cuda_graphs)
    _, grads, losses = _weighted(run, meta, batch, learner.module, reduction)
    with torch.no_grad():
        for n, g in grads.items():
            p = named[n]
            if p.grad is None:
                p.grad = g
            else:
                p.grad.add_(g)
    run.signatures.add(_signature(learner, batch))  # once its graph ran (compiling may fail)
    return losses.mean() if reduction == "mean" else losses.sum()


def compiled_task_losses(learner: Learner, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor, loss_fn: LossFn,
                         first_order: bool | None = None, backend: str | Callable = "inductor",
                         cuda_graphs: bool = False) -> Tensor:
    """The [T] query losses after adaptation by the compiled meta-step, differentiable w.r.t. the
    learner's parameters (their gradient is computed in the same compiled graph). Under
    torch.no_grad only the losses are computed (its own compiled graph).

    Args:
        learner: a MetaLearner the compiled meta-step covers (else a ValueError says why).
        sx: [T, N, ...] support inputs.
        sy: [T, N, ...] support targets.
        qx: [T, M, ...] query inputs.
        qy: [T, M, ...] query targets.
        loss_fn: loss_fn(output, y) -> scalar.
        first_order: overrides the learner's inner order (True: evaluation).
        backend: torch.compile's ("aot_eager" traces the same graph without Inductor's code
            generation: the tests use it to check the maths quickly), or "aoti": the same graph
            compiled ahead of time by AOTInductor (fastmaml/execution/aoti.py).
        cuda_graphs: Inductor's graph replayed as CUDA graphs (backend "inductor" only).
    """
    why = supported(learner)
    if why is not None:
        raise ValueError(f"the compiled meta-step does not cover this learner: {why}")
    batch = (sx, sy, qx, qy)
    named = dict(learner.named_parameters())
    outer = torch.is_grad_enabled() and any(p.requires_grad for p in named.values())
    run = _compiled(learner, loss_fn, first_order, outer, backend, cuda_graphs)
    signature = _signature(learner, batch)
    if not outer:
        with torch.enable_grad():  # the inner steps need gradients, the result does not
            losses, buffers = run({n: p.detach() for n, p in named.items()}, dict(learner.module.named_buffers()),
                                  None, *batch)
        B.assign(learner.module, buffers)
        losses = losses.detach()
    else:
        # Parameters that do not require grad are left to functional_call, which reads the module's own.
        meta = {n: p for n, p in named.items() if p.requires_grad}
        solver = _Solver(run, {n: p.detach() for n, p in meta.items()}, batch, learner.module)
        losses = HandGradLosses.apply(solver, *meta.values())
    run.signatures.add(signature)  # once its graph ran (compiling may fail)
    return losses


def compile(learner: Learner, backend: str | Callable = "inductor", *, expected_steps: int | None = None,
            cuda_graphs: bool = False) -> Learner:
    """`learner` with its meta-step compiled: batching="compiled", or with `expected_steps`,
    batching="auto" choosing "compiled" per batch signature where it pays back its compilation
    over that many meta-steps (docs/compile.md). A ValueError says why a learner cannot take the
    compiled step. The first compiled call per shape compiles (tens of seconds). Returns the learner.

    Args:
        learner: a MetaLearner the compiled meta-step covers.
        backend: torch.compile's backend ("inductor", ...), or "aoti": the step compiled ahead of
            time by AOTInductor, called without Dynamo, its packages kept on disk for the next
            process (NOTE: [aoti keys] in fastmaml/execution/aoti.py says what it is keyed by).
        expected_steps: the meta-steps (with gradient) expected per batch signature: "auto" weighs
            the compilation against them (NOTE: [auto compiled] in fastmaml/execution/auto.py).
            None: always "compiled".
        cuda_graphs: replay the compiled step as CUDA graphs (Inductor's CUDA graph trees, what
            torch.compile's mode="reduce-overhead" turns on): one launch for the graph's kernels
            instead of one each, for steps whose kernels are too short to hide their launches
            (small models, few tasks). Needs backend="inductor"; inputs are copied into the graph's
            own memory and its outputs out of it (NOTE: [cuda graph outputs]). Where Inductor
            cannot replay a step as CUDA graphs (on the CPU) it runs it as it would without, and
            says why in its log (docs/compile.md).
    """
    why = supported(learner)
    if why is not None:
        raise ValueError(f"fastmaml.compile: {why}")
    if expected_steps is not None and (isinstance(expected_steps, bool) or not isinstance(expected_steps, int)
                                       or expected_steps < 1):
        raise ValueError(f"fastmaml.compile: expected_steps must be an int >= 1 or None, got {expected_steps!r}")
    if not isinstance(cuda_graphs, bool):
        raise ValueError(f"fastmaml.compile: cuda_graphs must be True or False, got {cuda_graphs!r}")
    if cuda_graphs and backend != "inductor":
        raise ValueError("fastmaml.compile: " + _CUDA_GRAPHS_BACKEND.format(backend=repr(backend)))
    if backend == "aoti" and not hasattr(torch._inductor, "aoti_compile_and_package"):
        raise ValueError(f"fastmaml.compile: backend='aoti' needs torch's AOTInductor packaging (torch >= 2.6), "
                         f"not in torch {torch.__version__}")
    learner.batching = "compiled" if expected_steps is None else "auto"
    learner.execution_state.compile_backend = backend
    learner.execution_state.compile_horizon = expected_steps
    learner.execution_state.compile_cuda_graphs = cuda_graphs
    return learner
