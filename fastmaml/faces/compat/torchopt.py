"""TorchOpt-shaped MetaSGD, extract_state_dict and recover_state_dict on fastmaml's fused update. ::

    import fastmaml.compat.torchopt as torchopt       # was: import torchopt
    inner_opt = torchopt.MetaSGD(net, lr=0.1)
    net_state = torchopt.extract_state_dict(net, by="reference", detach_buffers=True)
    opt_state = torchopt.extract_state_dict(inner_opt, by="reference")
    for task in tasks:
        for _ in range(steps):
            inner_opt.step(loss_fn(net(x_s), y_s))    # net's parameters become the adapted ones
        loss_fn(net(x_q), y_q).backward()             # meta-gradients land on the original parameters
        torchopt.recover_state_dict(net, net_state)
        torchopt.recover_state_dict(inner_opt, opt_state)

Same arguments and arithmetic as TorchOpt 0.7.3's MetaSGD (momentum, dampening, Nesterov,
weight decay, maximize, a schedule `lr(count)`): `step(loss)` differentiates `loss` with
create_graph=True and writes the new, non-leaf parameter tensors into the module's own parameter
slots, as TorchOpt does. The parameter update is one fastmaml.ops.update call for all parameters
of a group (one fused op with the native backend); the momentum trace is computed before it.

As in TorchOpt, the momentum trace's "first step" (buf = g rather than momentum * buf + (1 -
dampening) * g) happens once per optimizer, not once per task: after recover_state_dict the trace
restarts from zeros but not from the first-step rule. That matters only with dampening != 0.
Differences: a parameter with requires_grad=False is left as it is (TorchOpt raises), and
`enable_visual` records nothing (TorchOpt's graph visualisation is not provided).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from fastmaml import ops

__all__ = [
    "MetaOptimizer",
    "MetaSGD",
    "ModuleState",
    "SGDState",
    "extract_module_containers",
    "extract_state_dict",
    "recover_state_dict",
]

_PROVIDED = ", ".join(__all__)


class ModuleState(NamedTuple):
    """The tensors of a module as extract_state_dict takes them: one dict per submodule's
    `_parameters` (and `_buffers`) that has entries.

    Attributes:
        params: one dict of parameters per submodule.
        buffers: one dict of buffers per submodule.
        visual_contents: TorchOpt's visualisation names, or None.
        detach_buffers: whether the buffers were detached.
    """

    params: tuple[dict, ...]
    buffers: tuple[dict, ...]
    visual_contents: dict | None = None
    detach_buffers: bool = False


class SGDState(NamedTuple):
    """One parameter group's state: the momentum trace (one tensor per parameter slot, None
    without momentum or before the first step) and the number of steps taken (for a schedule).

    Attributes:
        trace: the momentum trace, one tensor per parameter slot (None before the first step).
        count: the steps taken.
    """

    trace: tuple[Tensor | None, ...] | None
    count: int


def extract_module_containers(module: nn.Module, with_buffers: bool = True) -> tuple[tuple[dict, ...], tuple[dict, ...]]:
    """The `_parameters` (and `_buffers`) dicts themselves of module and its submodules (each
    submodule once), those with entries: writing into them changes the module.

    Args:
        module: the module.
        with_buffers: also the `_buffers` dicts.
    """
    if not isinstance(module, nn.Module):
        raise RuntimeError(f"Unexpected class of {module}")
    params: list[dict] = []
    buffers: list[dict] = []
    for sub in module.modules():
        if len(sub._parameters) > 0:
            params.append(sub._parameters)
        if with_buffers and len(sub._buffers) > 0:
            buffers.append(sub._buffers)
    return tuple(params), tuple(buffers)


class MetaOptimizer:
    """TorchOpt's MetaOptimizer: holds the parameter dicts of one module per group and steps them
    functionally.

    Args:
        module: the module whose parameters the optimizer steps.
    """

    def __init__(self, module: nn.Module):
        if not isinstance(module, nn.Module):
            raise TypeError(f"{type(self).__name__}: module must be an nn.Module, got {type(module).__name__}")
        self.param_containers_groups: list[tuple[dict, ...]] = []
        self.state_groups: list[SGDState | None] = []
        self.add_param_group(module)

    def add_param_group(self, module: nn.Module) -> None:
        self.param_containers_groups.append(extract_module_containers(module, with_buffers=False)[0])
        self.state_groups.append(None)

    def state_dict(self) -> tuple:
        return tuple(self.state_groups)

    def load_state_dict(self, state_dict: Sequence) -> None:
        self.state_groups[:] = list(state_dict)

    def step(self, loss: Tensor) -> None:
        """One differentiable step on `loss`: each group's parameters are replaced, in the module,
        by their updated values (functions of the old ones)."""
        for i, containers in enumerate(self.param_containers_groups):
            slots = [(c, k) for c in containers for k, v in c.items() if isinstance(v, Tensor)]
            params = [c[k] for c, k in slots]
            wrt = [j for j, p in enumerate(params) if p.requires_grad]
            got = torch.autograd.grad(loss, [params[j] for j in wrt], create_graph=True, allow_unused=True)
            grads: list[Tensor | None] = [None] * len(params)
            for j, g in zip(wrt, got):
                grads[j] = g
            state = self.state_groups[i]
            if state is None:
                state = self._init_state(params)
            indices, new, self.state_groups[i] = self._update(params, grads, state)
            for j, p in zip(indices, new):
                c, k = slots[j]
                c[k] = p

    def _init_state(self, params: list[Tensor]):
        raise NotImplementedError

    def _update(self, params, grads, state):
        raise NotImplementedError


class MetaSGD(MetaOptimizer):
    """torchopt.MetaSGD(module, lr, momentum=0.0, weight_decay=0.0, dampening=0.0,
    nesterov=False, moment_requires_grad=True, maximize=False).

    Args:
        module: the module whose parameters are stepped differentiably.
        lr: the learning rate, or a schedule count -> rate.
        momentum: the momentum factor.
        weight_decay: L2 penalty added to the gradient.
        dampening: momentum dampening.
        nesterov: Nesterov momentum.
        moment_requires_grad: whether the momentum trace stays in the graph.
        maximize: ascend instead of descend.
    """

    def __init__(self, module: nn.Module, lr: float | Callable, momentum: float = 0.0, weight_decay: float = 0.0,
                 dampening: float = 0.0, nesterov: bool = False, moment_requires_grad: bool = True,
                 maximize: bool = False):
        if not (callable(lr) or (isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr >= 0.0)):
            raise ValueError(f"MetaSGD: Invalid learning rate: {lr} (expected a number >= 0 or a schedule count -> lr)")
        if not momentum >= 0.0:
            raise ValueError(f"MetaSGD: Invalid momentum value: {momentum}")
        if not weight_decay >= 0.0:
            raise ValueError(f"MetaSGD: Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0.0 or dampening != 0.0):
            raise ValueError("MetaSGD: Nesterov momentum requires a momentum and zero dampening")
        self.lr = lr
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.dampening = float(dampening)
        self.nesterov = bool(nesterov)
        self.moment_requires_grad = bool(moment_requires_grad)
        self.maximize = bool(maximize)
        self._first_call = True  # TorchOpt's trace: per optimizer, not restored by load_state_dict
        super().__init__(module)

    def _init_state(self, params):
        trace = None
        if self.momentum != 0.0:
            trace = tuple(torch.zeros_like(p, requires_grad=self.moment_requires_grad) for p in params)
        return SGDState(trace=trace, count=0)

    def _update(self, params, grads, state: SGDState):
        wd, momentum = self.weight_decay, self.momentum
        if self.maximize or wd != 0.0:
            # g <- -g (maximize), then g + wd * p
            grads = [None if g is None else (g.neg() if self.maximize else g) for g in grads]
            if wd != 0.0:
                grads = [None if g is None else g.add(p, alpha=wd) for p, g in zip(params, grads)]
        trace = state.trace
        if momentum != 0.0:
            first, damp = self._first_call, 1.0 - self.dampening
            new_trace = list(trace)
            for j, (t, g) in enumerate(zip(trace, grads)):
                if g is None:
                    continue
                if first:
                    buf = t.add(g)
                elif self.nesterov:
                    buf = t.mul(momentum).add_(g)
                else:
                    buf = t.mul(momentum).add_(g, alpha=damp)
                new_trace[j] = buf
                grads[j] = g.add(buf, alpha=momentum) if self.nesterov else buf
            trace = tuple(new_trace)
            self._first_call = False
        lr = self.lr(state.count) if callable(self.lr) else self.lr
        new_state = SGDState(trace=trace, count=state.count + 1)
        indices = [j for j, g in enumerate(grads) if g is not None]
        if not indices:
            return [], [], new_state
        ps = [params[j] for j in indices]
        rate = [lr.to(p.device, p.dtype) for p in ps] if isinstance(lr, Tensor) else float(lr)
        return indices, ops.update(ps, [grads[j] for j in indices], rate), new_state


def _replicator(by: str, device):
    if by not in ("reference", "copy", "deepcopy", "ref", "clone", "deepclone"):
        raise ValueError(f"extract_state_dict: by must be one of 'reference', 'copy', 'deepcopy' "
                         f"(or 'ref', 'clone', 'deepclone'), got {by!r}")
    by = {"ref": "reference", "clone": "copy", "deepclone": "deepcopy"}.get(by, by)
    move = (lambda t: t) if device is None else (lambda t: t.to(device=torch.device(device)))

    def clone_detach_(t: Tensor) -> Tensor:
        if isinstance(t, nn.Parameter):
            return nn.Parameter(move(t.clone()).detach_(), requires_grad=t.requires_grad)
        return move(t.clone()).detach_().requires_grad_(t.requires_grad)

    if by == "reference":
        return move, clone_detach_
    if by == "copy":
        return (lambda t: move(t.clone())), clone_detach_
    return clone_detach_, clone_detach_


def extract_state_dict(target, *, by: str = "reference", device=None, with_buffers: bool = True,
                       detach_buffers: bool = False, enable_visual: bool = False, visual_prefix: str = ""):
    """The tensors of a module (a ModuleState) or the state of a MetaOptimizer, by "reference"
    (the tensors themselves), "copy" (clones, still in the graph) or "deepcopy" (detached
    clones); detach_buffers=True takes buffers as detached clones whatever `by` says.

    Args:
        target: a module or a MetaOptimizer.
        by: "reference", "copy" or "deepcopy" (detached copies).
        device: where copies go (None: as they are).
        with_buffers: also the buffers (modules).
        detach_buffers: detach the buffers taken by reference.
        enable_visual: record names for TorchOpt's visualisation.
        visual_prefix: the prefix of those names.
    """
    replicate, clone_detach_ = _replicator(by, device)
    if isinstance(target, nn.Module):
        params: list[dict] = []
        buffers: list[dict] = []
        for sub in target.modules():
            if len(sub._parameters) > 0:
                params.append(type(sub._parameters)(
                    (k, replicate(v)) for k, v in sub._parameters.items() if isinstance(v, Tensor)))
            if with_buffers and len(sub._buffers) > 0:
                fn = clone_detach_ if detach_buffers else replicate
                buffers.append(type(sub._buffers)(
                    (k, fn(v)) for k, v in sub._buffers.items() if isinstance(v, Tensor)))
        return ModuleState(params=tuple(params), buffers=tuple(buffers), visual_contents=None,
                           detach_buffers=detach_buffers)
    if isinstance(target, MetaOptimizer):
        return tuple(_map_state(s, replicate) for s in target.state_dict())
    raise RuntimeError(f"Unexpected class of {target}")


def _map_state(state, fn):
    if state is None or state.trace is None:
        return state
    return state._replace(trace=tuple(None if t is None else fn(t) for t in state.trace))


def recover_state_dict(target, state) -> None:
    """Put back what extract_state_dict took: a module's parameters (and buffers, as fresh
    detached clones if they were extracted with detach_buffers=True), or a MetaOptimizer's state.

    Args:
        target: the module or MetaOptimizer the state came from.
        state: what extract_state_dict returned.
    """
    if isinstance(target, nn.Module):
        if not isinstance(state, ModuleState):
            raise TypeError(f"recover_state_dict: a module needs a ModuleState, got {type(state).__name__}")
        params_containers, buffers_containers = extract_module_containers(target, with_buffers=True)
        buffers = state.buffers
        if state.detach_buffers:
            _, clone_detach_ = _replicator("reference", None)
            buffers = tuple(type(d)((k, clone_detach_(v)) for k, v in d.items()) for d in buffers)
        for tgt, src in list(zip(params_containers, state.params)) + list(zip(buffers_containers, buffers)):
            tgt.update(src)
    elif isinstance(target, MetaOptimizer):
        target.load_state_dict(state)
    else:
        raise RuntimeError(f"Unexpected class of {target}")


def __getattr__(name: str):
    raise AttributeError(f"fastmaml.compat.torchopt has no {name!r}: it provides {_PROVIDED}; "
                         "use torchopt itself for the rest")
