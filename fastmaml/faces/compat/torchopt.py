"""TorchOpt-shaped MetaSGD, MetaAdam, MetaAdamW, MetaRMSProp, the functional sgd / adam / adamw /
rmsprop with apply_updates, extract_state_dict, recover_state_dict, stop_gradient and module_clone,
on fastmaml's fused inner optimizers (fastmaml/ops/optim.py). ::

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

Same arguments and arithmetic as TorchOpt 0.7.3 (momentum, dampening, Nesterov, weight decay,
maximize, eps_root, initial_scale, centered, a schedule `lr(count)`): `step(loss)` differentiates
`loss` with create_graph=True and writes the new, non-leaf parameter tensors into the module's own
parameter slots, as TorchOpt does. Each step is one fused multi-tensor op over all parameters of a
group: the moments op (new parameters and new state, NOTE: [moment forms]; plain SGD: the update op). The
optimizer's state is a tuple of fastmaml.ops.optim.OptimState(count, m, v, b) (TorchOpt: its own
named tuples), taken and put back by extract_state_dict / recover_state_dict all the same. Adam's
bias corrections are TorchOpt's: computed in float32 whatever the parameters' dtype (1 - beta **
count with an integer count tensor), a ~1e-7 relative difference from torch.optim.Adam that the
face keeps so that its meta-gradients equal TorchOpt's.

As in TorchOpt, the momentum trace's "first step" (buf = g rather than momentum * buf + (1 -
dampening) * g) happens once per optimizer, not once per task: after recover_state_dict the trace
restarts from zeros but not from the first-step rule. That matters only with dampening != 0.
Differences: a parameter with requires_grad=False is left as it is (TorchOpt raises), and
`enable_visual` records nothing (TorchOpt's graph visualisation is not provided); AdamW's `mask`
and `use_accelerated_op` (accepted, the fused op is always used) are the only arguments refused
or ignored.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, NoReturn, cast, overload

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from fastmaml.ops.optim import (
    Form,
    InnerAdam,
    InnerAdamW,
    InnerOptimizer,
    InnerRMSprop,
    InnerSGD,
    OptimState,
)

__all__ = [
    "FunctionalState",
    "GradientTransformation",
    "MetaAdam",
    "MetaAdamW",
    "MetaOptimizer",
    "MetaRMSProp",
    "MetaSGD",
    "ModuleState",
    "adam",
    "adamw",
    "apply_updates",
    "extract_module_containers",
    "extract_state_dict",
    "module_clone",
    "recover_state_dict",
    "rmsprop",
    "sgd",
    "stop_gradient",
]

_PROVIDED = ", ".join(__all__)

PyTree = Any  # a (nested) tuple, list or dict of tensors, as torch.utils._pytree flattens it
# a learning rate: a number >= 0, a tensor, or a schedule step count -> rate
Rate = float | Tensor | Callable[[int], float | Tensor]


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
    functionally with a fastmaml inner optimizer (fastmaml/ops/optim.py: one fused multi-tensor op
    per step, NOTE: [moment forms]).

    Args:
        module: the module whose parameters the optimizer steps.
        impl: the inner optimizer (None: plain SGD).
        lr: the learning rate, a number >= 0, a tensor or a schedule count -> lr.
        maximize: ascend instead of descend.
        moment_requires_grad: keep the moments differentiable.
    """

    def __init__(self, module: nn.Module, impl: InnerOptimizer | None = None, lr: Rate = 0.0,
                 maximize: bool = False, moment_requires_grad: bool = False) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"{type(self).__name__}: module must be an nn.Module, got {type(module).__name__}")
        if not (callable(lr) or isinstance(lr, Tensor) or (isinstance(lr, (int, float)) and not isinstance(lr, bool)
                                                            and lr >= 0.0)):
            raise ValueError(f"{type(self).__name__}: Invalid learning rate: {lr} (expected a number >= 0 or a "
                             "schedule count -> lr)")
        self.impl = InnerSGD() if impl is None else impl
        self.lr = lr
        self.maximize = bool(maximize)
        self.moment_requires_grad = bool(moment_requires_grad)
        self.param_containers_groups: list[tuple[dict, ...]] = []
        self.state_groups: list[OptimState | None] = []
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
                grads[j] = g.neg() if g is not None and self.maximize else g
            state = self.state_groups[i]
            if state is None:
                state = _init(self.impl, params, self.moment_requires_grad)
            lr = self.lr(state.count) if callable(self.lr) else self.lr
            indices, new, self.state_groups[i] = _step(self.impl, params, grads, state, lr)
            for j, p in zip(indices, new):
                c, k = slots[j]
                c[k] = p


