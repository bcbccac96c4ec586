"""learn2learn.optim.ParameterUpdate."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import Tensor, nn

from fastmaml.faces.compat.learn2learn.utils import gradients


class ParameterUpdate(nn.Module):
    """Like torch.autograd.grad, but each gradient passes through the transform module that
    `transform(param)` built for its parameter (None: the gradient is the update).

    Args:
        parameters: the parameters whose gradients are transformed.
        transform: a callable taking a parameter and returning an nn.Module (or None).
    """

    def __init__(self, parameters: Iterable[Tensor], transform: Callable[[Tensor], nn.Module | None]) -> None:
        super().__init__()
        modules: list[nn.Module] = []
        indices: list[int | None] = []
        for i, param in enumerate(parameters):
            t = transform(param)
            if t is not None and not isinstance(t, nn.Module):
                raise ValueError(f"ParameterUpdate: transform(parameters[{i}]) must return an nn.Module or None, "
                                 f"got {type(t).__name__}")
            indices.append(None if t is None else len(modules))
            if t is not None:
                modules.append(t)
        self.transforms_modules = nn.ModuleList(modules)
        self.transforms_indices = indices

    def forward(self, loss: Tensor, parameters: Iterable[Tensor], create_graph: bool = False,
                retain_graph: bool = False, allow_unused: bool = False,
                allow_nograd: bool = False) -> list[Tensor | None]:
        grads = gradients(loss, list(parameters), create_graph, retain_graph or create_graph, allow_unused,
                          allow_nograd)
        return [g if t is None or g is None else self.transforms_modules[t](g)
                for g, t in zip(grads, self.transforms_indices)]
