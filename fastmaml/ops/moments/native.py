"""The compiled moments op (`fastmaml::fused_moments`, csrc/include/fastmaml/update_ops.h), one
op per update, and its fused backward (`fastmaml::fused_moments_backward`); the autograd:
moments/_autograd.py."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fastmaml.ops import native as _update_native
from fastmaml.ops.moments import Form, Outputs, _autograd


def _forward(*args: Any) -> Any:
    return torch.ops.fastmaml.fused_moments(*args)


def _backward(*args: Any) -> Any:
    return torch.ops.fastmaml.fused_moments_backward(*args)


KERNELS = _autograd.Kernels(_forward, _backward)


def is_available(device: torch.device) -> bool:
    """Whether the compiled moments op runs on `device` (runs a two-element step).

    Args:
        device: the device to try.
    """
    if _update_native._C is None or not hasattr(torch.ops.fastmaml, "fused_moments"):
        return False
    if device.type not in ("cpu", "cuda") or (device.type == "cuda" and not _update_native.cuda_kernels_built()):
        return False
    try:
        p = torch.ones(2, device=device)
        out = _forward([p], [p], None, None, None, None, 0.5, Form().hyper(0.5, False), 0)[0]
        return bool((out[0] == 0.5).all())
    except (RuntimeError, NotImplementedError):
        return False


def moments(params: list[Tensor], grads: list[Tensor], lrs: list[Tensor] | None, m: list[Tensor] | None,
            v: list[Tensor] | None, b: list[Tensor] | None, alpha: float, form: Form, direction: bool) -> Outputs:
    """(p' or d, m', v', b'): see fastmaml.ops.moments.moments."""
    return _autograd.moments(KERNELS, params, grads, lrs, m, v, b, alpha, form, direction)
