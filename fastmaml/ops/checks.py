"""Argument checks of the fused update, with errors naming the argument and the index (the Python
twin of the C++ checks in csrc/include/fastmaml/operands.h; NOTE: [update operands])."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from fastmaml.ops.operands import BROADCAST, LISTS


def _describe(names: Sequence[str] | None, i: int) -> str:
    return f"[{i}] ({names[i]!r})" if names is not None else f"[{i}]"


def check_update_args(fn: str, params: Any, grads: Any, lrs: Any, gammas: Any, alpha: Any,
                      names: Sequence[str] | None = None) -> None:
    """Raise a ValueError/TypeError naming the argument and index on any malformed input.

    Args:
        fn: the op's name in messages.
        params: the params list.
        grads: the grads list.
        lrs: the per-tensor rates, or None.
        gammas: the forget factors, or None.
        alpha: the scalar rate.
        names: the params' names, for messages.
    """
    lists = dict(zip(LISTS, (params, grads, lrs, gammas)))
    for arg, seq in lists.items():
        if seq is not None and (isinstance(seq, Tensor) or not isinstance(seq, Sequence)):
            raise TypeError(f"{fn}: {arg} must be a list of tensors, got {type(seq).__name__}")
    n = len(params)
    for arg, seq in lists.items():
        if seq is not None and len(seq) != n:
            raise ValueError(f"{fn}: {arg} has {len(seq)} tensors but params has {n}")
    if isinstance(alpha, Tensor) or not isinstance(alpha, (int, float)):
        raise TypeError(f"{fn}: lr must be a Python number or a list of tensors, got {type(alpha).__name__}")
    if not math.isfinite(alpha):
        raise ValueError(f"{fn}: lr must be finite, got {alpha}")
    for i in range(n):
        p = params[i]
        where = _describe(names, i)
        if not isinstance(p, Tensor):
            raise TypeError(f"{fn}: params{where} must be a Tensor, got {type(p).__name__}")
        if not p.is_floating_point():
            raise TypeError(f"{fn}: params{where} must be floating point, got {p.dtype}")
        for arg, seq in lists.items():
            if seq is None or arg == "params":
                continue
            t = seq[i]
            if not isinstance(t, Tensor):
                raise TypeError(f"{fn}: {arg}{where} must be a Tensor, got {type(t).__name__}")
            if arg not in BROADCAST and t.shape != p.shape:
                raise ValueError(f"{fn}: {arg}{where} has shape {list(t.shape)} but params{where} has {list(p.shape)}")
            if t.dtype != p.dtype:
                raise TypeError(f"{fn}: {arg}{where} has dtype {t.dtype} but params{where} has {p.dtype}")
            if t.device != p.device:
                raise ValueError(f"{fn}: {arg}{where} is on {t.device} but params{where} is on {p.device}")
            if arg not in BROADCAST:
                continue
            try:
                shape = torch.broadcast_shapes(t.shape, p.shape)
            except RuntimeError:
                shape = None
            if shape != p.shape:
                raise ValueError(
                    f"{fn}: {arg}{where} has shape {list(t.shape)}, which does not broadcast to "
                    f"params{where} shape {list(p.shape)}"
                )
