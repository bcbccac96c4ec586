"""The "hvp" mode: meta-gradients computed by hand from batched Hessian-vector products, with memory
that does not grow with the activations of the inner steps: `second_order="hvp"` for MAML and
Meta-SGD, and the machinery iMAML shares (fastmaml/algorithms/imaml.py): `HandGradLosses`,
`map_tasks`.

NOTE: [hand meta-gradient] The per-task losses come out of `HandGradLosses`, an autograd.Function
whose forward runs the inner loop with no graph (torch.func.grad per step, first order) and whose
backward computes the exact meta-gradient of those losses w.r.t. the meta-parameters. So
`meta_loss(...).backward()` puts the meta-gradient on the parameters as usual, and the loss value
is the true query loss after adaptation.

Second order by the reverse recursion (MAML, Meta-SGD). With phi_{k+1} = phi_k - a_k (.) g_k,
g_k = grad L_support(phi_k), and v_K = grad L_query(phi_K):

    v_k = v_{k+1} - H_k (a_k (.) v_{k+1})       d L / d phi_k       (H_k: support Hessian at phi_k)
    d L / d a_k  = - sum_tasks g_k (.) v_{k+1}  (reduced to a_k's shape: Meta-SGD's learned rates)
    d L / d theta = v_0

Only the iterates phi_0..phi_{K-1} are kept (O(K |theta|) per task) and each H_k v is one batched
HVP (fastmaml.hvp, forward-over-reverse), which recomputes one step's activations. Parameters not
adapted in the inner loop (adapt_names) get the cross terms: the HVP is taken w.r.t. all params
with a zero vector on the fixed ones, and -H_{fixed, adapted} (a (.) v) accumulates into their
gradient next to their direct query gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from fastmaml import functional as F
from fastmaml.execution import buffers as B, hooks
from fastmaml.execution.learner import Learner
from fastmaml.execution.taskmap import TaskMap
from fastmaml.functional import LossFn, Params
from fastmaml.secondorder.hvp import hvp_and_grad

SECOND_ORDER = ("autograd", "hvp")


class Solver(Protocol):
    """What HandGradLosses runs: `forward()` the [T] losses, `backward(grad_losses)` one gradient
    (or None) per input tensor."""

    def forward(self) -> Tensor: ...

    def backward(self, grad_losses: Tensor) -> Sequence[Tensor | None]: ...


class HandGradLosses(torch.autograd.Function):
    """losses = solver.forward() ([T]); d losses -> solver.backward(grad_losses), one gradient per
    tensor of `inputs` (NOTE: [hand meta-gradient])."""

    @staticmethod
    def forward(ctx: Any, solver: Solver, *inputs: Tensor) -> Tensor:
        ctx.solver = solver
        return solver.forward()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_losses: Tensor) -> tuple[Tensor | None, ...]:
        solver, ctx.solver = ctx.solver, None  # frees the saved iterates after use
        return (None, *solver.backward(grad_losses))


def check_second_order(value: str) -> str:
    """`value` if it is a second_order setting ("autograd" or "hvp"), else a ValueError naming it.

    Args:
        value: the learner's second_order argument.
    """
    if value not in SECOND_ORDER:
        raise ValueError(f"second_order must be one of {SECOND_ORDER}, got {value!r}")
    return value


def check_hvp_mode(learner: Learner) -> None:
    """second_order="hvp" covers the updates phi - a (.) g (MAML, Meta-SGD) with the plain task
    loss: refuse learners whose hooks change that."""
    why = hooks.why_not(learner, "hvp")
    if why:
        raise ValueError(f"second_order='hvp' supports MAML and Meta-SGD (updates phi - a * g); {why}")
    if learner.first_order:
        raise ValueError("second_order='hvp' computes the second-order meta-gradient; it needs first_order=False")


class _Unrolled:
    """The solver of HandGradLosses for second_order="hvp" (see the module docstring)."""

    def __init__(self, learner: Learner, mapper: TaskMap, batch: tuple[Tensor, Tensor, Tensor, Tensor], loss_fn: LossFn,
                 theta: Params, rates: list[Tensor]) -> None:
        self.learner, self.map, self.batch, self.loss_fn = learner, mapper, batch, loss_fn
        self.theta, self.rates = theta, rates
        self.iterates: list[Params] | None = None  # per adapted name [T, ...], phi_0..phi_{K-1} (forward)
        self.query_grads: Params = {}

    def forward(self) -> Tensor:
        learner, loss_fn = self.learner, self.loss_fn
        sx, sy, qx, qy = self.batch
        T = sx.shape[0]
        theta = {n: p.detach() for n, p in self.theta.items()}
        adapt = learner.adapt_names
        buffers = B.task_copies(learner.module, T)

        def one_task(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor,
                     buffers: Params) -> tuple[list[Params], Params, Tensor]:
            trajectory = learner.inner_loop(theta, sx, sy, loss_fn, buffers, first_order=True, grads_fn=F.func_grads)
            kept = [{n: phi[n] for n in adapt} for phi in trajectory[:-1]]

            def query(p: Params, b: Params | None) -> tuple[Tensor, Tensor]:
                loss = learner.query_loss(p, qx, qy, loss_fn, b, None)
                return loss, loss.detach()

            g, loss = torch.func.grad(query, has_aux=True)(trajectory[-1], buffers)
            return kept, g, loss

        with torch.enable_grad():
            self.iterates, self.query_grads, losses = self.map(one_task, sx, sy, qx, qy, buffers)
        B.merge(learner.module, buffers)
        return losses.detach()

    def backward(self, grad_losses: Tensor) -> list[Tensor | None]:
        learner, loss_fn = self.learner, self.loss_fn
        sx, sy = self.batch[:2]
        T = sx.shape[0]
        adapt = set(learner.adapt_names)
        fixed = [n for n in self.theta if n not in adapt]
        iterates = cast("list[Params]", self.iterates)  # set by forward
        scale = lambda t: grad_losses.reshape(T, *[1] * (t.dim() - 1)).to(t.dtype) * t
        v = {n: scale(g) for n, g in self.query_grads.items()}  # dL/dphi_K (and the fixed params' direct terms)
        rate_grads = {id(r): torch.zeros_like(r) for r in self.rates}
        theta_T = {n: self.theta[n].detach().expand(T, *self.theta[n].shape) for n in fixed}
        buffers = B.for_recompute(learner.module)
        state = learner.execution_state
        method = state.hvp_method or learner.hvp_method
        for k in reversed(range(len(iterates))):
            rates = learner.inner_rates(k)
            a: dict[str, Tensor | float] = {n: rates[n] if isinstance(rates, dict) else cast(float, rates)
                                            for n in learner.adapt_names}
            u = {n: (r.detach() * v[n] if isinstance(r := a[n], Tensor) else r * v[n]) for n in learner.adapt_names}
            u.update({n: torch.zeros_like(theta_T[n]) for n in fixed})
            phi = {**theta_T, **iterates.pop()}  # the iterate is not needed again: free it

            def support(p: Params, x: Tensor, y: Tensor, k: int = k) -> Tensor:
                return learner.support_loss(p, x, y, loss_fn, buffers, k)

            g, hu, used = hvp_and_grad(support, phi, u, sx, sy, method=method, context=self.map.context)
            state.hvp_method = used
            for n in learner.adapt_names:
                r = a[n]
                if isinstance(r, Tensor) and id(r) in rate_grads:
                    # d phi_{k+1} / d a_k = -g_k
                    rate_grads[id(r)] += (-(g[n] * v[n]).sum(0)).sum_to_size(r.shape)
                v[n] = v[n] - hu[n]
            for n in fixed:
                v[n] = v[n] - hu[n]
        self.iterates = None
        grads = [v[n].sum(0) for n in self.theta]
        return grads + [rate_grads[id(r)] for r in self.rates]


def _rates_of(learner: Learner) -> list[Tensor]:
    """The distinct rate tensors (requiring grad) the inner steps use, in first-use order."""
    seen: set[int] = set()
    out: list[Tensor] = []
    for k in range(learner.inner_steps):
        rates = learner.inner_rates(k)
        if isinstance(rates, dict):
            for r in rates.values():
                if isinstance(r, Tensor) and r.requires_grad and id(r) not in seen:
                    seen.add(id(r))
                    out.append(r)
    return out


def map_tasks(learner: Learner, run: Callable[[TaskMap], Tensor]) -> Tensor:
    """`run(mapper)` by vmap, or by the task loop when batching is "loop" or the model does not
    vmap ("auto" remembers which ran in the learner's execution state)."""
    state = learner.execution_state
    choice = learner.batching if learner.batching in ("vmap", "loop") else state.map_mode
    if choice is not None:
        state.used = choice
        return run(TaskMap(learner.module, choice == "vmap"))
    try:
        out = run(TaskMap(learner.module, True))
        state.map_mode = "vmap"
    except Exception:  # noqa: BLE001 - the model does not run under vmap; the loop always does
        out = run(TaskMap(learner.module, False))
        state.map_mode = "loop"
    state.used = state.map_mode
    return out


def hvp_meta_losses(learner: Learner, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
                    loss_fn: LossFn) -> Tensor:
    """The per-task query losses after adaptation ([T]) whose backward gives the exact
    second-order meta-gradient by HVPs (NOTE: [hand meta-gradient])."""
    check_hvp_mode(learner)
    theta = learner.params()
    rates = _rates_of(learner)

    def run(mapper: TaskMap) -> Tensor:
        solver = _Unrolled(learner, mapper, (support_x, support_y, query_x, query_y), loss_fn, theta, rates)
        return HandGradLosses.apply(solver, *theta.values(), *rates)

    return map_tasks(learner, run)
