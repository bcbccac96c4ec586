"""learn2learn.utils: clone_module, update_module, detach_module and the small helpers beside them.

`clone_module` is a shallow structural clone (fastmaml.compat._module.FastSlots) that puts the
parameters themselves into the copy instead of `p.clone()` copies: the same gradients, no copy.
`update_module` applies `p + u` for every parameter with an update in one dispatched
fastmaml.ops.update call (lr = -1: p - (-1) * u), instead of one add per parameter.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fastmaml import ops
from fastmaml.faces.compat._module import FastSlots, share

__all__ = ["accuracy", "clone_module", "clone_named_parameters", "clone_parameters", "detach_module",
           "magic_box", "update_module"]


def clone_module(module: nn.Module, memo=None) -> nn.Module:
    """A shallow clone of `module` holding its parameters (gradients flow back to them) and
    sharing its buffers; a buffer with requires_grad=True is cloned into the graph (learn2learn's
    rule). Tied parameters stay tied. `memo` is accepted for learn2learn's signature and unused."""
    if not isinstance(module, nn.Module):
        return module
    return FastSlots(module, buffer_rule=share).root


def update_module(module: nn.Module, updates: Sequence[Tensor | None] | None = None, memo=None) -> nn.Module:
    """Replace every parameter p of `module` that has an update u by p + u, differentiably (the
    module's slots get new tensors; the old ones are untouched). `updates` is one entry (or None)
    per parameter in `module.parameters()` order; without it, each parameter's `.update`
    attribute is used and reset to None, as in learn2learn. Returns `module`."""
    slots = FastSlots.of(module)
    params = slots.current()
    if updates is not None:
        updates = list(updates)
        if len(updates) != len(params):
            warnings.warn(f"update_module: {len(params)} parameters but {len(updates)} updates; the first "
                          f"{min(len(params), len(updates))} are applied", stacklevel=2)
        for p, u in zip(params, updates):
            p.update = u
    idx = [i for i, p in enumerate(params) if getattr(p, "update", None) is not None]
    if idx:
        chosen = [params[i] for i in idx]
        steps = [p.update for p in chosen]
        for p in chosen:
            p.update = None
        slots.assign(ops.update(chosen, steps, -1.0, names=[slots.names[i] for i in idx]), idx)
    return module


def detach_module(module: nn.Module, keep_requires_grad: bool = False) -> None:
    """Detach every parameter (and every buffer that requires grad) of a cloned module from the
    graph, in place; with keep_requires_grad they keep requiring grad."""
    if not isinstance(module, nn.Module):
        return
    # new detached tensors in the slots, not detach_(): a fresh clone's slots hold the original
    # model's own parameters, which must keep their graph; `done` keeps tied weights tied
    done: dict[int, Tensor] = {}
    for mod in module.modules():
        for table, wanted in ((mod._parameters, None), (mod._buffers, True)):
            for key, t in table.items():
                if t is None or (wanted and not t.requires_grad):
                    continue
                if id(t) not in done:
                    done[id(t)] = t.detach().requires_grad_(keep_requires_grad and t.requires_grad)
                table[key] = done[id(t)]


def clone_parameters(param_list) -> list[Tensor]:
    return [p.clone() for p in param_list]


def clone_named_parameters(param_dict) -> dict[str, Tensor]:
    return {k: p.clone() for k, p in param_dict.items()}


def magic_box(x):
    """DiCE's magic box: 1 in value, d x in gradient (exp(x - stop_gradient(x)))."""
    return torch.exp(x - x.detach()) if isinstance(x, Tensor) else x


def accuracy(preds: Tensor, targets: Tensor) -> Tensor:
    """Fraction of rows of `preds` whose argmax equals `targets`."""
    return (preds.argmax(dim=1).long() == targets.long()).sum().float() / preds.size(0)


def gradients(loss: Tensor, params: list[Tensor], create_graph: bool, retain_graph: bool, allow_unused: bool,
              allow_nograd: bool) -> list[Tensor | None]:
    """learn2learn's gradient rules (MAML.adapt, ParameterUpdate): with allow_nograd, parameters
    with requires_grad=False get no gradient (None); otherwise torch.autograd.grad over all of
    them, whose error (such a parameter, or an unused one without allow_unused) is re-raised
    with learn2learn's hint."""
    if allow_nograd:
        wrt = [i for i, p in enumerate(params) if p.requires_grad]
        got = torch.autograd.grad(loss, [params[i] for i in wrt], retain_graph=retain_graph,
                                  create_graph=create_graph, allow_unused=allow_unused)
        grads: list[Tensor | None] = [None] * len(params)
        for i, g in zip(wrt, got):
            grads[i] = g
        return grads
    try:
        return list(torch.autograd.grad(loss, params, retain_graph=retain_graph, create_graph=create_graph,
                                        allow_unused=allow_unused))
    except RuntimeError as e:
        raise RuntimeError(f"{e}\nfastmaml.compat.learn2learn: maybe try with allow_nograd=True and/or "
                           "allow_unused=True (as in learn2learn)") from e
