"""torch._foreach_* multi-tensor ops: a few dispatched ops per update, no compiled code of ours.

The _foreach ops have no vmap batching rule, so inside torch.func transforms (the task-batched
path) the same arithmetic runs as per-tensor ops.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch._C._functorch import peek_interpreter_stack


def is_available(device: torch.device) -> bool:
    return True


def _in_transform() -> bool:
    return peek_interpreter_stack() is not None


def update(params: list[Tensor], grads: list[Tensor], lrs: list[Tensor] | None,
           gammas: list[Tensor] | None, alpha: float) -> list[Tensor]:
    if _in_transform():
        out: list[Tensor] = []
        for i in range(len(params)):
            step = grads[i] if lrs is None else lrs[i] * grads[i]
            kept = params[i] if gammas is None else gammas[i] * params[i]
            out.append(torch.add(kept, step, alpha=-alpha))
        return out
    steps = grads if lrs is None else torch._foreach_mul(grads, lrs)
    base = params if gammas is None else torch._foreach_mul(params, gammas)
    return list(torch._foreach_add(base, steps, alpha=-alpha))


def update_(params: list[Tensor], grads: list[Tensor], lrs: list[Tensor] | None,
            gammas: list[Tensor] | None, alpha: float) -> None:
    steps = grads if lrs is None else torch._foreach_mul(grads, lrs)
    if gammas is not None:
        torch._foreach_mul_(params, gammas)
    torch._foreach_add_(params, steps, alpha=-alpha)