def _init(impl: InnerOptimizer, params: Sequence[Tensor], requires_grad: bool) -> OptimState:
    state = impl.init([p.detach() for p in params])
    if requires_grad:
        state = _map_state(state, lambda t: t.requires_grad_())
    return state


def _step(impl: InnerOptimizer, params: Sequence[Tensor], grads: Sequence[Tensor | None], state: OptimState,
          lr: float | Tensor) -> tuple[list[int], list[Tensor], OptimState]:
    return impl.step_some(params, grads, state, _rate(lr, params))


def _rate(lr: float | Tensor, params: Sequence[Tensor]) -> float | list[Tensor]:
    return [lr.to(p.device, p.dtype) for p in params] if isinstance(lr, Tensor) else float(lr)


class _TorchOptSGD(InnerSGD):
    """TorchOpt's trace: its first step (b = g) is the optimizer's first, not the state's."""

    first_call = True

    def form(self, count: int) -> Form:
        form = super().form(0 if self.first_call else 1)
        self.first_call = False
        return form


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

    def __init__(self, module: nn.Module, lr: Rate, momentum: float = 0.0, weight_decay: float = 0.0,
                 dampening: float = 0.0, nesterov: bool = False, moment_requires_grad: bool = True,
                 maximize: bool = False) -> None:
        try:
            impl = _TorchOptSGD(momentum, dampening, weight_decay, nesterov)
        except ValueError as error:
            raise ValueError(f"MetaSGD: {error}") from None
        super().__init__(module, impl, lr, maximize, moment_requires_grad)


class MetaAdam(MetaOptimizer):
    """``torchopt.MetaAdam(module, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *,
    eps_root=0.0, moment_requires_grad=True, maximize=False, use_accelerated_op=False)``.

    Args:
        module: the module whose parameters the optimizer steps in place.
        lr: the learning rate (a number >= 0, a tensor, or a schedule count -> lr).
        betas: the moments' decay rates (beta1, beta2).
        eps: added to the square root of the second moment.
        weight_decay: coupled L2 weight decay.
        eps_root: added inside the square root.
        moment_requires_grad: keep the moments differentiable (the meta-gradient flows through them).
        maximize: ascend instead of descend.
        use_accelerated_op: accepted for TorchOpt's signature; fastmaml's fused ops always run.
    """

    def __init__(self, module: nn.Module, lr: Rate = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, *, eps_root: float = 0.0, moment_requires_grad: bool = True,
                 maximize: bool = False, use_accelerated_op: bool = False) -> None:
        super().__init__(module, InnerAdam(betas, eps, weight_decay, eps_root=eps_root, bias_correction="torchopt"), lr, maximize,
                         moment_requires_grad)


class MetaAdamW(MetaOptimizer):
    """``torchopt.MetaAdamW(module, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, *,
    eps_root=0.0, mask=None, moment_requires_grad=False, maximize=False, use_accelerated_op=False)``;
    a `mask` (decay only some parameters) is refused.

    Args:
        module: the module whose parameters the optimizer steps in place.
        lr: the learning rate (a number >= 0, a tensor, or a schedule count -> lr).
        betas: the moments' decay rates (beta1, beta2).
        eps: added to the square root of the second moment.
        weight_decay: decoupled weight decay (AdamW).
        eps_root: added inside the square root.
        mask: refused: decay only some parameters is not supported.
        moment_requires_grad: keep the moments differentiable (the meta-gradient flows through them).
        maximize: ascend instead of descend.
        use_accelerated_op: accepted for TorchOpt's signature; fastmaml's fused ops always run.
    """

    def __init__(self, module: nn.Module, lr: Rate = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, *, eps_root: float = 0.0, mask: object = None, moment_requires_grad: bool = False,
                 maximize: bool = False, use_accelerated_op: bool = False) -> None:
        if mask is not None:
            raise NotImplementedError("MetaAdamW: mask= (weight decay on some parameters only) is not supported by "
                                      "fastmaml.compat.torchopt; use torchopt itself for it")
        super().__init__(module, InnerAdamW(betas, eps, weight_decay, eps_root=eps_root, bias_correction="torchopt"), lr, maximize,
                         moment_requires_grad)


