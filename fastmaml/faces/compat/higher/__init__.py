"""higher-shaped `innerloop_ctx` on fastmaml's fused inner update. ::

    import fastmaml.compat.higher as higher           # was: import higher
    inner_opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fmodel, diffopt):
        for _ in range(steps):
            diffopt.step(loss_fn(fmodel(x_s), y_s))
        loss_fn(fmodel(x_q), y_q).backward()          # meta-gradients land on model's parameters

Same arguments and semantics as higher 0.2.1 for the inner optimizers torch.optim.SGD (plain,
momentum, dampening, Nesterov, weight decay), Adam and RMSprop (centered, momentum), several
parameter groups with their own settings, `override` of any of them (the learning rate may be a
tensor, e.g. learned rates); other optimizers raise NotImplementedError naming what is supported
(or register your own DifferentiableOptimizer with `register_optim`). Each `diffopt.step` computes
the gradients like higher, then moves all the parameters with one fused multi-tensor op
(fastmaml/ops/optim.py: the moments op for the stateful forms, NOTE: [moment forms], else the
update op) per set of groups sharing their settings but the learning rate.

As in higher:
  * copy_initial_weights=True (the default) starts the fast weights from detached copies of the
    model's parameters: gradients do NOT flow back to `model.parameters()`; they reach
    `fmodel.parameters(time=0)`. For MAML pass copy_initial_weights=False.
  * fmodel gets its own detached copies of the model's buffers: BatchNorm running statistics
    updated during the inner loop stay in fmodel, the model's own are untouched (learn2learn
    and fastmaml's own API update the model's buffers in place instead).
  * track_higher_grads=False gives first-order steps: gradients without create_graph, and new
    fast weights detached (leaves requiring grad); only the latest weights are kept.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from fastmaml.faces.compat._module import FastSlots, copy_detached
from fastmaml.faces.compat.higher import optim
from fastmaml.faces.compat.higher.optim import (
    SUPPORTED_OPTIMIZERS,
    DifferentiableAdam,
    DifferentiableOptimizer,
    DifferentiableRMSprop,
    DifferentiableSGD,
    create_diff_optim,
    get_diff_optim,
    register_optim,
)

__all__ = [
    "SUPPORTED_OPTIMIZERS",
    "DifferentiableAdam",
    "DifferentiableOptimizer",
    "DifferentiableRMSprop",
    "DifferentiableSGD",
    "create_diff_optim",
    "get_diff_optim",
    "innerloop_ctx",
    "monkeypatch",
    "optim",
    "register_optim",
]


if TYPE_CHECKING:  # the mixin's methods run on an nn.Module subclass (see _patched_class)
    _MixinBase = nn.Module
else:
    _MixinBase = object


class _FastWeights(_MixinBase):
    """The methods higher gives a patched module: mixed into a subclass of the model's own class,
    so `fmodel` is still an instance of it and its attributes and submodules are reachable."""

    _fast_params: list[list[Tensor]] | None
    _track_higher_grads: bool
    _fastmaml_fast: FastSlots

    def forward(self, *args: Any, params: Iterable[Tensor] | None = None, **kwargs: Any) -> Any:
        """The model's forward with the current fast weights; `params`, if given, become the
        current fast weights first (as in higher)."""
        if params is not None:
            self.update_params(params)
        elif self._fast_params is None:
            raise ValueError("params keyword must be provided if patched module not tracking its own fast parameters")
        return super().forward(*args, **kwargs)

    # override: it yields the fast weights, plain tensors, not Parameters (as higher does)
    def parameters(self, recurse: bool = True, time: int | None = None) -> Iterator[Tensor]:  # type: ignore[override]
        """The fast weights at step `time` (default: the latest; 0: the initial ones)."""
        if self._fast_params is None:
            raise Exception("Tried to get fast weights of a monkey patched module which does not encapsulate fast weights.")
        time = -1 if time is None else time
        if not self._track_higher_grads and time not in (-1, 0):
            raise ValueError("The patched model is not tracking higher gradients. Only the latest parameters are available.")
        return iter(self._fast_params[time])

    def update_params(self, params: Iterable[Tensor]) -> None:
        """Make `params` (one per model parameter, in model.parameters() order) the current fast weights."""
        params = list(params)
        slots = self._fastmaml_fast
        if len(params) != len(slots):
            raise ValueError(f"update_params: expected {len(slots)} tensors (one per parameter of the model), "
                             f"got {len(params)}")
        self.fast_params = params
        slots.assign(params)

    @property
    def fast_params(self) -> list[Tensor] | None:
        return None if self._fast_params is None else self._fast_params[-1]

    @fast_params.setter
    def fast_params(self, value: Iterable[Tensor]) -> None:
        value = list(value)
        if self._fast_params is None:
            self._fast_params = []
        if self._track_higher_grads:
            self._fast_params.append(value)
        elif self._fast_params:
            self._fast_params[0] = value
        else:
            self._fast_params.append(value)

    @property
    def init_fast_params(self) -> list[Tensor]:
        if not self._track_higher_grads:
            raise Exception("Cannot get initial parameters when not tracking higher gradients.")
        return cast("list[list[Tensor]]", self._fast_params)[0]

    @property
    def track_higher_grads(self) -> bool:
        return self._track_higher_grads

    @track_higher_grads.setter
    def track_higher_grads(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise ValueError(f"Expected boolean argument. Got: {type(value)}.")
        self._track_higher_grads = value


_patched_classes: dict[type, type] = {}


def _patched_class(cls: type) -> type:
    if cls not in _patched_classes:
        _patched_classes[cls] = type("Functional" + cls.__name__, (_FastWeights, cls), {"__module__": __name__})
    return _patched_classes[cls]


def monkeypatch(module: nn.Module, device: torch.device | None = None, copy_initial_weights: bool = True,
                track_higher_grads: bool = True) -> nn.Module:
    """higher.monkeypatch: a functional copy of `module` whose forward runs with its own fast
    weights (`fmodel.parameters()`, `fmodel.update_params(...)`, `fmodel(x, params=...)`).

    Args:
        module: the model to copy.
        device: where the copy lives (None: as module).
        copy_initial_weights: True: the fast weights start as detached copies; False: as the module's own (MAML).
        track_higher_grads: False: first-order steps, only the latest weights kept.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"monkeypatch: module must be an nn.Module, got {type(module).__name__}")
    if isinstance(module, _FastWeights):
        raise ValueError("monkeypatch: the module is already patched (a fastmaml.compat.higher fmodel)")
    move = (lambda t: t) if device is None else (lambda t: t.to(device))
    slots = FastSlots(module, buffer_rule=lambda b: move(copy_detached(b)))
    fmodel = cast(_FastWeights, slots.root)
    fmodel.__class__ = _patched_class(type(module))
    fmodel.__dict__.update(_fast_params=None, _track_higher_grads=True, _fastmaml_fast=slots)
    if copy_initial_weights:
        params = [move(p.clone().detach().requires_grad_(p.requires_grad)) for p in slots.originals]
    elif device is not None:
        params = [p.to(device) for p in slots.originals]
    else:
        # higher takes p.clone() here; the parameters themselves give the same gradients.
        params = list(slots.originals)
    fmodel.update_params(params)
    fmodel.track_higher_grads = track_higher_grads
    return fmodel


