"""higher.optim: the differentiable twins of torch.optim optimizers, on fastmaml's fused inner
optimizers (fastmaml/ops/optim.py), and get_diff_optim / create_diff_optim / register_optim.

Supported: SGD (momentum, dampening, Nesterov, weight decay), Adam (weight decay; amsgrad refused)
and RMSprop (centered, momentum, weight decay), with higher 0.2.1's arithmetic: its Adam adds eps
to the uncorrected sqrt(v) and scales the step by sqrt(1 - beta2^t) / (1 - beta1^t) (torch.optim
before 1.6; fastmaml's InnerAdam(bias_correction="higher")). higher's other twins (Adadelta,
Adagrad, Adamax, ASGD, Rprop) raise NotImplementedError naming these.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from fastmaml.ops.optim import InnerAdam, InnerOptimizer, InnerRMSprop, InnerSGD, OptimState

__all__ = ["SUPPORTED_OPTIMIZERS", "DifferentiableAdam", "DifferentiableOptimizer", "DifferentiableRMSprop",
           "DifferentiableSGD", "create_diff_optim", "get_diff_optim", "register_optim"]


class DifferentiableOptimizer:
    """higher.optim.DifferentiableOptimizer: the inner optimizer's settings and state, stepped
    functionally on the fast weights of `fmodel` (or on `params` passed to step). Subclasses say
    how a group's settings make a fastmaml inner optimizer (`_inner`) and which torch.optim state
    entries start its state (`_state_keys`).

    Args:
        other: the torch optimizer the inner loop was written with (its groups and settings).
        reference_params: the parameters `other` was built over, in order.
        fmodel: the patched module whose fast weights `step` updates (None: pass `params` to step).
        device: where the optimizer's state lives (None: with the parameters).
        override: name -> value or per-group list overriding `other`'s settings (e.g. learned rate tensors).
        grad_callback: grads -> grads, applied before the update (e.g. clipping).
        track_higher_grads: False: first-order steps (no graph through the gradients).
    """

    _state_keys: tuple[str | None, str | None, str | None] = (None, None, None)  # m, v, b in torch.optim's state

    def __init__(self, other: torch.optim.Optimizer, reference_params: Iterable[Tensor], fmodel: Any = None,
                 device: torch.device | None = None, override: dict | None = None,
                 grad_callback: Callable | None = None, track_higher_grads: bool = True, **kwargs: Any):
        reference_params = list(reference_params)
        index = {id(p): i for i, p in reversed(list(enumerate(reference_params)))}
        self.param_groups = [{k: v for k, v in group.items() if k != "params"} for group in other.param_groups]
        self._group_to_param_list: list[list[int]] = []
        self.state: list[OptimState | None] = []
        for group in other.param_groups:
            local = []
            for p in group["params"]:
                if id(p) not in index:
                    raise ValueError(f"Could not find parameter {p} in reference parameters.")
                local.append(index[id(p)])
            self._group_to_param_list.append(local)
            self.state.append(self._state_from(other, group["params"], device))
        if override is not None:
            self._apply_override(override)
        self._grad_callback = grad_callback
        self._fmodel = fmodel
        self._track_higher_grads = track_higher_grads
        self._lr_cache: dict = {}

    def _state_from(self, other: torch.optim.Optimizer, params: list[Tensor],
                    device: torch.device | None) -> OptimState | None:
        """The torch optimizer's state of a group as an OptimState, when every parameter has it."""
        states = [other.state.get(p, {}) for p in params]
        keys = [k for k in self._state_keys if k is not None]
        if not keys or not all(all(k in s for k in keys) for s in states):
            return None
        move = (lambda t: t.detach().clone()) if device is None else (lambda t: t.detach().clone().to(device))
        lists = [None if k is None else [move(s[k]) for s in states] for k in self._state_keys]
        step = states[0].get("step", 1)
        return OptimState(int(step.item() if isinstance(step, Tensor) else step), *lists)

    def _apply_override(self, override: dict) -> None:
        for k, v in override.items():
            if len(v) != 1 and len(v) != len(self.param_groups):
                raise ValueError(f"Mismatch between the number of override tensors for optimizer parameter {k} "
                                 "and the number of parameter groups.")
            for group_idx, group in enumerate(self.param_groups):
                group[k] = v[0] if len(v) == 1 else v[group_idx]

    def step(self, loss: Tensor, params: Iterable[Tensor] | None = None, override: dict | None = None,
             grad_callback: Callable | None = None, **kwargs: Any) -> list[Tensor]:
        """One inner step on `loss`: new fast weights (also made fmodel's current ones).

        Args:
            loss: the inner loss of the fast weights.
            params: the fast weights (None: fmodel's).
            override: name -> value or per-group list overriding settings from now on.
            grad_callback: grads -> grads for this step (None: the optimizer's).
            kwargs: ignored (higher's signature).
        """
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
        new_params = params[:]
        for i, p in self._update(params, all_grads):
            new_params[i] = p if self._track_higher_grads else p.detach().requires_grad_()
        if self._fmodel is not None:
            self._fmodel.update_params(new_params)
        return new_params

    def _inner(self, group: dict) -> InnerOptimizer:
        raise NotImplementedError

    def _update(self, params: list[Tensor], all_grads: list[Tensor | None]) -> list[tuple[int, Tensor]]:
        """(index, new value) of every parameter stepped. Groups with the same settings but the
        learning rate (and the same step count) step together: one fused op."""
        buckets: dict = {}
        for group_idx, group in enumerate(self.param_groups):
            inner = self._inner(group)
            state = self.state[group_idx]
            if state is None:
                state = self.state[group_idx] = inner.init([params[i].detach() for i in self._group_to_param_list[group_idx]])
            key = (repr(inner), state.count)
            buckets.setdefault(key, (inner, []))[1].append(group_idx)
        out = []
        for inner, groups in buckets.values():
            rows = [(g, j, i) for g in groups for j, i in enumerate(self._group_to_param_list[g])]
            state = self.state[groups[0]]
            merged = OptimState(state.count, *(None if state[k] is None else
                                               [self.state[g][k][j] for g, j, _ in rows] for k in (1, 2, 3)))
            ps = [params[i] for _, _, i in rows]
            indices, new, merged = inner.step_some(ps, [all_grads[i] for _, _, i in rows], merged,
                                                   self._rates(ps, [g for g, _, _ in rows]))
            for g in groups:
                self.state[g] = self.state[g]._replace(count=merged.count)
            for k in (1, 2, 3):
                if merged[k] is None:
                    continue
                for (g, j, _), t in zip(rows, merged[k]):
                    lst = list(self.state[g][k])
                    lst[j] = t
                    self.state[g] = self.state[g]._replace(**{("m", "v", "b")[k - 1]: lst})
            out += [(rows[j][2], p) for j, p in zip(indices, new)]
        return out

    def _rates(self, ps: list[Tensor], group_of: list[int]) -> float | list[Tensor]:
        """One Python number when every group used has the same numeric lr; else one rate tensor
        per parameter (the "scaled" form of the update: p - 1 * (lr * d), the same arithmetic)."""
        lrs = [group["lr"] for group in self.param_groups]
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


