"""higher-shaped `innerloop_ctx` on fastmaml's fused inner update. ::

    import fastmaml.compat.higher as higher           # was: import higher
    inner_opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fmodel, diffopt):
        for _ in range(steps):
            diffopt.step(loss_fn(fmodel(x_s), y_s))
        loss_fn(fmodel(x_q), y_q).backward()          # meta-gradients land on model's parameters

Same arguments and semantics as higher 0.2.1 for a torch.optim.SGD inner optimizer (plain,
momentum, dampening, Nesterov, weight decay, several parameter groups with their own settings,
`override` of any of them, e.g. learned learning-rate tensors); any other inner optimizer raises
NotImplementedError naming what is supported. Each `diffopt.step` computes the gradients like
higher, then updates all the parameters in one fastmaml.ops.update call (one fused op with the
native backend); momentum and weight decay are computed before it, per tensor, as in higher.

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
import copy
import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from fastmaml import ops
from fastmaml.faces.compat._module import FastSlots, copy_detached

__all__ = [
    "SUPPORTED_OPTIMIZERS",
    "DifferentiableOptimizer",
    "DifferentiableSGD",
    "get_diff_optim",
    "innerloop_ctx",
    "monkeypatch",
]

SUPPORTED_OPTIMIZERS = (torch.optim.SGD,)
_SGD_KEYS = ("lr", "momentum", "dampening", "weight_decay", "nesterov")


class _FastWeights:
    """The methods higher gives a patched module: mixed into a subclass of the model's own class,
    so `fmodel` is still an instance of it and its attributes and submodules are reachable."""

    _fast_params: list[list[Tensor]] | None
    _track_higher_grads: bool
    _fastmaml_fast: FastSlots

    def forward(self, *args, params: Iterable[Tensor] | None = None, **kwargs):
        """The model's forward with the current fast weights; `params`, if given, become the
        current fast weights first (as in higher)."""
        if params is not None:
            self.update_params(params)
        elif self._fast_params is None:
            raise ValueError("params keyword must be provided if patched module not tracking its own fast parameters")
        return super().forward(*args, **kwargs)

    def parameters(self, recurse: bool = True, time: int | None = None):
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
    def fast_params(self, value) -> None:
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
        return self._fast_params[0]

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
        copy_initial_weights: True: the fast weights start as detached copies; False: as the
            module's own (MAML).
        track_higher_grads: False: first-order steps, only the latest weights kept.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"monkeypatch: module must be an nn.Module, got {type(module).__name__}")
    if isinstance(module, _FastWeights):
        raise ValueError("monkeypatch: the module is already patched (a fastmaml.compat.higher fmodel)")
    move = (lambda t: t) if device is None else (lambda t: t.to(device))
    slots = FastSlots(module, buffer_rule=lambda b: move(copy_detached(b)))
    fmodel = slots.root
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


class DifferentiableOptimizer:
    """higher.optim.DifferentiableOptimizer: the inner optimizer's settings and state, stepped
    functionally on the fast weights of `fmodel` (or on `params` passed to step).

    Args:
        other: the torch.optim.SGD the inner loop was written with (its groups and settings).
        reference_params: the parameters `other` was built over, in order.
        fmodel: the patched module whose fast weights `step` updates (None: pass `params` to step).
        device: where the optimizer's state lives (None: with the parameters).
        override: name -> value or per-group list overriding `other`'s settings (e.g. learned rate
            tensors).
        grad_callback: grads -> grads, applied before the update (e.g. clipping).
        track_higher_grads: False: first-order steps (no graph through the gradients).
    """

    def __init__(self, other: torch.optim.Optimizer, reference_params: Iterable[Tensor], fmodel=None,
                 device: torch.device | None = None, override: dict | None = None,
                 grad_callback: Callable | None = None, track_higher_grads: bool = True, **kwargs):
        reference_params = list(reference_params)
        index = {id(p): i for i, p in reversed(list(enumerate(reference_params)))}
        self.param_groups = [{k: v for k, v in group.items() if k != "params"} for group in other.param_groups]
        self.state: list[dict[int, dict]] = [{} for _ in self.param_groups]
        self._group_to_param_list: list[list[int]] = []
        for group_idx, group in enumerate(other.param_groups):
            local = []
            for p_idx, p in enumerate(group["params"]):
                if p in other.state:
                    self.state[group_idx][p_idx] = {
                        k: (v.detach().clone() if device is None else v.detach().clone().to(device))
                        if isinstance(v, Tensor) else copy.deepcopy(v)
                        for k, v in other.state[p].items()}
                if id(p) not in index:
                    raise ValueError(f"Could not find parameter {p} in reference parameters.")
                local.append(index[id(p)])
            self._group_to_param_list.append(local)
        if override is not None:
            self._apply_override(override)
        self._grad_callback = grad_callback
        self._fmodel = fmodel
        self._track_higher_grads = track_higher_grads
        self._lr_cache: dict = {}

    def _apply_override(self, override: dict) -> None:
        for k, v in override.items():
            if len(v) != 1 and len(v) != len(self.param_groups):
                raise ValueError(f"Mismatch between the number of override tensors for optimizer parameter {k} "
                                 "and the number of parameter groups.")
            for group_idx, group in enumerate(self.param_groups):
                group[k] = v[0] if len(v) == 1 else v[group_idx]

    def step(self, loss: Tensor, params: Iterable[Tensor] | None = None, override: dict | None = None,
             grad_callback: Callable | None = None, **kwargs) -> list[Tensor]:
        """One inner step on `loss`: new fast weights (also made fmodel's current ones)."""
        if override is not None:
            self._apply_override(override)
        if self._fmodel is None or self._fmodel.fast_params is None:
            if params is None:
                raise ValueError("params kwarg must be passed to step if the differentiable optimizer "
                                 "doesn't have a view on a patched model with params.")
        else:
            params = self._fmodel.fast_params if params is None else params
        params = list(params)
        wrt = [i for i, p in enumerate(params) if p.requires_grad]
        got = torch.autograd.grad(loss, [params[i] for i in wrt], create_graph=self._track_higher_grads,
                                  allow_unused=True)
        all_grads: list[Tensor | None] = [None] * len(params)
        for i, g in zip(wrt, got):
            all_grads[i] = g
        callback = grad_callback if grad_callback is not None else self._grad_callback
        if callback is not None:
            all_grads = list(callback(all_grads))
        grouped = [[all_grads[i] for i in mapping] for mapping in self._group_to_param_list]
        new_params = params[:]
        indices, updated = self._update(params, grouped)
        for i, p in zip(indices, updated):
            new_params[i] = p if self._track_higher_grads else p.detach().requires_grad_()
        if self._fmodel is not None:
            self._fmodel.update_params(new_params)
        return new_params

    def _update(self, params: list[Tensor], grouped_grads: list[list[Tensor | None]]):
        raise NotImplementedError


class DifferentiableSGD(DifferentiableOptimizer):
    """torch.optim.SGD, differentiable: per group, g <- g + wd * p; buf <- g at the first step,
    then momentum * buf + (1 - dampening) * g; g <- g + momentum * buf (Nesterov) or buf; and
    p <- p - lr * g for all parameters of all groups in one fastmaml.ops.update call.

    Args:
        other: the torch.optim.SGD the inner loop was written with (its groups and settings).
        reference_params: the parameters `other` was built over, in order.
        fmodel: the patched module whose fast weights `step` updates (None: pass `params` to step).
        device: where the optimizer's state lives (None: with the parameters).
        override: name -> value or per-group list overriding `other`'s settings (e.g. learned rate
            tensors).
        grad_callback: grads -> grads, applied before the update (e.g. clipping).
        track_higher_grads: False: first-order steps (no graph through the gradients).
    """

    def _update(self, params, grouped_grads):
        indices: list[int] = []
        ps: list[Tensor] = []
        gs: list[Tensor] = []
        group_of: list[int] = []
        for group_idx, (group, grads, mapping) in enumerate(zip(self.param_groups, grouped_grads,
                                                                self._group_to_param_list)):
            weight_decay, momentum = group["weight_decay"], group["momentum"]
            dampening, nesterov = group["dampening"], group["nesterov"]
            for p_idx, (index, g) in enumerate(zip(mapping, grads)):
                if g is None:
                    continue
                p = params[index]
                if _nonzero(weight_decay):
                    g = g + weight_decay * p
                if _nonzero(momentum):
                    state = self.state[group_idx].setdefault(p_idx, {})
                    if "momentum_buffer" not in state:
                        buf = state["momentum_buffer"] = g
                    else:
                        buf = state["momentum_buffer"] = state["momentum_buffer"].mul(momentum) + (1 - dampening) * g
                    g = g + momentum * buf if nesterov else buf
                indices.append(index)
                ps.append(p)
                gs.append(g)
                group_of.append(group_idx)
        if not ps:
            return [], []
        return indices, ops.update(ps, gs, self._rates(ps, group_of))

    def _rates(self, ps: list[Tensor], group_of: list[int]):
        """One Python number when every group used has the same numeric lr; else one rate tensor
        per parameter (the "scaled" form of the update: p - 1 * (lr * g), the same arithmetic)."""
        lrs = [self.param_groups[i]["lr"] for i in range(len(self.param_groups))]
        numbers = [lrs[i] for i in set(group_of)]
        if all(isinstance(lr, (int, float)) and not isinstance(lr, bool) for lr in numbers) and len(set(numbers)) == 1:
            return float(numbers[0])
        out = []
        for p, g in zip(ps, group_of):
            lr = lrs[g]
            if isinstance(lr, Tensor):
                out.append(lr if lr.dtype == p.dtype and lr.device == p.device else lr.to(p.device, p.dtype))
            else:
                key = (float(lr), p.dtype, p.device)
                if key not in self._lr_cache:
                    self._lr_cache[key] = torch.tensor(float(lr), dtype=p.dtype, device=p.device)
                out.append(self._lr_cache[key])
        return out


def _nonzero(x) -> bool:
    return isinstance(x, Tensor) or x != 0


def get_diff_optim(opt: torch.optim.Optimizer, reference_params: Iterable[Tensor], fmodel=None,
                   device: torch.device | None = None, override: dict | None = None,
                   track_higher_grads: bool = True, **kwargs) -> DifferentiableOptimizer:
    """The differentiable twin of `opt`: torch.optim.SGD only (plain, momentum, Nesterov, weight
    decay, per-group settings); anything else raises NotImplementedError naming what is supported.

    Args:
        opt: the torch.optim.SGD the inner loop was written with (its groups and settings).
        reference_params: the parameters `other` was built over, in order.
        fmodel: the patched module whose fast weights `step` updates (None: pass `params` to step).
        device: where the optimizer's state lives (None: with the parameters).
        override: name -> value or per-group list overriding `other`'s settings (e.g. learned rate
            tensors).
        track_higher_grads: False: first-order steps (no graph through the gradients).
    """
    if type(opt) not in SUPPORTED_OPTIMIZERS:
        raise NotImplementedError(
            f"fastmaml.compat.higher supports the inner optimizer torch.optim.SGD (plain, momentum, dampening, "
            f"Nesterov, weight decay, per-group settings), got {type(opt).__module__}.{type(opt).__name__}; "
            "use higher itself for other inner optimizers")
    for i, group in enumerate(opt.param_groups):
        if group.get("maximize", False):
            raise NotImplementedError(f"fastmaml.compat.higher: param_groups[{i}] has maximize=True, which higher "
                                      "ignores and fastmaml does not support; negate the loss instead")
        missing = [k for k in _SGD_KEYS if k not in group]
        if missing:
            raise ValueError(f"get_diff_optim: param_groups[{i}] lacks {missing}")
        lr = group["lr"]
        if not isinstance(lr, Tensor) and not math.isfinite(lr):
            raise ValueError(f"get_diff_optim: param_groups[{i}] has lr={lr}, expected a finite number")
    return DifferentiableSGD(opt, reference_params, fmodel=fmodel, device=device, override=override,
                             track_higher_grads=track_higher_grads, **kwargs)


@contextlib.contextmanager
def innerloop_ctx(model: nn.Module, opt: torch.optim.Optimizer, device: torch.device | None = None,
                  copy_initial_weights: bool = True, override: dict | None = None,
                  track_higher_grads: bool = True):
    """Yields (fmodel, diffopt): a functional copy of `model` and the differentiable twin of the
    SGD optimizer `opt`. See the module docstring for copy_initial_weights' semantics.

    Args:
        model: the model to adapt.
        opt: the inner optimizer (torch.optim.SGD).
        device: where fmodel and the state live (None: as model).
        copy_initial_weights: True (higher's default): start from detached copies; pass False for
            MAML.
        override: name -> value or per-group list overriding `other`'s settings (e.g. learned rate
            tensors).
        track_higher_grads: False: first-order steps (no graph through the gradients).
    """
    fmodel = monkeypatch(model, device, copy_initial_weights=copy_initial_weights,
                         track_higher_grads=track_higher_grads)
    diffopt = get_diff_optim(opt, model.parameters(), fmodel=fmodel, device=device, override=override,
                             track_higher_grads=track_higher_grads)
    yield fmodel, diffopt

