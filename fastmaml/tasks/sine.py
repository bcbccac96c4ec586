"""The sine family of the MAML paper: y = A sin(x + phi), A ~ U[0.1, 5], phi ~ U[0, pi],
x ~ U[-5, 5]; K support and Q query points per task."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class SineBatch:
    """A batch of sine tasks.

    Attributes:
        support_x: [T, k_shot, 1] inputs.
        support_y: [T, k_shot, 1] targets.
        query_x: [T, q_query, 1] inputs.
        query_y: [T, q_query, 1] targets.
        amplitude: [T] each task's amplitude.
        phase: [T] each task's phase.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    amplitude: Tensor
    phase: Tensor

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.support_x, self.support_y, self.query_x, self.query_y


class SineTasks:
    """A seeded stream of sine regression tasks.

    Example::

        tasks = SineTasks(k_shot=10, q_query=10, seed=0)
        batch = tasks.sample(25)       # 25 tasks
        maml.meta_loss(*batch.tensors(), F.mse_loss)

    Args:
        k_shot: support points per task.
        q_query: query points per task.
        amplitude: the (low, high) range amplitudes are drawn from.
        phase: the (low, high) range of phases.
        x_range: the (low, high) range of inputs.
        seed: the generator's seed (None: random).
        dtype: the tensors' dtype.
        device: where the tensors go.
    """

    def __init__(self, k_shot: int = 10, q_query: int = 10, amplitude: tuple[float, float] = (0.1, 5.0),
                 phase: tuple[float, float] = (0.0, math.pi), x_range: tuple[float, float] = (-5.0, 5.0),
                 seed: int | None = 0, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> None:
        for name, value in (("k_shot", k_shot), ("q_query", q_query)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        for name, (lo, hi) in (("amplitude", amplitude), ("phase", phase), ("x_range", x_range)):
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise ValueError(f"{name} must be a finite range (low, high) with low <= high, got {(lo, hi)}")
        self.k_shot, self.q_query = k_shot, q_query
        self.amplitude, self.phase, self.x_range = tuple(amplitude), tuple(phase), tuple(x_range)
        self.dtype, self.device = dtype, torch.device(device)
        self.generator = torch.Generator().manual_seed(seed if seed is not None else torch.seed())

    def _uniform(self, shape: tuple[int, ...], bounds: tuple[float, ...]) -> Tensor:
        lo, hi = bounds
        return torch.rand(shape, generator=self.generator, dtype=torch.float64) * (hi - lo) + lo

    def sample(self, num_tasks: int, k_shot: int | None = None, q_query: int | None = None) -> SineBatch:
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be an int >= 1, got {num_tasks!r}")
        k = self.k_shot if k_shot is None else k_shot
        q = self.q_query if q_query is None else q_query
        amplitude = self._uniform((num_tasks,), self.amplitude)
        phase = self._uniform((num_tasks,), self.phase)
        x = self._uniform((num_tasks, k + q, 1), self.x_range)
        y = amplitude[:, None, None] * torch.sin(x + phase[:, None, None])
        cast = lambda t: t.to(self.dtype).to(self.device)  # noqa: E731
        return SineBatch(cast(x[:, :k]), cast(y[:, :k]), cast(x[:, k:]), cast(y[:, k:]), amplitude, phase)

    @staticmethod
    def curve(amplitude: float, phase: float, x: Tensor) -> Tensor:
        return amplitude * torch.sin(x + phase)


def sine_mlp(hidden: int = 40, layers: int = 2) -> torch.nn.Sequential:
    """The MAML paper's regressor: 1-40-40-1 with ReLU.

    Args:
        hidden: the hidden width.
        layers: the number of hidden layers.
    """
    dims = [1] + [hidden] * layers
    modules = []
    for d_in, d_out in zip(dims, dims[1:]):
        modules += [torch.nn.Linear(d_in, d_out), torch.nn.ReLU()]
    modules.append(torch.nn.Linear(dims[-1], 1))
    return torch.nn.Sequential(*modules)