def _numbers(group: dict, keys: tuple[str, ...], owner: str) -> dict:
    """The group's settings `keys` as Python numbers: only the learning rate may be a tensor."""
    out = {}
    for k in keys:
        v = group[k]
        if isinstance(v, Tensor):
            if v.numel() != 1 or v.requires_grad:
                raise NotImplementedError(f"fastmaml.compat.higher {owner}: only lr may be a tensor override (a "
                                          f"learned setting); {k} is a tensor")
            v = v.item()
        out[k] = v
    return out


class DifferentiableSGD(DifferentiableOptimizer):
    """torch.optim.SGD, differentiable: g <- g + wd p; buf <- g at the first step, then momentum *
    buf + (1 - dampening) * g; g <- g + momentum * buf (Nesterov) or buf; p <- p - lr * g.

    Args:
        other: the torch optimizer the inner loop was written with (its groups and settings).
        reference_params: the parameters `other` was built over, in order.
        fmodel: the patched module whose fast weights `step` updates (None: pass `params` to step).
        device: where the optimizer's state lives (None: with the parameters).
        override: name -> value or per-group list overriding `other`'s settings (e.g. learned rate tensors).
        grad_callback: grads -> grads, applied before the update (e.g. clipping).
        track_higher_grads: False: first-order steps (no graph through the gradients).
    """

    _state_keys = (None, None, "momentum_buffer")

    def _inner(self, group: dict) -> InnerOptimizer:
        s = _numbers(group, ("momentum", "dampening", "weight_decay", "nesterov"), "SGD")
        return InnerSGD(s["momentum"], s["dampening"], s["weight_decay"], bool(s["nesterov"]))


