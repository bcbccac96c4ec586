"""Batch norm from primitive ops, for the task-batched (vmap) path.

NOTE: [vmap batch norm] In torch 2.14, second-order gradients through F.batch_norm under
torch.func.vmap + torch.func.grad come out wrong (off by ~1e-3 against the task loop and finite
differences; tests/test_maml.py checks this), while the same maths written with mean/var is exact.
The vmap path therefore runs models containing batch norm under this mode. Running statistics
are updated in place as F.batch_norm does (unbiased variance, momentum).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def batch_norm(x: Tensor, running_mean: Tensor | None, running_var: Tensor | None, weight: Tensor | None = None,
               bias: Tensor | None = None, training: bool = False, momentum: float | None = 0.1,
               eps: float = 1e-5) -> Tensor:
    dims = [0] + list(range(2, x.dim()))
    shape = [1, -1] + [1] * (x.dim() - 2)
    if training:
        mean = x.mean(dims)
        var = x.var(dims, unbiased=False)
        if running_mean is not None and momentum is not None:
            n = x.numel() / x.shape[1]
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                cast(Tensor, running_var).mul_(1 - momentum).add_(momentum * var.detach() * (n / max(n - 1, 1)))
    else:  # F.batch_norm's eval mode: the running statistics are given
        mean, var = cast(Tensor, running_mean), cast(Tensor, running_var)
    y = (x - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + eps)
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


class DecomposedBatchNorm(TorchFunctionMode):
    """Within this mode, F.batch_norm runs as `batch_norm` above."""

    def __torch_function__(self, func: Callable[..., Any], types: Sequence[type], args: Sequence[Any] = (),
                           kwargs: Mapping[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.batch_norm:
            return batch_norm(*args, **kwargs)
        return func(*args, **kwargs)