class MetaRMSProp(MetaOptimizer):
    """``torchopt.MetaRMSProp(module, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
    centered=False, *, initial_scale=0.0, nesterov=False, maximize=False)``.

    Args:
        module: the module whose parameters the optimizer steps in place.
        lr: the learning rate (a number >= 0, a tensor, or a schedule count -> lr).
        alpha: the square average's decay rate.
        eps: added to the square root of the square average.
        weight_decay: coupled L2 weight decay.
        momentum: the momentum factor (0: none).
        centered: normalise by the variance estimate instead of the square average.
        initial_scale: the square average's initial value.
        nesterov: Nesterov momentum.
        maximize: ascend instead of descend.
    """

    def __init__(self, module: nn.Module, lr: Rate = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False, *,
                 initial_scale: float = 0.0, nesterov: bool = False, maximize: bool = False) -> None:
        impl = InnerRMSprop(alpha, eps, weight_decay, momentum, centered, nesterov=nesterov, initial_scale=initial_scale)
        super().__init__(module, impl, lr, maximize, False)


MetaRMSprop = MetaRMSProp


# ---- the functional API: init / update / apply_updates ------------------------------------------
class GradientTransformation(NamedTuple):
    """TorchOpt's (init, update) pair: `state = init(params)`; `updates, state = update(grads, state,
    params=params, inplace=False)`; then `params = apply_updates(params, updates, inplace=False)`.

    Args:
        init: params -> state.
        update: (grads, state, params=None, inplace=True) -> (updates, state).
    """

    init: Callable
    update: Callable


class FunctionalState(NamedTuple):
    """A functional optimizer's state: the inner optimizer's (count and moments).

    Args:
        inner: the inner optimizer's OptimState.
    """

    inner: OptimState


def _functional(impl: InnerOptimizer, lr: Rate, maximize: bool, moment_requires_grad: bool) -> GradientTransformation:
    if not (callable(lr) or (isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr >= 0.0)):
        raise ValueError(f"Invalid learning rate: {lr} (expected a number >= 0 or a schedule count -> lr)")

    def init(params: PyTree) -> FunctionalState:
        leaves, _ = tree_flatten(params)
        return FunctionalState(_init(impl, leaves, moment_requires_grad))

    def update(updates: PyTree, state: FunctionalState, *, params: PyTree = None,
               inplace: bool = True) -> tuple[PyTree, FunctionalState]:
        grads, spec = tree_flatten(updates)
        needs_params = bool(getattr(impl, "weight_decay", 0.0))
        if needs_params and params is None:
            raise ValueError("update: this optimizer has weight decay: pass params=...")
        leaves = tree_flatten(params)[0] if params is not None else [g.detach() for g in grads]
        if maximize:
            grads = [g.neg() for g in grads]
        inner = state.inner
        rate = lr(inner.count) if callable(lr) else lr
        d, inner = impl.direction(leaves, grads, inner)
        if impl.decoupled_decay:
            d = [x.add(p, alpha=impl.decoupled_decay) for x, p in zip(d, leaves)]
        return tree_unflatten([x.mul(-rate) for x in d], spec), FunctionalState(inner)

    return GradientTransformation(init, update)