class DifferentiableAdam(DifferentiableOptimizer):
    """torch.optim.Adam as higher 0.2.1 computes it: p <- p - lr sqrt(bc2) / bc1 * m / (sqrt(v) + eps).

    Args:
        other: the torch optimizer the inner loop was written with (its groups and settings).
        reference_params: the parameters `other` was built over, in order.
        fmodel: the patched module whose fast weights `step` updates (None: pass `params` to step).
        device: where the optimizer's state lives (None: with the parameters).
        override: name -> value or per-group list overriding `other`'s settings (e.g. learned rate tensors).
        grad_callback: grads -> grads, applied before the update (e.g. clipping).
        track_higher_grads: False: first-order steps (no graph through the gradients).
    """

    _state_keys = ("exp_avg", "exp_avg_sq", None)

    def _inner(self, group: dict) -> InnerOptimizer:
        s = _numbers(group, ("eps", "weight_decay"), "Adam")
        if group.get("amsgrad", False):
            raise NotImplementedError("fastmaml.compat.higher: Adam with amsgrad=True is not supported")
        b1, b2 = (float(b.item()) if isinstance(b, Tensor) else b for b in group["betas"])
        return InnerAdam((b1, b2), s["eps"], s["weight_decay"], bias_correction="higher")


class DifferentiableRMSprop(DifferentiableOptimizer):
    """torch.optim.RMSprop (centered, momentum, weight decay), differentiable.

    Args:
        other: the torch optimizer the inner loop was written with (its groups and settings).
        reference_params: the parameters `other` was built over, in order.
        fmodel: the patched module whose fast weights `step` updates (None: pass `params` to step).
        device: where the optimizer's state lives (None: with the parameters).
        override: name -> value or per-group list overriding `other`'s settings (e.g. learned rate tensors).
        grad_callback: grads -> grads, applied before the update (e.g. clipping).
        track_higher_grads: False: first-order steps (no graph through the gradients).
    """

    _state_keys: tuple[str | None, str | None, str | None] = ("grad_avg", "square_avg", "momentum_buffer")

    def _state_from(self, other: torch.optim.Optimizer, params: list[Tensor],
                    device: torch.device | None) -> OptimState | None:
        group = next(g for g in other.param_groups if any(p is q for p in params for q in g["params"]))
        keys = self._state_keys
        self._state_keys = (keys[0] if group["centered"] else None, keys[1], keys[2] if group["momentum"] else None)
        try:
            return super()._state_from(other, params, device)
        finally:
            self._state_keys = keys

    def _inner(self, group: dict) -> InnerOptimizer:
        s = _numbers(group, ("alpha", "eps", "weight_decay", "momentum"), "RMSprop")
        return InnerRMSprop(s["alpha"], s["eps"], s["weight_decay"], s["momentum"], bool(group["centered"]))


_opt_mapping: dict[type, type[DifferentiableOptimizer]] = {
    torch.optim.SGD: DifferentiableSGD,
    torch.optim.Adam: DifferentiableAdam,
    torch.optim.RMSprop: DifferentiableRMSprop,
}
SUPPORTED_OPTIMIZERS = tuple(_opt_mapping)


def register_optim(optim_type: type, diff_optim_type: type[DifferentiableOptimizer]) -> None:
    """Make `diff_optim_type` (a DifferentiableOptimizer subclass) the twin of `optim_type`.

    Args:
        optim_type: the torch.optim.Optimizer subclass.
        diff_optim_type: its DifferentiableOptimizer subclass.
    """
    if not (isinstance(diff_optim_type, type) and issubclass(diff_optim_type, DifferentiableOptimizer)):
        raise TypeError("register_optim: diff_optim_type must be a subclass of "
                        f"fastmaml.compat.higher.optim.DifferentiableOptimizer, got {diff_optim_type!r}")
    _opt_mapping[optim_type] = diff_optim_type


