"""iMAML (Rajeswaran et al., 2019): implicit meta-gradients through a proximal inner problem.

    phi_t = argmin_phi  L_support_t(phi) + lam/2 ||phi - theta||^2          (approximately: K steps
                                                                              of any optimizer)
    g_theta = sum_t (I + H_t / lam)^{-1} grad L_query_t(phi_t)              (H_t: support Hessian at phi_t)

The inner loop keeps no graph, so memory does not grow with the number of inner steps; the solve is
the batched conjugate gradient of fastmaml/secondorder/cg.py on batched Hessian-vector products
(fastmaml/secondorder/hvp.py),
all tasks in lockstep. `meta_loss` returns the query losses after adaptation, whose backward puts
g_theta on the model's parameters (NOTE: [hand meta-gradient] in fastmaml/execution/hvp_mode.py). Parameters
outside `adapt_names` stay at theta in the inner loop and get their exact implicit gradient
d L_q / d theta_f - (1 / lam) H_{f, phi} x, with x the CG solution.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fastmaml import checks, functional as F, ops
from fastmaml.algorithms.base import MetaLearner
from fastmaml.execution import buffers as B
from fastmaml.execution.hvp_mode import HandGradLosses, map_tasks
from fastmaml.execution.inner import GradsFn
from fastmaml.execution.taskmap import TaskMap
from fastmaml.execution.user_compile import outside_user_graph
from fastmaml.functional import LossFn, Params
from fastmaml.secondorder.cg import ON_FAIL, CGReport, batched_cg
from fastmaml.secondorder.hvp import hvp_and_grad

# The defaults, chosen from the sweeps of docs/imaml.md ("Defaults"), per kind of model: CG converges on
# >= 90% of the tasks at initialisation and during meta-training, on the sine MLP ("mlp") and on Conv-4
# on Omniglot ("conv": a model with a convolution). `IMAML.defaults_for(model)` says which applies.
INNER_LR, INNER_STEPS, CG_STEPS, INNER_TOL = 0.01, 30, 10, 0.25
DEFAULTS = {"mlp": {"lam": 20.0, "cg_damping": 0.0}, "conv": {"lam": 5.0, "cg_damping": 5.0}}


@dataclass
class InnerReport:
    """Per-task stationarity of the proximal inner problem (tensors of shape [T]): the implicit
    gradient assumes grad L_support(phi) + lam (phi - theta) = 0 at phi."""

    residual_norm: Tensor   # ||grad L_support(phi_t) + lam (phi_t - theta)||
    start_norm: Tensor      # ||grad L_support(theta)||, the same gradient at the start
    stationary: Tensor      # bool: residual_norm <= tol * start_norm
    tol: float
    inner_lr: Tensor | None = None  # each task's rate at the end (halved per undone step); None: a torch optimizer

    @property
    def relative_residual(self) -> Tensor:
        """||grad L_support(phi_t) + lam (phi_t - theta)|| / ||grad L_support(theta)|| per task."""
        return self.residual_norm / self.start_norm.clamp_min(torch.finfo(self.start_norm.dtype).tiny)

    def summary(self) -> str:
        """One line for people: how many tasks are stationary, and every task's relative residual."""
        T, done = self.stationary.numel(), int(self.stationary.sum())
        rel = ", ".join(f"{v:.3g}" for v in self.relative_residual.tolist())
        return f"iMAML inner problem: {done} of {T} tasks stationary to inner_tol={self.tol:g}; relative residuals [{rel}]"


