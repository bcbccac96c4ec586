"""Differentiable inner optimizers: SGD (momentum, dampening, Nesterov, weight decay), Adam, AdamW
and RMSprop (centered, momentum), as torch.optim defines them, one fused multi-tensor op per step:
the moments op (NOTE: [moment forms], fastmaml/ops/moments) gives the new parameters, p - lr * d
(AdamW: (1 - lr * wd) * p - lr * d), and the new state.

    opt = InnerAdam(betas=(0.9, 0.999))
    state = opt.init(params)                               # a list of tensors
    params, state = opt.step(params, grads, state, lr)     # lr: a number or a list of tensors

The state is a tuple of tensor lists passed from step to step (NOTE: [moment state]); every
step is differentiable in the parameters, the gradients, the state and tensor rates. Plain SGD
(no momentum, no weight decay) is the one update op alone, the same bits as fastmaml.ops.update.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Callable, NamedTuple, Union

import torch
from torch import Tensor

from fastmaml import ops
from fastmaml.ops.moments import Form, moments

Rate = Union[float, Sequence[Tensor]]  # a number, or one rate tensor per parameter


class OptimState(NamedTuple):
    """An inner optimizer's state, passed from step to step (NOTE: [moment state]).

    Args:
        count: steps taken.
        m: the first moments (None where the optimizer keeps none).
        v: the second moments, or None.
        b: the momentum traces, or None.
    """

    count: int  # type: ignore[assignment]  # the field shadows tuple.count, as TorchOpt's states do
    m: list[Tensor] | None
    v: list[Tensor] | None
    b: list[Tensor] | None


def _number(owner: str, name: str, value: object, low: float = 0.0, high: float | None = None,
            open_high: bool = False) -> float:
    if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < low
            or (high is not None and (value >= high if open_high else value > high))):
        bound = f" and {'<' if open_high else '<='} {high}" if high is not None else ""
        raise ValueError(f"{owner}: {name} must be a finite number >= {low}{bound}, got {value!r}")
    return float(value)


class InnerOptimizer:
    """The base: subclasses say which states they keep and the Form of each step."""

    name = ""
    keeps = (False, False, False)  # m, v, b
    initial_v = 0.0

    def init(self, params: Sequence[Tensor]) -> OptimState:
        """The state before the first step: zeros (v: `initial_v`) shaped like the parameters.

        Args:
            params: the parameters.
        """
        def fill(keep: bool, value: float = 0.0) -> list[Tensor] | None:
            return [torch.full_like(p, value) for p in params] if keep else None

        keep_m, keep_v, keep_b = self.keeps
        return OptimState(0, fill(keep_m), fill(keep_v, self.initial_v), fill(keep_b))

    def form(self, count: int) -> Form:
        """The Form of the step after `count` steps.

        Args:
            count: the steps taken.
        """
        raise NotImplementedError

    decoupled_decay = 0.0  # AdamW's weight decay: (1 - lr * wd) * p

    def direction(self, params: Sequence[Tensor], grads: Sequence[Tensor],
                  state: OptimState) -> tuple[list[Tensor], OptimState]:
        """(d, new state): the parameters would move by -lr * d (the decoupled decay apart).

        Args:
            params: the parameters (read for the coupled weight decay).
            grads: their gradients.
            state: the state before the step.
        """
        form = self.form(state.count)
        if form == _PLAIN:
            return list(grads), state._replace(count=state.count + 1)
        d, m, v, b = moments(params, grads, 1.0, state.m, state.v, state.b, form, direction=True)
        return d, OptimState(state.count + 1, m, v, b)

    def step(self, params: Sequence[Tensor], grads: Sequence[Tensor], state: OptimState, lr: Rate,
             names: Sequence[str] | None = None) -> tuple[list[Tensor], OptimState]:
        """(new params, new state): one fused op (plain SGD: the update op; else the moments op).

        Args:
            params: the parameters.
            grads: their gradients.
            state: the state before the step.
            lr: a number, or a list of tensors broadcastable to each param.
            names: the params' names, only for error messages.
        """
        form = self.form(state.count)
        if form == _PLAIN:
            return ops.update(list(params), list(grads), lr, names=names), state._replace(count=state.count + 1)
        new, m, v, b = moments(params, grads, lr, state.m, state.v, state.b, form, names=names)
        return new, OptimState(state.count + 1, m, v, b)

    def step_some(self, params: Sequence[Tensor], grads: Sequence[Tensor | None], state: OptimState,
                  lr: Rate) -> tuple[list[int], list[Tensor], OptimState]:
        """step on the parameters whose gradient is not None; the others, and their state, are kept.

        Args:
            params: the parameters.
            grads: their gradients, None for a parameter not stepped.
            state: the state before the step.
            lr: a number, or a list of tensors (one per param).

        Returns:
            (indices stepped, their new values, new state).
        """
        indices = [j for j, g in enumerate(grads) if g is not None]
        present = [g for g in grads if g is not None]
        if len(indices) == len(params):
            new, state = self.step(params, present, state, lr)
            return indices, new, state
        pick = [params[j] for j in indices]
        rates = lr if isinstance(lr, (int, float)) else [lr[j] for j in indices]
        sub = OptimState(state.count, *(None if x is None else [x[j] for j in indices] for x in state[1:]))
        new, sub = self.step(pick, present, sub, rates) if indices else ([], sub._replace(count=sub.count + 1))
        merged = []
        for full, part in zip(state[1:], sub[1:]):
            if full is not None:
                full = list(full)
                for j, t in zip(indices, part or []):
                    full[j] = t
            merged.append(full)
        return indices, new, OptimState(sub.count, *merged)

    def step_named(self, params: Mapping[str, Tensor], grads: Mapping[str, Tensor],
                   lr: float | Mapping[str, Tensor] | Sequence[Tensor],
                   state: OptimState | None) -> tuple[dict[str, Tensor], OptimState]:
        """The dict form of step for the names of `grads` (the others pass through).

        Args:
            params: name -> parameter.
            grads: name -> gradient, for the parameters stepped.
            lr: a number, or a dict name -> rate tensor.
            state: the state before the step; None: init first.
        """
        names = list(grads)
        current = [params[n] for n in names]
        if state is None:
            state = self.init(current)
        if isinstance(lr, Mapping):
            lr = [lr[n] for n in names]
        new, state = self.step(current, [grads[n] for n in names], state, lr, names=names)
        out = dict(params)
        out.update(zip(names, new))
        return out, state

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({settings})"


_PLAIN = Form()


class InnerSGD(InnerOptimizer):
    """torch.optim.SGD: g <- g + wd p; b <- g at the first step, then momentum b + (1 - dampening) g;
    d = g + momentum b (Nesterov) or b.

    Args:
        momentum: the momentum factor (0: plain SGD, the update op alone when weight_decay is 0 too).
        dampening: the dampening of the momentum.
        weight_decay: the coupled weight decay.
        nesterov: Nesterov momentum (needs momentum > 0 and dampening 0).
    """

    name = "sgd"

    def __init__(self, momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False):
        self.momentum = _number("InnerSGD", "momentum", momentum)
        self.dampening = _number("InnerSGD", "dampening", dampening)
        self.weight_decay = _number("InnerSGD", "weight_decay", weight_decay)
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("InnerSGD: nesterov=True requires momentum > 0 and dampening = 0")
        self.keeps = (False, False, self.momentum != 0)

    def form(self, count: int) -> Form:
        if not self.momentum:
            return Form(wd=self.weight_decay)
        return Form(wd=self.weight_decay, mu=self.momentum, c=1.0 if count == 0 else 1.0 - self.dampening,
                    nesterov=self.nesterov)


class InnerAdam(InnerOptimizer):
    """torch.optim.Adam: g <- g + wd p; m, v the moving moments; d = (m / bc1) / (sqrt(v / bc2) +
    eps_root) + eps) with bc_i = 1 - beta_i^t. eps_root (TorchOpt's) adds inside the root.
    bias_correction="higher": d = sqrt(bc2) / bc1 * m / (sqrt(v) + eps), eps not corrected, as
    higher 0.2.1 and torch.optim.Adam before torch 1.6 compute it; "torchopt": bc_i as TorchOpt
    0.7.3 computes them, 1 - beta_i ** count with count an integer tensor, so in float32 (the
    default dtype) whatever the parameters' dtype. amsgrad is not supported.

    Args:
        betas: the moments' decay rates (beta1, beta2), each in [0, 1).
        eps: added to the root.
        weight_decay: the coupled weight decay.
        eps_root: added inside the root (TorchOpt's).
        bias_correction: "torch", "higher" or "torchopt" (see above).
        amsgrad: refused (True raises NotImplementedError).
    """

    name = "adam"
    keeps = (True, True, False)

    def __init__(self, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 *, eps_root: float = 0.0, bias_correction: str = "torch", amsgrad: bool = False):
        owner = type(self).__name__
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{owner}: betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = (_number(owner, "betas[0]", betas[0], 0.0, 1.0, True), _number(owner, "betas[1]", betas[1], 0.0, 1.0, True))
        self.eps = _number(owner, "eps", eps)
        self.eps_root = _number(owner, "eps_root", eps_root)
        self.weight_decay = _number(owner, "weight_decay", weight_decay)
        if bias_correction not in ("torch", "higher", "torchopt"):
            raise ValueError(f"{owner}: bias_correction must be 'torch', 'higher' or 'torchopt', got {bias_correction!r}")
        self.bias_correction = bias_correction
        if amsgrad:
            raise NotImplementedError(f"{owner}: amsgrad=True is not supported (its max has no fused form); "
                                      "use amsgrad=False")

    def _coupled(self) -> float:
        return self.weight_decay

    def form(self, count: int) -> Form:
        b1, b2 = self.betas
        t = count + 1
        if self.bias_correction == "torchopt":
            steps = torch.tensor(t)
            bc1, bc2 = float(1 - pow(b1, steps)), float(1 - pow(b2, steps))
        else:
            bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
        if self.bias_correction == "higher":
            s1, s2 = math.sqrt(bc2) / bc1, 1.0
        else:
            s1, s2 = 1 / bc1, 1 / bc2
        return Form(wd=self._coupled(), b1=b1, c1=1 - b1, b2=b2, c2=1 - b2, s1=s1, s2=s2, eps_in=self.eps_root,
                    eps=self.eps, decay=self.decoupled_decay, adam=True)


class InnerAdamW(InnerAdam):
    """torch.optim.AdamW: Adam without the coupled decay, the parameters decayed apart:
    p <- (1 - lr * wd) p - lr * d.

    Args:
        betas: the moments' decay rates (beta1, beta2), each in [0, 1).
        eps: added to the root.
        weight_decay: the decoupled weight decay.
        eps_root: added inside the root (TorchOpt's).
        bias_correction: "torch", "higher" or "torchopt" (see InnerAdam).
        amsgrad: refused (True raises NotImplementedError).
    """

    name = "adamw"

    def __init__(self, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2, *,
                 eps_root: float = 0.0, bias_correction: str = "torch", amsgrad: bool = False):
        super().__init__(betas, eps, weight_decay, eps_root=eps_root, bias_correction=bias_correction, amsgrad=amsgrad)
        self.decoupled_decay = self.weight_decay

    def _coupled(self) -> float:
        return 0.0


class InnerRMSprop(InnerOptimizer):
    """torch.optim.RMSprop: g <- g + wd p; v <- alpha v + (1 - alpha) g^2; centered: m <- alpha m +
    (1 - alpha) g and v - m^2 under the root; q = g / (sqrt(.) + eps); momentum: b <- momentum b + q,
    d = b (or q + momentum b, nesterov: TorchOpt's); initial_scale: v's initial value (TorchOpt's).

    Args:
        alpha: the decay rate of v (and of m, centered).
        eps: added to the root.
        weight_decay: the coupled weight decay.
        momentum: the momentum factor (0: none).
        centered: subtract the squared mean gradient under the root.
        nesterov: TorchOpt's Nesterov momentum (needs momentum > 0).
        initial_scale: v's initial value.
    """

    name = "rmsprop"

    def __init__(self, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0, momentum: float = 0.0,
                 centered: bool = False, *, nesterov: bool = False, initial_scale: float = 0.0):
        self.alpha = _number("InnerRMSprop", "alpha", alpha)
        self.eps = _number("InnerRMSprop", "eps", eps)
        self.weight_decay = _number("InnerRMSprop", "weight_decay", weight_decay)
        self.momentum = _number("InnerRMSprop", "momentum", momentum)
        self.centered = bool(centered)
        self.nesterov = bool(nesterov)
        if self.nesterov and self.momentum <= 0:
            raise ValueError("InnerRMSprop: nesterov=True requires momentum > 0")
        self.initial_v = _number("InnerRMSprop", "initial_scale", initial_scale)
        self.keeps = (self.centered, True, self.momentum != 0)

    def form(self, count: int) -> Form:
        a = self.alpha
        return Form(wd=self.weight_decay, b1=a, c1=1 - a, b2=a, c2=1 - a, eps=self.eps, mu=self.momentum,
                    centered=self.centered, nesterov=self.nesterov)


NAMES: dict[str, Callable[[], InnerOptimizer] | None] = {"sgd": None, "momentum": lambda: InnerSGD(momentum=0.9), "adam": InnerAdam, "adamw": InnerAdamW,
         "rmsprop": InnerRMSprop}


def resolve(choice: object) -> InnerOptimizer | None:
    """An inner optimizer from a name of NAMES or an InnerOptimizer; None for plain SGD ("sgd").

    Args:
        choice: a name of NAMES, or an InnerOptimizer.
    """
    if isinstance(choice, InnerOptimizer):
        if type(choice) is InnerSGD and not choice.momentum and not choice.weight_decay:
            return None
        return choice
    if isinstance(choice, str) and choice in NAMES:
        make = NAMES[choice]
        return None if make is None else make()
    raise ValueError(f"inner_optimizer must be one of {tuple(NAMES)} or a fastmaml InnerOptimizer "
                     f"(InnerSGD, InnerAdam, InnerAdamW, InnerRMSprop), got {choice!r}")


__all__ = ["NAMES", "InnerAdam", "InnerAdamW", "InnerOptimizer", "InnerRMSprop", "InnerSGD", "OptimState", "resolve"]