def sgd(lr: Rate, momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False, *,
        moment_requires_grad: bool = False, maximize: bool = False) -> GradientTransformation:
    """torchopt.sgd: the functional SGD (momentum, dampening, Nesterov, weight decay).

    Args:
        lr: the learning rate (a number >= 0, a tensor, or a schedule count -> lr).
        momentum: the momentum factor (0: none).
        dampening: the dampening of the momentum.
        weight_decay: coupled L2 weight decay.
        nesterov: Nesterov momentum.
        moment_requires_grad: keep the moments differentiable (the meta-gradient flows through them).
        maximize: ascend instead of descend.
    """
    return _functional(_TorchOptSGD(momentum, dampening, weight_decay, nesterov), lr, maximize, moment_requires_grad)


def adam(lr: Rate = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0, *,
         eps_root: float = 0.0, moment_requires_grad: bool = False, maximize: bool = False,
         use_accelerated_op: bool = False) -> GradientTransformation:
    """torchopt.adam: the functional Adam.

    Args:
        lr: the learning rate (a number >= 0, a tensor, or a schedule count -> lr).
        betas: the moments' decay rates (beta1, beta2).
        eps: added to the square root of the second moment.
        weight_decay: coupled L2 weight decay.
        eps_root: added inside the square root.
        moment_requires_grad: keep the moments differentiable (the meta-gradient flows through them).
        maximize: ascend instead of descend.
        use_accelerated_op: accepted for TorchOpt's signature; fastmaml's fused ops always run.
    """
    return _functional(InnerAdam(betas, eps, weight_decay, eps_root=eps_root, bias_correction="torchopt"), lr, maximize, moment_requires_grad)


def adamw(lr: Rate = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
          *, eps_root: float = 0.0, mask: object = None, moment_requires_grad: bool = False, maximize: bool = False,
          use_accelerated_op: bool = False) -> GradientTransformation:
    """torchopt.adamw: the functional AdamW (no `mask`).

    Args:
        lr: the learning rate (a number >= 0, a tensor, or a schedule count -> lr).
        betas: the moments' decay rates (beta1, beta2).
        eps: added to the square root of the second moment.
        weight_decay: decoupled weight decay (AdamW).
        eps_root: added inside the square root.
        mask: refused: decay only some parameters is not supported.
        moment_requires_grad: keep the moments differentiable (the meta-gradient flows through them).
        maximize: ascend instead of descend.
        use_accelerated_op: accepted for TorchOpt's signature; fastmaml's fused ops always run.
    """
    if mask is not None:
        raise NotImplementedError("adamw: mask= is not supported by fastmaml.compat.torchopt")
    return _functional(InnerAdamW(betas, eps, weight_decay, eps_root=eps_root, bias_correction="torchopt"), lr, maximize, moment_requires_grad)


def rmsprop(lr: Rate = 1e-2, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0, momentum: float = 0.0,
            centered: bool = False, *, initial_scale: float = 0.0, nesterov: bool = False,
            maximize: bool = False) -> GradientTransformation:
    """torchopt.rmsprop: the functional RMSProp.

    Args:
        lr: the learning rate (a number >= 0, a tensor, or a schedule count -> lr).
        alpha: the square average's decay rate.
        eps: added to the square root of the square average.
        weight_decay: coupled L2 weight decay.
        momentum: the momentum factor (0: none).
        centered: normalise by the variance estimate instead of the square average.
        initial_scale: the square average's initial value.
        nesterov: Nesterov momentum.
        maximize: ascend instead of descend.
    """
    impl = InnerRMSprop(alpha, eps, weight_decay, momentum, centered, nesterov=nesterov, initial_scale=initial_scale)
    return _functional(impl, lr, maximize, False)


def apply_updates(params: PyTree, updates: PyTree, *, inplace: bool = True) -> PyTree:
    """params + updates, leaf by leaf (in place on the tensors' data with inplace=True, as TorchOpt).

    Args:
        params: a tree of tensors.
        updates: a tree of the same structure.
        inplace: add into params' data in place (TorchOpt's default) instead of new tensors.
    """
    add: Callable[[Tensor, Tensor | None], Tensor]
    if inplace:
        def add(p: Tensor, u: Tensor | None) -> Tensor:
            if u is not None:
                p.data.add_(u)
            return p
    else:
        def add(p: Tensor, u: Tensor | None) -> Tensor:
            return p if u is None else p.add(u)
    p_leaves, spec = tree_flatten(params)
    u_leaves = tree_flatten(updates)[0]
    return tree_unflatten([add(p, u) for p, u in zip(p_leaves, u_leaves)], spec)