class IMAML(MetaLearner):
    """iMAML: implicit meta-gradients through a proximal inner problem solved by batched CG.

    The defaults come from the sweep of docs/imaml.md ("Defaults"). lam and cg_damping left at None
    take the defaults for the model (`IMAML.defaults_for(model)`): lam 20 and no damping for a model
    without convolutions (the sine MLP); lam 5 and damping 5 for a model with one (Conv-4 on
    Omniglot), whose support Hessian at initialisation has eigenvalues near -250 that only damping
    (or a lam that stops adaptation) keeps CG positive definite against. The default inner loop is
    gradient descent safeguarded per task: a step that raises the task's proximal objective is undone
    and its rate halved (docs/imaml.md, "Training stability"). A given inner optimizer steps the
    adapted parameters of all tasks at once, stacked on a task dimension, on the sum over tasks of the
    proximal support losses, so each task's slice sees its own gradient: any elementwise optimizer (SGD,
    momentum, Adam, RMSprop, ...) keeps the tasks independent (LBFGS would not). `last_cg_report`
    holds the last solve's per-task report (`fastmaml.CGReport`), `last_inner_report` (InnerReport)
    each task's residual ||grad L_support(phi) + lam (phi - theta)|| relative to ||grad L_support(theta)||
    and its final inner rate.

    Args:
        model: the network whose parameters are meta-learned.
        lam: the proximal regularisation lambda, a finite number > 0; None: the model's default.
        inner_lr: the inner learning rate.
        inner_steps: the number of inner steps per task.
        inner_optimizer: None for the safeguarded gradient descent from `inner_lr` through the fused update; a
            torch.optim.Optimizer class, built as `cls(params, lr=inner_lr, **inner_optimizer_kwargs)`;
            or a callable `params -> optimizer`.
        cg_steps: the CG budget for ((1 + damping) I + H / lam) x = grad L_query.
        cg_tol: CG's relative residual tolerance.
        cg_damping: CG's damping, as the iMAML reference code's: the solution is 1 / (1 + damping)
            times the implicit gradient of lam (1 + damping), at the inner solution of lam; None: the
            model's default.
        adapt_names: the names (or patterns) of the adapted parameters; None: all.
        batching: "auto", "vmap" or "loop" (how the per-task gradients run).
        hvp_method: how Hessian-vector products are computed (`fastmaml.secondorder.hvp.METHODS`).
        on_cg_fail: tasks missing cg_tol "warn", "raise" or are only reported ("ignore").
        inner_optimizer_kwargs: keyword arguments of an inner optimizer class.
        inner_tol: the relative residual of the inner problem above which a task is not stationary.
        on_inner_fail: tasks above inner_tol "warn", "raise" or pass ("ignore").
    """
    cli_name, paper = "imaml", "Rajeswaran et al. 2019"  # fastmaml train --algo imaml

    def __init__(self, model: nn.Module, lam: float | None = None, inner_lr: float = INNER_LR,
                 inner_steps: int = INNER_STEPS, inner_optimizer: Callable[..., torch.optim.Optimizer] | None = None,
                 cg_steps: int = CG_STEPS, cg_tol: float = 1e-3, cg_damping: float | None = None,
                 adapt_names: Iterable[str] | None = None, batching: str = "auto", hvp_method: str = "auto",
                 on_cg_fail: str = "warn", inner_optimizer_kwargs: dict | None = None, inner_tol: float = INNER_TOL,
                 on_inner_fail: str = "warn") -> None:
        """Build the learner (the arguments: see the class docstring)."""
        super().__init__(model, inner_lr, inner_steps, False, adapt_names, batching, hvp_method=hvp_method)
        defaults = self.defaults_for(model)
        lam = defaults["lam"] if lam is None else lam
        cg_damping = defaults["cg_damping"] if cg_damping is None else cg_damping
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam > 0 or lam == float("inf"):
            raise ValueError(f"lam must be a finite number > 0, got {lam!r}")
        if isinstance(cg_steps, bool) or not isinstance(cg_steps, int) or cg_steps < 0:
            raise ValueError(f"cg_steps must be an int >= 0, got {cg_steps!r}")
        for arg, value in (("cg_tol", cg_tol), ("cg_damping", cg_damping), ("inner_tol", inner_tol)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{arg} must be a number >= 0, got {value!r}")
        for arg, choice in (("on_cg_fail", on_cg_fail), ("on_inner_fail", on_inner_fail)):
            if choice not in ON_FAIL:
                raise ValueError(f"{arg} must be one of {ON_FAIL}, got {choice!r}")
        if not (inner_optimizer is None or callable(inner_optimizer)):
            raise TypeError(f"inner_optimizer must be None, a torch.optim.Optimizer class or a callable "
                            f"params -> optimizer, got {type(inner_optimizer).__name__}")
        self.lam = float(lam)
        # the proximal problem's torch optimizer (not the base's `inner_optimizer`, the unrolled loop's)
        self.prox_optimizer = inner_optimizer
        self.inner_optimizer_kwargs = dict(inner_optimizer_kwargs or {})
        self.cg_steps, self.cg_tol, self.cg_damping = cg_steps, float(cg_tol), float(cg_damping)
        self.on_cg_fail = on_cg_fail
        self.inner_tol, self.on_inner_fail = float(inner_tol), on_inner_fail
        self.last_cg_report: CGReport | None = None
        self.last_inner_report: InnerReport | None = None
        self._inner_rates: Tensor | None = None

    @staticmethod
    def defaults_for(model: nn.Module) -> dict[str, float]:
        """The defaults of lam and cg_damping for `model`: DEFAULTS["conv"] if it has a convolution,
        else DEFAULTS["mlp"]."""
        conv = any(isinstance(m, torch.nn.modules.conv._ConvNd) for m in model.modules())
        return dict(DEFAULTS["conv" if conv else "mlp"])

    # ---- the proximal inner problem, all tasks at once -------------------------------------
    def _make_optimizer(self, tensors: list[Tensor]) -> torch.optim.Optimizer:
        assert self.prox_optimizer is not None  # solve_inner's gradient descent needs none
        opt: Any = self.prox_optimizer  # a torch.optim.Optimizer class or a callable params -> optimizer
        if isinstance(self.prox_optimizer, type) and issubclass(self.prox_optimizer, torch.optim.Optimizer):
            return opt(tensors, lr=self.inner_lr, **self.inner_optimizer_kwargs)
        made = opt(tensors)
        if not isinstance(made, torch.optim.Optimizer):
            raise TypeError(f"inner_optimizer(params) must return a torch.optim.Optimizer, got {type(made).__name__}")
        return made

    def solve_inner(self, mapper: TaskMap, theta: Params, sx: Tensor, sy: Tensor, loss_fn: LossFn,
                    buffers: Params | None, steps: int | None = None) -> Params:
        """The adapted params of every task ([T, ...], detached, adapted names only).

        Args:
            mapper: how the per-task functions run over the task dimension (vmap or a loop).
            theta: the meta-parameters (no task dimension).
            sx: support inputs, [T, N, ...].
            sy: support targets, [T, N, ...].
            loss_fn: loss_fn(output, y) -> scalar.
            buffers: each task's buffers ([T, ...]), or None.
            steps: the number of inner steps (None: `inner_steps`).
        """
        steps = self.inner_steps if steps is None else steps
        T = sx.shape[0]
        names = self.adapt_names
        anchor = {n: theta[n].detach() for n in names}
        rest = {n: p.detach() for n, p in theta.items() if n not in anchor}
        phi = {n: a.unsqueeze(0).repeat(T, *[1] * a.dim()) for n, a in anchor.items()}

        def support(phi_t: Params, x: Tensor, y: Tensor, b: Params | None, step: int) -> Tensor:
            return self.support_loss({**rest, **phi_t}, x, y, loss_fn, b, step)

        if self.prox_optimizer is None:
            return self._descend(mapper, support, phi, anchor, sx, sy, buffers, steps)
        self._inner_rates = None
        leaves = {n: p.requires_grad_() for n, p in phi.items()}
        optimizer = self._make_optimizer(list(leaves.values()))
        for step in range(steps):
            optimizer.zero_grad(set_to_none=True)
            with torch.enable_grad():
                losses = mapper(lambda phi_t, x, y, b, step=step: support(phi_t, x, y, b, step), leaves, sx, sy, buffers)
                prox = sum(((leaves[n] - anchor[n]) ** 2).sum() for n in names)
                (losses.sum() + 0.5 * self.lam * prox).backward()
            optimizer.step()
        return {n: p.detach() for n, p in leaves.items()}

    def _descend(self, mapper: TaskMap, support: Callable, phi: Params, anchor: Params, sx: Tensor, sy: Tensor,
                 buffers: Params | None, steps: int) -> Params:
        """Gradient descent on each task's proximal objective, safeguarded: a step after which a task's
        objective is higher (or not finite) is undone and that task's rate halved, so no task's
        objective ever rises. The final step is checked by one more forward pass; the per-task rates
        at the end go to `last_inner_report.inner_lr`."""
        names, lam, T = list(phi), self.lam, sx.shape[0]
        rate = torch.full((T,), float(self.inner_lr), dtype=anchor[names[0]].dtype, device=anchor[names[0]].device)

        def objective(loss: Tensor) -> Tensor:
            return loss + 0.5 * lam * sum((phi[n] - anchor[n]).reshape(T, -1).pow(2).sum(1) for n in names)

        def keep_better(obj: Tensor, grads: Params | None, saved: tuple[Params, Params, Tensor]) -> Tensor:
            """Undo the last step of every task whose objective rose; halve its rate."""
            old_phi, old_grads, old_obj = saved
            worse = ~(obj <= old_obj)   # also catches NaN
            if bool(worse.any()):
                for n in names:
                    shape = (T, *[1] * (phi[n].dim() - 1))
                    phi[n].copy_(torch.where(worse.view(shape), old_phi[n], phi[n]))
                    if grads is not None:
                        grads[n].copy_(torch.where(worse.view(shape), old_grads[n], grads[n]))
                rate.copy_(torch.where(worse, rate / 2, rate))
            return torch.where(worse, old_obj, obj)

        saved = None
        for step in range(steps):
            def grad_of(phi_t: Params, x: Tensor, y: Tensor, b: Params | None,
                        step: int = step) -> tuple[Params, Tensor]:
                def loss_of(p: Params, b: Params | None) -> tuple[Tensor, Tensor]:
                    loss = support(p, x, y, b, step)
                    return loss, loss.detach()
                # b is an input, not a capture: batch norm updates it in place
                return torch.func.grad(loss_of, has_aux=True)(phi_t, b)

            with torch.enable_grad():
                g, loss = mapper(grad_of, phi, sx, sy, buffers)
            with torch.no_grad():
                obj = objective(loss)
                grads = {n: g[n].add_(phi[n] - anchor[n], alpha=lam) for n in names}  # + grad of the proximal term
                if saved is not None:
                    obj = keep_better(obj, grads, saved)
                saved = ({n: phi[n].clone() for n in names}, {n: grads[n].clone() for n in names}, obj)
                rates = [rate.view(T, *[1] * (phi[n].dim() - 1)) for n in names]
                ops.update_([phi[n] for n in names], [grads[n] for n in names], rates, names=names)
        if saved is not None:
            scratch = None if buffers is None else {n: b if b is None else b.clone() for n, b in buffers.items()}
            with torch.no_grad():
                loss = mapper(lambda p, x, y, b: support(p, x, y, b, steps), phi, sx, sy, scratch)
                keep_better(objective(loss), None, saved)
        self._inner_rates = rate
        return phi

    def check_inner(self, mapper: TaskMap, theta: Params, phi: Params, sx: Tensor, sy: Tensor, loss_fn: LossFn,
                    buffers: Params | None) -> InnerReport:
        """The stationarity of each task's inner solution (`last_inner_report`), acted on per on_inner_fail.

        Args:
            mapper: how the per-task functions run over the task dimension (vmap or a loop).
            theta: the meta-parameters (no task dimension).
            phi: each task's inner solution ([T, ...], adapted names).
            sx: support inputs, [T, N, ...].
            sy: support targets, [T, N, ...].
            loss_fn: loss_fn(output, y) -> scalar.
            buffers: each task's buffers ([T, ...]), or None (a copy is used: nothing is updated).
        """
        names = list(phi)
        rest = {n: p.detach() for n, p in theta.items() if n not in phi}
        scratch = None if buffers is None else {n: b if b is None else b.clone() for n, b in buffers.items()}  # no second update
        T = sx.shape[0]

        def grad_at(point: Params) -> Params:
            def grad_of(p: Params, x: Tensor, y: Tensor, b: Params | None) -> Params:
                # b is an input, not a capture: batch norm updates it in place (on the scratch copy)
                return torch.func.grad(lambda q, b: self.support_loss({**rest, **q}, x, y, loss_fn, b,
                                                                     self.inner_steps))(p, b)

            with torch.enable_grad():
                return mapper(grad_of, point, sx, sy, scratch)

        start = {n: theta[n].detach().unsqueeze(0).expand(T, *theta[n].shape) for n in names}
        g0, g = grad_at(start), grad_at(phi)

        def norm(d: Params) -> Tensor:
            return torch.stack([v.reshape(T, -1).pow(2).sum(1) for v in d.values()]).sum(0).sqrt()

        residual = norm({n: g[n] + self.lam * (phi[n] - start[n]) for n in names})
        start_norm = norm(g0)
        report = InnerReport(residual, start_norm, residual <= self.inner_tol * start_norm, self.inner_tol,
                             self._inner_rates)
        self.last_inner_report = report
        if not bool(report.stationary.all()):
            if self.on_inner_fail == "raise":
                raise RuntimeError(report.summary())
            if self.on_inner_fail == "warn":
                warnings.warn(report.summary() + "; the implicit gradient assumes a solved inner problem: more inner_steps (at a stable "
                              "inner_lr) or a larger lam", RuntimeWarning, stacklevel=4)
        return report

    def inner_loop(self, params: Params, support_x: Tensor, support_y: Tensor, loss_fn: LossFn,
                   buffers: Params | None = None, steps: int | None = None, first_order: bool | None = None,
                   grads_fn: GradsFn = F.autograd_grads) -> list[Params]:
        """One task (no task dimension): [theta, phi], phi the approximate proximal minimiser."""
        mapper = TaskMap(self.module, False)
        b = None if buffers is None else {n: t.unsqueeze(0) for n, t in buffers.items()}
        if b is None:
            b = B.task_copies(self.module, 1)
        phi = self.solve_inner(mapper, params, support_x.unsqueeze(0), support_y.unsqueeze(0), loss_fn, b, steps)
        if buffers is None:
            B.merge(self.module, b)
        return [params, {**params, **{n: p[0] for n, p in phi.items()}}]

    # ---- the meta-loss ------------------------------------------------------------------------
    @outside_user_graph
    def meta_loss(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
                  loss_fn: LossFn, reduction: str = "mean") -> Tensor:
        """Query losses after the proximal inner loop, "mean" or "sum" over tasks; its backward gives
        the implicit meta-gradient (CG on (I + H / lam) x = grad L_query) on the model's parameters."""
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        checks.check_batch(support_x, support_y, query_x, query_y, self)
        theta = self.params()
        outer_grad = torch.is_grad_enabled()

        def run(mapper: TaskMap) -> Tensor:
            solver = _Implicit(self, mapper, (support_x, support_y, query_x, query_y), loss_fn, theta)
            if not outer_grad:
                return solver.forward()
            return HandGradLosses.apply(solver, *theta.values())

        losses = map_tasks(self, run)
        return losses.mean() if reduction == "mean" else losses.sum()


class _Implicit:
    """The solver of HandGradLosses for IMAML."""

    def __init__(self, learner: IMAML, mapper: TaskMap, batch: tuple[Tensor, Tensor, Tensor, Tensor], loss_fn: LossFn,
                 theta: Params) -> None:
        self.learner, self.map, self.batch, self.loss_fn, self.theta = learner, mapper, batch, loss_fn, theta
        self.phi: Params | None = None          # set by forward, freed by backward
        self.query_grads: Params | None = None

    def forward(self) -> Tensor:
        learner, loss_fn = self.learner, self.loss_fn
        sx, sy, qx, qy = self.batch
        T = sx.shape[0]
        buffers = B.task_copies(learner.module, T)
        phi = learner.solve_inner(self.map, self.theta, sx, sy, loss_fn, buffers)
        learner.check_inner(self.map, self.theta, phi, sx, sy, loss_fn, buffers)
        rest = {n: p.detach().expand(T, *p.shape) for n, p in self.theta.items() if n not in phi}

        def query(p: Params, x: Tensor, y: Tensor, b: Params | None) -> tuple[Tensor, Tensor]:
            loss = learner.query_loss(p, x, y, loss_fn, b, None)
            return loss, loss.detach()

        with torch.enable_grad():
            g, losses = self.map(lambda p, x, y, b: torch.func.grad(query, has_aux=True)(p, x, y, b),
                                 {**rest, **phi}, qx, qy, buffers)
        B.merge(learner.module, buffers)
        self.phi, self.query_grads = phi, g
        return losses.detach()

    def backward(self, grad_losses: Tensor) -> list[Tensor]:
        learner, loss_fn = self.learner, self.loss_fn
        sx, sy = self.batch[:2]
        T = sx.shape[0]
        adapt = learner.adapt_names
        phi, query_grads = self.phi, self.query_grads
        assert phi is not None and query_grads is not None, "backward runs after forward, once"
        fixed = [n for n in self.theta if n not in phi]
        point = {**{n: self.theta[n].detach().expand(T, *self.theta[n].shape) for n in fixed}, **phi}
        buffers = B.for_recompute(learner.module)
        state = learner.execution_state

        def support(p: Params, x: Tensor, y: Tensor) -> Tensor:
            return learner.support_loss(p, x, y, loss_fn, buffers, learner.inner_steps)

        def matvec(p: Params) -> Params:
            _, hp, state.hvp_method = hvp_and_grad(support, point, p, sx, sy,
                                                    method=state.hvp_method or learner.hvp_method,
                                                    context=self.map.context)
            return hp

        def w(t: Tensor) -> Tensor:
            return grad_losses.reshape(T, *[1] * (t.dim() - 1)).to(t.dtype) * t

        b = {n: w(query_grads[n]) for n in adapt}
        x, report = batched_cg(matvec, b, lam=learner.lam, damping=learner.cg_damping, max_iter=learner.cg_steps,
                               tol=learner.cg_tol, on_fail=learner.on_cg_fail)
        learner.last_cg_report = report
        assert isinstance(x, dict)  # the form of b
        grads = {n: x[n].sum(0) for n in adapt}
        if fixed:
            # d L / d theta_f = dL_q/d theta_f - (1/lam) H_{f, phi} x   (implicit function theorem)
            vec = {**x, **{n: torch.zeros_like(point[n]) for n in fixed}}
            _, hx, _ = hvp_and_grad(support, point, vec, sx, sy, method=state.hvp_method or learner.hvp_method,
                                    context=self.map.context)
            for n in fixed:
                grads[n] = (w(query_grads[n]) - hx[n] / learner.lam).sum(0)
        self.phi = self.query_grads = None
        return [grads[n] for n in self.theta]
