"""fastmaml under the user's torch.compile (docs/compile.md).

* A torch.compile'd model (`MAML(torch.compile(net))`): the meta-step calls the model functionally,
  inside torch.func transforms and a double backward, which a compiled module does not support
  ("torch.compile with aot_autograd does not currently support double backward") and which
  loses the task-batched path. The learner runs the original module instead (same parameters),
  with a one-time warning pointing to fastmaml.compile.
* A compiled training step calling `meta_loss(...)`: the meta-loss runs eagerly (a graph break,
  torch.compiler.disable), so second order keeps working; the rest of the step is compiled.

Neither imports torch._dynamo: that import costs every `import fastmaml` ~1 s and ~150 MB, and a
process that never compiles does not need it (one that compiles has imported it).
"""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

F = TypeVar("F", bound=Callable[..., Any])


def outside_user_graph(fn: F) -> F:
    """`fn` run outside any graph the user compiles around it: as torch.compiler.disable(fn) once
    torch._dynamo is imported (before that, nothing can be compiling, and `fn` runs as it is)."""
    disabled: Callable[..., Any] | None = None

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        nonlocal disabled
        if "torch._dynamo" not in sys.modules:
            return fn(*args, **kwargs)
        if disabled is None:
            disabled = torch.compiler.disable(fn)
        return disabled(*args, **kwargs)

    run._torchdynamo_disable = True  # type: ignore[attr-defined]  # Dynamo does not inline `run` (a graph break)
    return run  # type: ignore[return-value]


_warned = False


def eager_module(model: nn.Module) -> nn.Module:
    """`model`, or the original module of a torch.compile'd one (warned once per process)."""
    original = getattr(model, "_orig_mod", None)
    if original is None or "torch._dynamo" not in sys.modules:  # no OptimizedModule without Dynamo
        return model
    if not isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
        return model
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            "fastmaml: the model passed to the learner is torch.compile'd; the meta-step runs its original "
            "module (a compiled module cannot be differentiated twice through torch.func). To compile the "
            "whole meta-step, use fastmaml.compile(learner) (docs/compile.md).", RuntimeWarning, stacklevel=3)
    return original
