"""A per-task function over a batch of tasks: by torch.func.vmap, or by a Python loop.

Both give the same results (the loop is the oracle of the vmap path); under vmap a model with batch
norm runs its decomposed form (NOTE: [vmap batch norm] in execution/batchnorm.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from fastmaml.execution.batchnorm import DecomposedBatchNorm, has_batch_norm


class TaskMap:
    """Maps a per-task function over a batch of tasks: torch.func.vmap (`vmapped`) or a Python loop.

    Args:
        module: the model the tasks run (a model with batch norm runs its decomposed form under vmap).
        vmapped: vmap (True) or the loop (False).
    """

    def __init__(self, module: nn.Module, vmapped: bool) -> None:
        self.vmapped = vmapped
        self.bn = vmapped and has_batch_norm(module)

    @property
    def mode(self) -> str:
        return "vmap" if self.vmapped else "loop"

    def context(self) -> AbstractContextManager[object]:
        return DecomposedBatchNorm() if self.bn else contextlib.nullcontext()

    def __call__(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn over dim 0 of every tensor in args (nested dicts allowed); outputs stacked on dim 0.
        In the loop, task t sees views of its slices, so in-place updates (buffers) land in args."""
        if self.vmapped:
            with self.context():
                return torch.func.vmap(fn, randomness="different")(*args)
        flat, spec = tree_flatten(args)
        T = next(t.shape[0] for t in flat if isinstance(t, Tensor))
        outs = [fn(*tree_unflatten([t[i] if isinstance(t, Tensor) else t for t in flat], spec)) for i in range(T)]
        out_flat = [tree_flatten(o) for o in outs]
        return tree_unflatten([torch.stack(col) for col in zip(*[f for f, _ in out_flat])], out_flat[0][1])