def stop_gradient(target: nn.Module | ModuleState | MetaOptimizer | PyTree) -> None:
    """Detach, in place, a module's parameters, a ModuleState, a MetaOptimizer's state or a tree of
    tensors from their graph (keeping requires_grad).

    Args:
        target: a module, ModuleState, MetaOptimizer or tree of tensors.
    """
    tree: PyTree
    if isinstance(target, ModuleState):
        tree = (target.params, target.buffers)
    elif isinstance(target, nn.Module):
        tree = tuple(target.parameters())
    elif isinstance(target, MetaOptimizer):
        tree = [list(s) for s in target.state_dict() if s is not None]
    else:
        tree = target
    for t in tree_flatten(tree)[0]:
        if isinstance(t, Tensor):
            requires_grad = t.requires_grad
            t.detach_().requires_grad_(requires_grad)


def module_clone(target: nn.Module | MetaOptimizer | PyTree, *, by: str = "reference", detach_buffers: bool = False,
                 device: str | torch.device | None = None) -> nn.Module | MetaOptimizer | PyTree:
    """A copy of a module or MetaOptimizer whose tensors are taken `by` "reference", "copy" (clones
    in the graph) or "deepcopy" (detached clones), or such a copy of a tree of tensors.

    Args:
        target: a module, MetaOptimizer or tree of tensors.
        by: "reference", "copy" or "deepcopy".
        detach_buffers: detach the buffers of a module's copy.
        device: where the copy lives (None: where the tensors are).
    """
    replicate, _ = _replicator(by, device)
    if isinstance(target, (nn.Module, MetaOptimizer)):
        containers: PyTree
        if isinstance(target, nn.Module):
            containers = extract_module_containers(target, with_buffers=True)
        else:
            containers = [list(s) for s in target.state_dict() if s is not None]
        memo = {id(t): t for t in tree_flatten(containers)[0] if isinstance(t, Tensor)}
        cloned = copy.deepcopy(target, memo=memo)
        recover_state_dict(cloned, extract_state_dict(target, by=by, with_buffers=True,
                                                      detach_buffers=detach_buffers, device=device))
        return cloned
    leaves, spec = tree_flatten(target)
    return tree_unflatten([replicate(t) if isinstance(t, Tensor) else t for t in leaves], spec)


def _replicator(by: str, device: str | torch.device | None) -> tuple[Callable[[Tensor], Tensor],
                                                                   Callable[[Tensor], Tensor]]:
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


def extract_state_dict(target: nn.Module | MetaOptimizer, *, by: str = "reference",
                       device: str | torch.device | None = None, with_buffers: bool = True,
                       detach_buffers: bool = False, enable_visual: bool = False,
                       visual_prefix: str = "") -> ModuleState | tuple[OptimState | None, ...]:
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
                params.append(cast("type[dict[str, Tensor]]", type(sub._parameters))(
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


@overload
def _map_state(state: OptimState, fn: Callable[[Tensor], Tensor]) -> OptimState: ...


@overload
def _map_state(state: None, fn: Callable[[Tensor], Tensor]) -> None: ...


def _map_state(state: OptimState | None, fn: Callable[[Tensor], Tensor]) -> OptimState | None:
    if state is None:
        return state
    moments: dict[str, Any] = {k: None if x is None else [fn(t) for t in x]
                               for k, x in zip(("m", "v", "b"), state[1:])}
    return state._replace(**moments)


def recover_state_dict(target: nn.Module | MetaOptimizer, state: ModuleState | Sequence[OptimState | None]) -> None:
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


def __getattr__(name: str) -> NoReturn:
    raise AttributeError(f"fastmaml.compat.torchopt has no {name!r}: it provides {_PROVIDED}; "
                         "use torchopt itself for the rest")
