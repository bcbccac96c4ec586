"""learn2learn.optim.DifferentiableSGD."""

from __future__ import annotations

from torch import Tensor, nn

from fastmaml.faces.compat.learn2learn.algorithms.maml import maml_update


class DifferentiableSGD(nn.Module):
    """Calling it with (module, gradients) sets every parameter p of `module` to p - lr * g,
    differentiably (the module's slots get new tensors), in one fastmaml.ops.update call.
    Without `gradients`, the parameters' `.grad` are used; a None gradient leaves p as it is.

    Args:
        lr: the step size.
    """

    def __init__(self, lr: float) -> None:
        super().__init__()
        self.lr = lr

    def forward(self, module: nn.Module, gradients: list[Tensor | None] | None = None) -> None:
        if gradients is None:
            gradients = [p.grad for p in module.parameters()]
        maml_update(module, self.lr, gradients)
