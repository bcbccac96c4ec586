"""The compiled kernels (`fastmaml._C`, built from csrc/): one dispatched op per update, whatever
the number of tensors, on CPU (at::vec + at::parallel_for) and CUDA (multi-tensor apply).

Without the extension this backend is unavailable, and `import_error` says why (`fastmaml info`).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType

import torch
from torch import Tensor
from torch._C import _AutoDispatchBelowAutograd as _DispatchBelowAutograd
from torch._C._functorch import peek_interpreter_stack

from fastmaml.ops import _autograd

try:
    # by name: the extension has no Python source, and `from fastmaml import _C` would read, to the
    # import-linter contract (pyproject.toml), as this bottom layer importing the whole package
    _C: ModuleType | None = importlib.import_module("fastmaml._C")
except ImportError as error:  # not built (FASTMAML_NO_EXT=1), or built against another torch
    _C = None
    import_error: str | None = f"{type(error).__name__}: {error}"
else:
    import_error = None
    _autograd.register("fastmaml", compiled=True)
    _OP = torch.ops.fastmaml.fused_update.default


def cuda_kernels_built() -> bool:
    """Whether the extension was compiled with its CUDA kernels."""
    return _C is not None and bool(_C.WITH_CUDA)


def is_available(device: torch.device) -> bool:
    """Whether the compiled update runs on `device` (runs a two-element update)."""
    if _C is None or (device.type == "cuda" and not cuda_kernels_built()):
        return False
    try:
        p = torch.ones(2, device=device)
        out = torch.ops.fastmaml.fused_update([p], [p], None, None, 0.5)[0]
        return bool((out == 0.5).all())
    except (RuntimeError, NotImplementedError):
        return False


def update(params: Sequence[Tensor], grads: Sequence[Tensor], lrs: Sequence[Tensor] | None,
           gammas: Sequence[Tensor] | None, alpha: float) -> list[Tensor]:
    # Straight to the op: its C++ Autograd kernel (csrc/autograd.cpp) records the node only when a
    # gradient is wanted, and the dispatcher handles torch.func, torch.compile and forward AD.
    return _OP(params, grads, lrs, gammas, alpha)


def update_(params: Sequence[Tensor], grads: Sequence[Tensor], lrs: Sequence[Tensor] | None,
            gammas: Sequence[Tensor] | None, alpha: float) -> None:
    """In place; never recorded by autograd (callers need no torch.no_grad())."""
    if peek_interpreter_stack() is None:
        with _DispatchBelowAutograd():
            torch.ops.fastmaml.fused_update_.default(params, grads, lrs, gammas, alpha)
        return
    with torch.no_grad():
        torch.ops.fastmaml.fused_update_.default(params, grads, lrs, gammas, alpha)
