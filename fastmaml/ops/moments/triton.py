"""The moments op on Triton (fastmaml/ops/triton.py's `fused_moments`: one launch per update), on
CUDA and, under the Triton interpreter (TRITON_INTERPRET=1), on CPU. No fused backward: its autograd
(moments/_autograd.py) differentiates the reference ops recomputed."""

from __future__ import annotations

import torch
from torch import Tensor

from fastmaml.ops import triton as _kernels
from fastmaml.ops.moments import Form, Outputs, _autograd

KERNELS = _autograd.Kernels(_kernels.fused_moments, None)


def is_available(device: torch.device) -> bool:
    """Whether the Triton moments kernel runs on `device` (runs a two-element step).

    Args:
        device: the device to try.
    """
    if not _kernels.is_available(device):
        return False
    try:
        p = torch.ones(2, device=device)
        return bool((_kernels.fused_moments([p], [p], None, None, None, None, 0.5, Form().hyper(0.5, False), 0)[0][0]
                     == 0.5).all())
    except Exception:  # noqa: BLE001 (a missing driver or compiler raises many exception types)
        return False


def moments(params: list[Tensor], grads: list[Tensor], lrs: list[Tensor] | None, m: list[Tensor] | None,
            v: list[Tensor] | None, b: list[Tensor] | None, alpha: float, form: Form, direction: bool) -> Outputs:
    """(p' or d, m', v', b'): see fastmaml.ops.moments.moments."""
    return _autograd.moments(KERNELS, params, grads, lrs, m, v, b, alpha, form, direction)