def _twin(opt_type: type) -> type[DifferentiableOptimizer]:
    if opt_type not in _opt_mapping:
        names = ", ".join(f"torch.optim.{t.__name__}" for t in _opt_mapping)
        raise NotImplementedError(
            f"fastmaml.compat.higher supports the inner optimizers {names} (and those added with register_optim), "
            f"got {opt_type.__module__}.{opt_type.__name__}; use higher itself for other inner optimizers")
    return _opt_mapping[opt_type]


def _check_groups(opt: torch.optim.Optimizer) -> None:
    for i, group in enumerate(opt.param_groups):
        if group.get("maximize", False):
            raise NotImplementedError(f"fastmaml.compat.higher: param_groups[{i}] has maximize=True, which higher "
                                      "ignores and fastmaml does not support; negate the loss instead")
        lr = group["lr"]
        if not isinstance(lr, Tensor) and not math.isfinite(lr):
            raise ValueError(f"get_diff_optim: param_groups[{i}] has lr={lr}, expected a finite number")


def get_diff_optim(opt: torch.optim.Optimizer, reference_params: Iterable[Tensor], fmodel: Any = None,
                   device: torch.device | None = None, override: dict | None = None,
                   track_higher_grads: bool = True, **kwargs: Any) -> DifferentiableOptimizer:
    """The differentiable twin of `opt` (SGD, Adam, RMSprop or a registered type).

    Args:
        opt: the torch optimizer the inner loop was written with.
        reference_params: the parameters `other` was built over, in order.
        fmodel: the patched module whose fast weights `step` updates (None: pass `params` to step).
        device: where the optimizer's state lives (None: with the parameters).
        override: name -> value or per-group list overriding `other`'s settings (e.g. learned rate tensors).
        track_higher_grads: False: first-order steps (no graph through the gradients).
    """
    twin = _twin(type(opt))
    _check_groups(opt)
    return twin(opt, reference_params, fmodel=fmodel, device=device, override=override,
                track_higher_grads=track_higher_grads, **kwargs)


def create_diff_optim(opt_type: type, opt_kwargs: dict | None = None, params: Iterable[Any] | None = None,
                      fmodel: Any = None, device: torch.device | None = None, override: dict | None = None,
                      track_higher_grads: bool = True, **kwargs: Any) -> DifferentiableOptimizer:
    """A differentiable optimizer of type `opt_type` built from `opt_kwargs`, over `params` (fast
    weights, or parameter groups: dicts with a "params" entry) or fmodel's fast weights.

    Args:
        opt_type: the torch.optim.Optimizer class.
        opt_kwargs: its keyword arguments (lr, momentum, ...).
        params: the parameters (tensors, or groups: dicts with a "params" entry); None: fmodel's fast weights.
        fmodel: the patched module whose fast weights `step` updates (None: pass `params` to step).
        device: where the optimizer's state lives (None: with the parameters).
        override: name -> value or per-group list overriding `other`'s settings (e.g. learned rate tensors).
        track_higher_grads: False: first-order steps (no graph through the gradients).
    """
    twin = _twin(opt_type)
    dummy: list[Any]
    if params is not None:
        params = list(params)
        if params and isinstance(params[0], dict):
            dummy = [{k: [torch.zeros_like(p, requires_grad=True) for p in v] if k == "params" else v
                      for k, v in group.items()} for group in params]
            reference = [p for group in dummy for p in group["params"]]
        else:
            dummy = reference = [torch.zeros_like(p, requires_grad=True) for p in params]
    elif fmodel is not None:
        dummy = reference = [torch.zeros_like(p, requires_grad=True) for p in fmodel.parameters()]
    else:
        raise ValueError("Must specify one of fmodel or params in kwargs.")
    opt = opt_type(dummy, **(opt_kwargs or {}))
    _check_groups(opt)
    return twin(opt, copy.copy(reference), fmodel=fmodel, device=device, override=override,
                track_higher_grads=track_higher_grads, **kwargs)
