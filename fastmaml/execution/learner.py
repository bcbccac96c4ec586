"""`Learner`, what the execution layer reads from a learner: a structural type (a Protocol) that
every `fastmaml.MetaLearner` satisfies, so the layer below the algorithms names it without importing
them. For annotations only: it imports nothing of fastmaml at run time.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Protocol

from torch import Tensor, nn

if TYPE_CHECKING:
    from fastmaml.execution.inner import GradsFn
    from fastmaml.execution.state import ExecutionState
    from fastmaml.functional import LossFn, Params
    from fastmaml.ops.optim import InnerOptimizer


class Learner(Protocol):
    """A learner of the MAML family as the execution layer sees it: its settings and its hooks
    (`fastmaml.MetaLearner` documents each)."""

    module: nn.Module
    inner_lr: float
    inner_steps: int
    first_order: bool
    adapt_names: list[str]
    batching: str
    second_order: str
    hvp_method: str
    example_rank: int | None
    execution_state: ExecutionState
    inner_optimizer: InnerOptimizer | None
    overridden_hooks: frozenset[str]
    training: bool

    def parameters(self) -> Iterator[nn.Parameter]: ...

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]: ...

    def modules(self) -> Iterator[nn.Module]: ...

    def params(self) -> Params: ...

    def inner_rates(self, step: int) -> float | Mapping[str, Tensor]: ...

    def inner_gammas(self, step: int, params: Params, grads: Params) -> Params | None: ...

    def is_first_order(self, step: int) -> bool: ...

    def task_forward(self, params: Params, x: Tensor, buffers: Params | None, step: int | None) -> Tensor: ...

    def support_loss(self, params: Params, x: Tensor, y: Tensor, loss_fn: LossFn, buffers: Params | None,
                     step: int) -> Tensor: ...

    def query_loss(self, params: Params, x: Tensor, y: Tensor, loss_fn: LossFn, buffers: Params | None,
                   step: int | None = None) -> Tensor: ...

    def task_loss(self, trajectory: list[Params], query_x: Tensor, query_y: Tensor, loss_fn: LossFn,
                  buffers: Params | None) -> Tensor: ...

    def inner_loop(self, params: Params, support_x: Tensor, support_y: Tensor, loss_fn: LossFn,
                   buffers: Params | None = None, steps: int | None = None, first_order: bool | None = None,
                   grads_fn: GradsFn = ...) -> list[Params]: ...
