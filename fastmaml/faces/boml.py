"""The BOML-style face: `fastmaml.Init`, initialisation-based meta-learning driven by two
objectives over a `state` dict, built on the algorithm classes.

    init = fastmaml.Init(model, inner_objective, outer_objective, inner_learning_rate=0.01,
                         inner_loop=5, use_second_order=True, learn_lr=False, use_t=False,
                         use_warp=False, use_forget=False)
    opt = torch.optim.Adam(init.parameters(), 1e-3)
    for task in tasks:                      # one task per call; .grad accumulates over calls
        loss = init.optimize(x_train, y_train, x_val, y_val)
    opt.step(); opt.zero_grad()

Each objective is called with a dict state and returns a scalar loss:

    "data", "target"     the task's train (inner) or validation (outer) split
    "model"              the meta model, an nn.Module with the model's parameter names, running with
                         the updated weights: state["model"](x); state["model"](x, weights) with
                         weights a list (model.parameters() order) or a dict; or
                         torch.func.functional_call(state["model"], dict (or tuple of dicts), x)
    "updated_weights"    the current weights, a list in model.parameters() order

    def inner_objective(state):
        return F.mse_loss(state["model"](state["data"]), state["target"])

Switches (at most one of the four; each combines with use_second_order):

    none        MAML                       use_second_order: second order, else first order (FOMAML)
    learn_lr    MetaSGD (elementwise)      the same
    use_t       MTNet (T-layers)           the same
    use_forget  L2F (Baik et al. CVPR 2020: the initialisation attenuated per task; not ALFA)
    use_warp    WarpGrad (warp layers)     use_second_order=True: the "unrolled" objective (through
                                           the inner loop); False: the paper's "trajectory" objective
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from fastmaml import checks
from fastmaml.algorithms import L2F, MAML, MetaLearner, MetaSGD
from fastmaml.algorithms.mtnet import MTNet
from fastmaml.algorithms.warpgrad import WarpGrad
from fastmaml.functional import LossFn, Params

_OBJECTIVE_CLASSES: dict[type, type] = {}


class StateModel(nn.Module):
    """state["model"]: the learner's model running with one task's weights. Its submodules are
    the model's own (so names resolve as in the model); called plainly it uses the weights it was
    made with, under torch.func.functional_call the ones passed there."""

    def __init__(self, learner: MetaLearner, weights: dict[str, Tensor], buffers: Params | None,
                 step: int | None) -> None:
        super().__init__()
        model = learner.module
        for name, child in model.named_children():
            self.add_module(name, child)
        for name, p in model.named_parameters(recurse=False):
            self.register_parameter(name, p)
        self._meta = (learner, weights, buffers, step, {n: p for n, p in model.named_parameters()})

    def forward(self, x: Tensor, weights: Sequence[Tensor] | Mapping[str, Tensor] | None = None) -> Tensor:
        learner, own, buffers, step, originals = self._meta
        if weights is not None:
            params = as_dict(weights, list(originals), "weights")
        else:
            current: dict[str, Tensor] = dict(self.named_parameters())
            swapped = any(current[n] is not p for n, p in originals.items())
            params = current if swapped else own  # swapped: inside functional_call
        return learner.task_forward({**own, **params}, x, buffers, step)


def as_dict(weights: Sequence[Tensor] | Mapping[str, Tensor], names: list[str], arg: str) -> dict[str, Tensor]:
    """A list of tensors in model.parameters() order, or a dict, as a dict name -> tensor."""
    if isinstance(weights, dict):
        return weights
    if not isinstance(weights, (list, tuple)):
        raise TypeError(f"{arg} must be a list of tensors in model.parameters() order or a dict, "
                        f"got {type(weights).__name__}")
    if len(weights) != len(names):
        raise ValueError(f"{arg} has {len(weights)} tensors but the model has {len(names)} parameters")
    return dict(zip(names, weights))


def _with_objectives(cls: type) -> type:
    """A subclass of `cls` whose support/query losses are the Init objectives of a state dict."""
    if cls not in _OBJECTIVE_CLASSES:

        class WithObjectives(cls):
            def _state(self, params: Params, x: Tensor, y: Tensor, buffers: Params | None,
                       step: int | None) -> dict[str, Any]:
                names = [n for n, _ in self.module.named_parameters()]
                return {"data": x, "target": y, "updated_weights": [params[n] for n in names],
                        "model": StateModel(self, params, buffers, step)}

            def support_loss(self, params: Params, x: Tensor, y: Tensor, loss_fn: LossFn,
                             buffers: Params | None, step: int) -> Tensor:
                return _scalar(self.inner_objective(self._state(params, x, y, buffers, step)), "inner_objective")

            def query_loss(self, params: Params, x: Tensor, y: Tensor, loss_fn: LossFn,
                           buffers: Params | None, step: int | None = None) -> Tensor:
                return _scalar(self.outer_objective(self._state(params, x, y, buffers, step)), "outer_objective")

        WithObjectives.__name__ = WithObjectives.__qualname__ = f"Init{cls.__name__}"
        _OBJECTIVE_CLASSES[cls] = WithObjectives
    return _OBJECTIVE_CLASSES[cls]


def _scalar(loss: object, arg: str) -> Tensor:
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise ValueError(f"{arg} must return a scalar tensor, got {type(loss).__name__}"
                         + (f" of shape {list(loss.shape)}" if isinstance(loss, Tensor) else ""))
    return loss.reshape(())


def _unused_loss(output: Tensor, target: Tensor) -> Tensor:  # the objectives compute the losses
    raise AssertionError("unreachable")


class Init(nn.Module):
    """BOML's `Init`: a model, objectives of the state dict, and the inner-loop choice by flags.

    `init.learner` is the algorithm object, `init.model` the (wrapped) model; `init.parameters()` are
    the meta-parameters (model, plus rates, T-layers, warp layers or forget nets). See the module
    docstring for the state dict the objectives receive.

    Args:
        model: the network whose parameters are meta-learned.
        inner_objective: state -> the inner (support) loss.
        outer_objective: state -> the outer (validation) loss.
        inner_learning_rate: the inner learning rate.
        inner_loop: the number of inner steps.
        use_second_order: differentiate through the inner steps (False: first order).
        learn_lr: Meta-SGD's learned rates.
        use_t: MT-net's T-layers.
        use_warp: WarpGrad's warp layers.
        use_forget: L2F's attenuation.

    Raises:
        ValueError: if more than one of learn_lr, use_t, use_warp, use_forget is set.
    """

    def __init__(self, model: nn.Module, inner_objective: Callable, outer_objective: Callable,
                 inner_learning_rate: float = 0.01, inner_loop: int = 5, use_second_order: bool = True,
                 learn_lr: bool = False, use_t: bool = False, use_warp: bool = False, use_forget: bool = False):
        """Build the learner the flags choose (the arguments: see the class docstring)."""
        super().__init__()
        for arg, fn in (("inner_objective", inner_objective), ("outer_objective", outer_objective)):
            if not callable(fn):
                raise TypeError(f"{arg} must be a callable of the state dict, got {type(fn).__name__}")
        flags = {"learn_lr": learn_lr, "use_t": use_t, "use_warp": use_warp, "use_forget": use_forget}
        on = [k for k, v in flags.items() if v]
        if len(on) > 1:
            raise ValueError(f"Init: choose at most one of learn_lr/use_t/use_warp/use_forget, got {on}")
        first_order = not use_second_order
        kw = dict(inner_lr=inner_learning_rate, inner_steps=inner_loop, batching="loop")
        if learn_lr:
            learner = _with_objectives(MetaSGD)(model, first_order=first_order, **kw)
        elif use_t:
            learner = _with_objectives(MTNet)(model, first_order=first_order, **kw)
        elif use_warp:
            objective = "unrolled" if use_second_order else "trajectory"
            learner = _with_objectives(WarpGrad)(model, objective=objective, **kw)
        elif use_forget:
            learner = _with_objectives(L2F)(model, first_order=first_order, **kw)
        else:
            learner = _with_objectives(MAML)(model, first_order=first_order, **kw)
        learner.inner_objective = inner_objective
        learner.outer_objective = outer_objective
        self.learner = learner

    @property
    def model(self) -> nn.Module:
        """The (wrapped) model."""
        return self.learner.module

    def adapt(self, train_data: Tensor, train_target: Tensor) -> list[Tensor]:
        """The task's updated weights after the inner loop (differentiable).

        Args:
            train_data: the task's support inputs.
            train_target: the support targets.

        Returns:
            A list in model.parameters() order, like state["updated_weights"].
        """
        checks.check_task(train_data, train_target, "train")
        with torch.enable_grad():
            phi = self.learner.inner_loop(self.learner.params(), train_data, train_target, _unused_loss)[-1]
        return [phi[n] for n, _ in self.model.named_parameters()]

    def forward(self, x: Tensor, updated_weights: Sequence[Tensor] | Mapping[str, Tensor] | None = None) -> Tensor:
        """The model on `x` with `updated_weights`.

        Args:
            x: the inputs.
            updated_weights: a list as `adapt` returns, or a dict; None: the meta-parameters.
        """
        if updated_weights is not None:
            updated_weights = as_dict(updated_weights, [n for n, _ in self.model.named_parameters()], "updated_weights")
        return self.learner(x, updated_weights)

    def optimize(self, train_data: Tensor, train_target: Tensor, validate_data: Tensor,
                 validate_target: Tensor) -> Tensor:
        """One task: the inner loop, then the outer objective; its gradient is added to the meta-parameters' `.grad`.

        Args:
            train_data: the task's support inputs.
            train_target: the support targets.
            validate_data: the query inputs.
            validate_target: the query targets.

        Returns:
            The outer loss (detached).
        """
        checks.check_task(train_data, train_target, "train")
        checks.check_task(validate_data, validate_target, "validate")
        wrt = [p for p in self.parameters() if p.requires_grad]
        with torch.enable_grad():
            learner = self.learner
            trajectory = learner.inner_loop(learner.params(), train_data, train_target, _unused_loss)
            loss = learner.task_loss(trajectory, validate_data, validate_target, _unused_loss, None)
            grads = torch.autograd.grad(loss, wrt, allow_unused=True)
        for p, g in zip(wrt, grads):
            if g is not None:
                p.grad = g if p.grad is None else p.grad + g
        return loss.detach()
