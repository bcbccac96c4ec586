"""The one home of the checks of user arguments: each raises an error that names the argument and
says what was expected (the op families check their own operands: fastmaml/ops/checks.py and
csrc/include/fastmaml/operands.h). A leaf module: it imports nothing of fastmaml, so every layer may
use it. A learner passed to a check is read through its settings and `overridden_hooks`.
"""

from __future__ import annotations

import difflib
import math
import weakref
from collections.abc import Mapping
from typing import Protocol

import torch
from torch import Tensor, nn


class _RunState(Protocol):
    example_rank_seen: int | None
    batch_accepted: tuple | None


class _Learner(Protocol):
    """What the checks read from a learner (a `fastmaml.MetaLearner` has it all)."""

    module: nn.Module
    example_rank: int | None
    overridden_hooks: frozenset[str]

    @property
    def execution_state(self) -> _RunState: ...


def check_int(value: object, arg: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{arg} must be an int >= {minimum}, got {value!r}")
    return value


def check_lr(lr: object, arg: str = "inner_lr") -> float:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise TypeError(f"{arg} must be a number, got {type(lr).__name__}")
    if not math.isfinite(lr) or lr < 0:
        raise ValueError(f"{arg} must be a finite number >= 0, got {lr}")
    return float(lr)


def check_rates(lr: object, names: list[str], arg: str = "lr") -> None:
    """A learning rate given by the user: a number, or a dict name -> number or tensor with a rate
    for each of `names`, all finite and >= 0. Checked once at entry (a tensor check is one host
    synchronisation), never per inner step."""
    if not isinstance(lr, Mapping):
        check_lr(lr, arg)
        return
    lack = [n for n in names if n not in lr]
    if lack:
        raise KeyError(f"{arg} has no rate for {lack}")
    for n in names:
        rate = lr[n]
        if isinstance(rate, Tensor):
            if not rate.is_floating_point():
                raise TypeError(f"{arg}[{n!r}] must be a floating-point tensor, got {rate.dtype}")
            bad = rate.detach()
            if not bool(torch.isfinite(bad).all() & (bad >= 0).all()):
                raise ValueError(f"{arg}[{n!r}] must be finite and >= 0 everywhere, got {rate.detach().flatten()[:4].tolist()}...")
        else:
            check_lr(rate, f"{arg}[{n!r}]")


def check_floating(params: Mapping[str, Tensor], arg: str = "model") -> None:
    for name, p in params.items():
        if not p.is_floating_point():
            raise TypeError(f"{arg}: parameter {name!r} has dtype {p.dtype}; meta-learning needs floating-point parameters")


def check_task(x: Tensor, y: Tensor, what: str = "support") -> None:
    """One task's examples: x and y share their first (example) dimension, which is not empty."""
    for arg, t in ((f"{what}_x", x), (f"{what}_y", y)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{arg} must be a Tensor, got {type(t).__name__}")
        if t.dim() == 0:
            raise ValueError(f"{arg} must have an example dimension, got a 0-d tensor")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{what}_x has {x.shape[0]} examples but {what}_y has {y.shape[0]}")
    if x.shape[0] == 0:
        raise ValueError(f"{what} set is empty ({what}_x has shape {list(x.shape)})")


_KNOWN_NAMES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its parameter and buffer names


def check_names(model: nn.Module, tensors: Mapping[str, Tensor], arg: str = "params") -> None:
    """Every key of `tensors` names a parameter or buffer of `model` (cached per model; a miss
    re-reads the model, which may have gained a parameter since)."""
    known = _KNOWN_NAMES.get(model)
    if known is not None and known.issuperset(tensors):
        return
    known = frozenset(n for n, _ in model.named_parameters(remove_duplicate=False)) | \
        frozenset(n for n, _ in model.named_buffers(remove_duplicate=False))
    _KNOWN_NAMES[model] = known
    unknown = [n for n in tensors if n not in known]
    if unknown:
        names = [n for n, _ in model.named_parameters()]
        close = {n: difflib.get_close_matches(n, names, 1) for n in unknown}
        hint = "; ".join(f"did you mean {c[0]!r} for {n!r}?" for n, c in close.items() if c)
        raise ValueError(f"{arg}: {unknown} {'is' if len(unknown) == 1 else 'are'} not a parameter or buffer of "
                         f"the {type(model).__name__}; its parameters are {names}" + (f" ({hint})" if hint else ""))


_BATCH_ARGS = ("support_x", "support_y", "query_x", "query_y")


def check_batch(support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
                learner: _Learner | None = None) -> None:
    """A batch of tasks [T, N, ...]: four tensors with one task count and matching example counts,
    the examples of the rank, dtype and device the learner's model takes (NOTE: [example rank]).
    Runs on every meta-step: a learner remembers the last batch it accepted (shapes, dtypes, devices
    and its model's), so that the same kind of batch again costs ~4 us instead of ~7 (bench/README.md)."""
    tensors = (support_x, support_y, query_x, query_y)
    for name, t in zip(_BATCH_ARGS, tensors):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
        if t.dim() < 2:
            raise ValueError(f"{name} must have a leading task dimension and an example dimension, got shape {list(t.shape)}")
    accepted = None
    if learner is not None:  # first: one task's [N, ...] would otherwise read as a task-count mismatch
        first = _first_layer(learner)
        weight = getattr(first, "weight", None)
        if isinstance(weight, Tensor) and support_x.dtype == query_x.dtype == weight.dtype:  # (else autocast decides)
            accepted = (support_x.shape, support_y.shape, query_x.shape, query_y.shape, support_x.dtype,
                        support_x.device, query_x.device, weight.device, learner.example_rank)
            if accepted == learner.execution_state.batch_accepted:
                return
        _check_example_rank(learner, first, support_x, 2, "meta_loss", "support_x")
        if query_x is not support_x:  # Reptile passes its support set as both
            _check_example_rank(learner, first, query_x, 2, "meta_loss", "query_x")
    shapes = [t.shape for t in tensors]
    if not shapes[0][0] == shapes[1][0] == shapes[2][0] == shapes[3][0]:
        tasks = {name: shape[0] for name, shape in zip(_BATCH_ARGS, shapes)}
        raise ValueError(f"support and query must have the same number of tasks (leading dimension), got {tasks}")
    if shapes[0][0] == 0:
        raise ValueError("the batch of tasks is empty")
    for what, x, y in (("support", shapes[0], shapes[1]), ("query", shapes[2], shapes[3])):
        if x[1] != y[1]:
            raise ValueError(f"{what}_x has {x[1]} examples per task but {what}_y has {y[1]}")
    if shapes[0][1] == 0:
        raise ValueError(f"the support set is empty (support_x has shape {list(shapes[0])})")
    if learner is not None and accepted is not None:
        learner.execution_state.batch_accepted = accepted


# NOTE: [example rank] A batch of tasks [T, N, ...] and one task [N, ...] differ only in rank, and most
# models accept both (nn.Linear takes any leading dimensions), so `adapt` given a batch would merge
# its tasks and `meta_loss` given one task would split it into N one-example tasks. The rank of one
# example is therefore known and checked: `learner.example_rank` if set; else from the model's first
# layer (in registration order): 1 for nn.Linear (a feature vector), d + 1 for a d-dimensional
# convolution ([C, *spatial]); else the rank of the first examples seen. Models whose examples are,
# e.g., sequences [L, F] into a Linear set `learner.example_rank = 2`.
_FIRST_LAYER_RANK = ((nn.Linear, 1), (nn.Conv1d, 2), (nn.Conv2d, 3), (nn.Conv3d, 4))


_FIRST_LAYERS: weakref.WeakKeyDictionary[nn.Module, nn.Module | None] = weakref.WeakKeyDictionary()  # model -> its first layer


def _first_layer(learner: _Learner) -> nn.Module | None:
    """The model's first module with parameters of its own, found at the model's first check (the
    walk over the modules would otherwise run on every meta_loss)."""
    model = learner.module
    if model not in _FIRST_LAYERS:
        _FIRST_LAYERS[model] = next((m for m in model.modules() if any(True for _ in m.parameters(recurse=False))), None)
    return _FIRST_LAYERS[model]


def _example_rank(learner: _Learner, first: nn.Module | None) -> tuple[int | None, str]:
    rank = learner.example_rank
    if rank is not None:
        return rank, "learner.example_rank"
    for kind, rank in _FIRST_LAYER_RANK:
        if isinstance(first, kind):
            return rank, f"the model's first layer, {type(first).__name__}"
    return learner.execution_state.example_rank_seen, "the examples of an earlier call"


def check_example_rank(learner: _Learner, x: Tensor, task_dims: int, where: str, arg: str = "support_x") -> None:
    """NOTE: [example rank]; `task_dims`: 2 for a batch [T, N, ...], 1 for one task [N, ...]. Also
    checks what the first layer can tell without running it: x's floating dtype and device are the
    parameters', and its features (Linear) or channels (ConvNd) are the layer's."""
    _check_example_rank(learner, _first_layer(learner), x, task_dims, where, arg)


def _check_example_rank(learner: _Learner, first: nn.Module | None, x: Tensor, task_dims: int, where: str,
                        arg: str) -> None:
    weight = getattr(first, "weight", None)
    if isinstance(weight, Tensor):
        if x.is_floating_point() and x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise ValueError(f"{where}: {arg} has dtype {x.dtype} but the model's parameters are {weight.dtype}: "
                             f"convert one of them (e.g. {arg}.to({weight.dtype}))")
        if x.device != weight.device:
            raise ValueError(f"{where}: {arg} is on {x.device} but the model is on {weight.device}")
    rank = x.dim() - task_dims
    expected, source = _example_rank(learner, first)
    if expected is None:
        learner.execution_state.example_rank_seen = rank
        return
    if rank == expected:
        if "task_forward" in learner.overridden_hooks:
            return  # the input may be changed on its way to the layer (CAVIA concatenates its context)
        if isinstance(first, nn.Linear) and expected == 1 and x.shape[-1] != first.in_features:
            raise ValueError(f"{where}: {arg} has {x.shape[-1]} features (shape {list(x.shape)}) but the model's first "
                             f"layer, Linear, takes {first.in_features}")
        if isinstance(first, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and x.shape[task_dims] != first.in_channels:
            raise ValueError(f"{where}: {arg} has {x.shape[task_dims]} channels (shape {list(x.shape)}) but the "
                             f"model's first layer, {type(first).__name__}, takes {first.in_channels}")
        return
    shape = list(x.shape)
    if where == "adapt":
        hint = ("it looks like a batch of tasks [T, N, ...]: adapt one task at a time, or use meta_loss"
                if rank == expected + 1 else "give one task's examples [N, ...]")
        layout = f"one task [N, ...] with examples of rank {expected}"
    else:
        hint = ("it looks like one task's [N, ...]: add the task dimension (x[None]) or use adapt"
                if rank == expected - 1 else "give a batch of tasks [T, N, ...]")
        layout = f"a batch of tasks [T, N, ...] with examples of rank {expected}"
    raise ValueError(f"{where}: {arg} has shape {shape} but takes {layout} (from {source}); {hint}. "
                     f"Set learner.example_rank if the model's examples have another rank")
