"""Per-tensor pure PyTorch: the oracle every other backend is tested against. Kept plain on purpose."""

from __future__ import annotations

import torch
from torch import Tensor


def is_available(device: torch.device) -> bool:
    return True


def update(params: list[Tensor], grads: list[Tensor], lrs: list[Tensor] | None,
           gammas: list[Tensor] | list[float] | None, alpha: float) -> list[Tensor]:
    out: list[Tensor] = []
    for i in range(len(params)):
        step = grads[i] if lrs is None else lrs[i] * grads[i]
        kept = params[i] if gammas is None else gammas[i] * params[i]
        out.append(kept - alpha * step)
    return out


def update_(params: list[Tensor], grads: list[Tensor], lrs: list[Tensor] | None,
            gammas: list[Tensor] | None, alpha: float) -> None:
    for i in range(len(params)):
        step = grads[i] if lrs is None else lrs[i] * grads[i]
        if gammas is not None:
            params[i].mul_(gammas[i])
        params[i].sub_(alpha * step)
