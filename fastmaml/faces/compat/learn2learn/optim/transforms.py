"""learn2learn.optim.transforms: modules that map a parameter's gradient to its update."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

__all__ = ["KroneckerTransform", "ModuleTransform", "ReshapedTransform"]


class ReshapedTransform(nn.Module):
    """Runs `transform` on the gradient viewed as `shape`, and views the result back.

    Args:
        transform: the module applied to the reshaped gradient.
        shape: the shape the gradient is viewed as (may hold one -1).
    """

    def __init__(self, transform: nn.Module, shape: Sequence[int]) -> None:
        super().__init__()
        self.transform = transform
        self.in_shape = shape

    def forward(self, grad: Tensor) -> Tensor:
        return self.transform(grad.view(self.in_shape)).view(grad.shape)


class ModuleTransform:
    """Given a parameter of n elements, builds `module_cls(n, n)` applied to the flattened
    gradient [1, n] (e.g. torch.nn.Linear: a learned dense preconditioner).

    Args:
        module_cls: a callable (in_features, out_features) -> nn.Module, e.g. torch.nn.Linear.
    """

    def __init__(self, module_cls: Callable[[int, int], nn.Module]) -> None:
        self.module_cls = module_cls

    def __call__(self, parameter: Tensor) -> ReshapedTransform:
        n = parameter.numel()
        return ReshapedTransform(self.module_cls(n, n), (1, n))


def kronecker_dims(param: Tensor) -> tuple[int, int]:
    """(n, m) of the matrix a parameter's gradient is viewed as for a Kronecker-factored transform:
    a weight [n, m]; a bias [n] as [n, 1]; a conv weight [out, in, kh, kw] as out blocks of [in, kh*kw].

    Args:
        param: the parameter.
    """
    shape = param.shape
    if len(shape) == 2:
        return shape[0], shape[1]
    if len(shape) == 1:
        return shape[0], 1
    if len(shape) == 4:
        return shape[1], shape[2] * shape[3]
    raise ValueError(f"KroneckerTransform: parameters must be 1-d, 2-d or 4-d, got shape {list(shape)}")


class KroneckerTransform:
    """Given a parameter, builds `kronecker_cls(n=n, m=m, bias=bias, psd=psd)` (e.g.
    l2l.nn.KroneckerLinear) applied to its gradient viewed as [-1, n, m] (see kronecker_dims).

    Args:
        kronecker_cls: a callable (n=, m=, bias=, psd=) -> nn.Module, e.g. l2l.nn.KroneckerLinear.
        bias: passed on as `bias`.
        psd: passed on as `psd`.
    """

    def __init__(self, kronecker_cls: Callable[..., nn.Module], bias: bool = False, psd: bool = True) -> None:
        self.kronecker_cls = kronecker_cls
        self.bias = bias
        self.psd = psd

    def __call__(self, param: Tensor) -> ReshapedTransform:
        n, m = kronecker_dims(param)
        return ReshapedTransform(self.kronecker_cls(n=n, m=m, bias=self.bias, psd=self.psd), (-1, n, m))
