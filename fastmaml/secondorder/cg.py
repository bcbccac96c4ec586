"""Batched conjugate gradient: solve (I + H_t / lam) x_t = b_t for every task t in lockstep.

    x, report = fastmaml.batched_cg(lambda p: hvp(loss_of, phi, p, *data), b, lam=1.0,
                                       max_iter=10, tol=1e-6)

`matvec(p)` returns H_t p_t for all tasks at once (a dict or list of [T, ...] tensors, e.g.
fastmaml.hvp); `b` is a dict or list of [T, ...] tensors. The operator is

    A_t = (1 + damping) I + H_t / lam

which is symmetric positive definite when H_t + lam (1 + damping) I is. Each task has its own step
sizes alpha_t, beta_t, and stops when its residual ||r_t|| <= max(tol * ||b_t||, atol): the tasks
run in lockstep (one batched matvec per iteration), a converged task's iterate no longer moves.
The vector algebra of an iteration is three fused ops (NOTE: [cg ops] in fastmaml/ops/cg/):

    q = A p, <p, q>           matvec_dot_   (q written over H p)
    x += a p, r -= a q, <r,r> step_
    p = r + b p               direction_

The report gives per task the iterations run, the final residual norm ||r_t|| (of the CG
recurrence) and ||b_t||, whether it converged, and whether it broke down (<p, A p> <= 0: A is not
positive definite for that task, raise lam or damping).

NOTE: [cg breakdown] A task that breaks down returns the iterate of smallest residual it visited
(x0 included), not its last one: on an indefinite A the steps before <p, A p> <= 0 shows can
already be huge (a direction of near-zero curvature gives a huge step size), and iMAML's sine
training went to NaN on such iterates (relative residuals 4-6, docs/imaml.md "Training stability").
So ||A x_t - b_t|| <= ||A x0 - b_t|| (||b_t|| from zero) for every task, and the report's residual
is that iterate's. A task that converges or runs out of budget keeps its last iterate. Tasks that miss the tolerance are reported
by a RuntimeWarning (on_fail="warn"), an error ("raise"), or only in the report ("ignore").
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fastmaml.ops import cg as cg_ops

ON_FAIL = ("warn", "raise", "ignore")


@dataclass
class CGReport:
    """Per-task outcome of `batched_cg` (all tensors have shape [T]).

    Attributes:
        iterations: int64, the iterations in which the task moved.
        residual_norm: ||r_t|| at the end.
        rhs_norm: ||b_t||.
        converged: bool, ||r_t|| <= max(tol ||b_t||, atol).
        breakdown: bool, <p, A p> <= 0 (or not finite) was met; the task returned its iterate of
            smallest residual.
        tol: the relative tolerance asked for.
        atol: the absolute tolerance asked for.
        max_iter: the iteration budget.
    """

    iterations: Tensor      # int64: iterations in which the task moved
    residual_norm: Tensor   # ||r_t|| at the end
    rhs_norm: Tensor        # ||b_t||
    converged: Tensor       # bool: ||r_t|| <= max(tol ||b_t||, atol)
    breakdown: Tensor       # bool: <p, A p> <= 0 (or not finite) was met
    tol: float
    atol: float
    max_iter: int

    @property
    def all_converged(self) -> bool:
        """Whether every task converged."""
        return bool(self.converged.all())

    @property
    def relative_residual(self) -> Tensor:
        """||r_t|| / ||b_t|| per task."""
        return self.residual_norm / self.rhs_norm.clamp_min(torch.finfo(self.rhs_norm.dtype).tiny)

    def failed_tasks(self) -> list[int]:
        """The indices of the tasks that did not converge."""
        return (~self.converged).nonzero().flatten().tolist()

    def summary(self) -> str:
        """One line for people: how many tasks converged, which did not, and what to change."""
        T = self.converged.numel()
        done = int(self.converged.sum())
        text = (f"batched_cg: {done} of {T} tasks reached tol={self.tol:g} (atol={self.atol:g}) within "
                f"max_iter={self.max_iter}; iterations {self.iterations.tolist()}")
        failed = self.failed_tasks()
        if failed:
            rel = [f"{v:.3g}" for v in self.relative_residual[failed].tolist()]
            text += f"; not converged: tasks {failed} (relative residuals {rel})"
        broken = self.breakdown.nonzero().flatten().tolist()
        if broken:
            text += (f"; breakdown (<p, A p> <= 0, the operator is not positive definite) in tasks {broken}: "
                     f"raise lam or damping")
        elif failed:
            text += "; raise max_iter (cg_steps) or damping, or loosen tol"
        return text

    def __str__(self) -> str:
        return self.summary()


Vectors = Mapping[str, Tensor] | Sequence[Tensor]   # a dict or list of [T, ...] tensors


def _as_list(v: object, what: str) -> tuple[list[str] | None, list[Tensor]]:
    if isinstance(v, Mapping):
        return list(v), list(v.values())
    if isinstance(v, Tensor) or not isinstance(v, Sequence):
        raise TypeError(f"batched_cg: {what} must be a dict or list of [T, ...] tensors, got {type(v).__name__}")
    return None, list(v)


def _keep_best(best_x: list[Tensor], best_rs: Tensor, x: list[Tensor], rs: Tensor, active: Tensor) -> None:
    """best_x[t] = x[t] where task t moved to a smaller residual (in place)."""
    better = active & (rs < best_rs)
    if bool(better.any()):
        for bi, xi in zip(best_x, x):
            bi.copy_(torch.where(better.view(-1, *[1] * (xi.dim() - 1)), xi, bi))
        best_rs.copy_(torch.where(better, rs, best_rs))


def batched_cg(
    matvec: Callable[[Any], Vectors],   # takes vectors in the form of b
    b: Vectors,
    *,
    lam: float = 1.0,
    damping: float = 0.0,
    x0: Vectors | None = None,
    max_iter: int = 10,
    tol: float = 1e-6,
    atol: float = 0.0,
    on_fail: str = "warn",
) -> tuple[dict[str, Tensor] | list[Tensor], CGReport]:
    """Solve ((1 + damping) I + H_t / lam) x_t = b_t for every task t by conjugate gradient.

    All tasks run in lockstep; a task stops moving once converged (see the module docstring).

    Args:
        matvec: v -> H v for a batch of vectors in the form of `b` (dict or list of [T, ...] tensors).
        b: the right-hand sides, a dict or list of [T, ...] tensors.
        lam: lambda > 0.
        damping: a finite number >= 0.
        x0: the starting point in the form of b (None: zero).
        max_iter: the iteration budget, an int >= 0.
        tol: the relative residual tolerance.
        atol: the absolute residual tolerance.
        on_fail: tasks not converged "warn", "raise" or are only reported ("ignore").

    Returns:
        (x, report): x in the form of b, and the `CGReport`.

    Raises:
        ValueError: if an argument is out of range, or on_fail="raise" and a task did not converge.
    """
    for arg, value in (("lam", lam), ("damping", damping), ("tol", tol), ("atol", atol)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"batched_cg: {arg} must be a finite number >= 0, got {value!r}")
    if lam == 0:
        raise ValueError("batched_cg: lam must be > 0 (the operator is I + H / lam)")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"batched_cg: max_iter must be an int >= 0, got {max_iter!r}")
    if on_fail not in ON_FAIL:
        raise ValueError(f"batched_cg: on_fail must be one of {ON_FAIL}, got {on_fail!r}")
    names, b_list = _as_list(b, "b")
    T = cg_ops.check_vectors("batched_cg", {"b": b_list})
    c0, c1 = 1.0 + damping, 1.0 / lam

    def apply_h(p: list[Tensor]) -> list[Tensor]:
        out = matvec(dict(zip(names, p)) if names is not None else p)
        _, out = _as_list(out, "matvec(p)")
        if len(out) != len(p):
            raise ValueError(f"batched_cg: matvec returned {len(out)} tensors for {len(p)}")
        # Contiguous buffers that matvec_dot_ may write A p over (never p itself).
        out = [o.detach().contiguous() for o in out]
        return [o.clone() if o.untyped_storage().data_ptr() == pi.untyped_storage().data_ptr() else o
                for o, pi in zip(out, p)]

    with torch.no_grad():
        b_list = [t.detach() for t in b_list]
        if x0 is None:
            x = [torch.zeros_like(t, memory_format=torch.contiguous_format) for t in b_list]
            r = [t.clone(memory_format=torch.contiguous_format) for t in b_list]
        else:
            _, x0_list = _as_list(x0, "x0")
            cg_ops.check_vectors("batched_cg", {"b": b_list, "x0": x0_list})
            x = [t.detach().clone(memory_format=torch.contiguous_format) for t in x0_list]
            ax = apply_h(x)
            cg_ops.matvec_dot_(ax, x, c0, c1)
            r = [bi - ai for bi, ai in zip(b_list, ax)]
        p = [t.clone() for t in r]
        rs = cg_ops.dot(r, r)
        b_norm = cg_ops.dot(b_list, b_list).sqrt()
        threshold = torch.clamp_min(tol * b_norm, atol).square()
        active = rs > threshold
        iterations = torch.zeros(T, dtype=torch.int64, device=rs.device)
        breakdown = torch.zeros(T, dtype=torch.bool, device=rs.device)
        # The iterate of smallest residual so far, what a task that breaks down returns (NOTE: [cg breakdown])
        best_x, best_rs = [t.clone() for t in x], rs.clone()
        for _ in range(max_iter):
            if not bool(active.any()):
                break
            q = apply_h(p)
            pq = cg_ops.matvec_dot_(q, p, c0, c1)
            bad = active & ~(pq > 0)  # also catches NaN
            breakdown |= bad
            active &= ~bad
            alpha = torch.where(active, rs / torch.where(active, pq, torch.ones_like(pq)), torch.zeros_like(rs))
            rs_new = cg_ops.step_(x, r, p, q, alpha)
            iterations += active.to(iterations.dtype)
            beta = torch.where(active, rs_new / torch.where(active, rs, torch.ones_like(rs)), torch.zeros_like(rs))
            rs = torch.where(active, rs_new, rs)
            _keep_best(best_x, best_rs, x, rs, active)
            cg_ops.direction_(p, r, beta)
            active &= rs > threshold
        if bool(breakdown.any()):
            for xi, bi in zip(x, best_x):
                xi.copy_(torch.where(breakdown.view(T, *[1] * (xi.dim() - 1)), bi, xi))
            rs = torch.where(breakdown, best_rs, rs)
    report = CGReport(iterations, rs.sqrt(), b_norm, rs <= threshold, breakdown, float(tol), float(atol), max_iter)
    if not report.all_converged:
        if on_fail == "raise":
            raise RuntimeError(report.summary())
        if on_fail == "warn":
            warnings.warn(report.summary(), RuntimeWarning, stacklevel=2)
    return (dict(zip(names, x)) if names is not None else x), report
