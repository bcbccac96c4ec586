"""learn2learn.optim.transforms: modules that map a parameter's gradient to its update."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["ModuleTransform", "ReshapedTransform"]


class ReshapedTransform(nn.Module):
    """Runs `transform` on the gradient viewed as `shape`, and views the result back."""

    def __init__(self, transform: nn.Module, shape):
        super().__init__()
        self.transform = transform
        self.in_shape = shape

    def forward(self, grad: Tensor) -> Tensor:
        return self.transform(grad.view(self.in_shape)).view(grad.shape)


class ModuleTransform:
    """Given a parameter of n elements, builds `module_cls(n, n)` applied to the flattened
    gradient [1, n] (e.g. torch.nn.Linear: a learned dense preconditioner)."""

    def __init__(self, module_cls):
        self.module_cls = module_cls

    def __call__(self, parameter: Tensor) -> ReshapedTransform:
        n = parameter.numel()
        return ReshapedTransform(self.module_cls(n, n), (1, n))