@contextlib.contextmanager
def innerloop_ctx(model: nn.Module, opt: torch.optim.Optimizer, device: torch.device | None = None,
                  copy_initial_weights: bool = True, override: dict | None = None,
                  track_higher_grads: bool = True) -> Iterator[tuple[nn.Module, DifferentiableOptimizer]]:
    """Yields (fmodel, diffopt): a functional copy of `model` and the differentiable twin of the
    optimizer `opt` (SGD, Adam, RMSprop or one registered with register_optim). See the module docstring for copy_initial_weights' semantics.

    Args:
        model: the model to adapt.
        opt: the inner optimizer (torch.optim.SGD, Adam, RMSprop or a registered type).
        device: where fmodel and the state live (None: as model).
        copy_initial_weights: True (higher's default): start from detached copies; pass False for MAML.
        override: name -> value or per-group list overriding `opt`'s settings (e.g. learned rate tensors).
        track_higher_grads: False: first-order steps (no graph through the gradients).
    """
    fmodel = monkeypatch(model, device, copy_initial_weights=copy_initial_weights,
                         track_higher_grads=track_higher_grads)
    diffopt = get_diff_optim(opt, model.parameters(), fmodel=fmodel, device=device, override=override,
                             track_higher_grads=track_higher_grads)
    yield fmodel, diffopt

