"""learn2learn.algorithms.BaseLearner."""

from __future__ import annotations

from typing import Any, cast

from torch import nn


class BaseLearner(nn.Module):
    """learn2learn's BaseLearner: wraps `self.module`, forwards calls and unknown attributes to it.

    Args:
        module: the wrapped module.
    """

    module: nn.Module | None

    def __init__(self, module: nn.Module | None = None) -> None:
        super().__init__()
        self.module = module

    def __getattr__(self, attr: str) -> Any:
        try:
            return super().__getattr__(attr)
        except AttributeError:
            return getattr(self.__dict__["_modules"]["module"], attr)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return cast(nn.Module, self.module)(*args, **kwargs)
