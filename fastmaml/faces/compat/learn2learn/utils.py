"""learn2learn.utils: clone_module, update_module, detach_module and the small helpers beside them.

`clone_module` is a shallow structural clone (fastmaml.compat._module.FastSlots) that puts the
parameters themselves into the copy instead of `p.clone()` copies: the same gradients, no copy.
`update_module` applies `p + u` for every parameter with an update in one dispatched
fastmaml.ops.update call (lr = -1: p - (-1) * u), instead of one add per parameter.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar, cast

import torch
from torch import Tensor, nn

from fastmaml import ops
from fastmaml.faces.compat._module import FastSlots, share

T = TypeVar("T")

__all__ = ["accuracy", "clone_module", "clone_named_parameters", "clone_parameters", "detach_module",
           "magic_box", "update_module"]


def clone_module(module: T, memo: dict[int, Any] | None = None) -> T:
    """A shallow clone of `module` holding its parameters (gradients flow back to them) and
    sharing its buffers; a buffer with requires_grad=True is cloned into the graph (learn2learn's
    rule). Tied parameters stay tied.

    Args:
        module: the module to clone (anything else is returned as it is, as in learn2learn).
        memo: accepted for learn2learn's signature, unused.
    """
    if not isinstance(module, nn.Module):
        return module
    return cast(T, FastSlots(module, buffer_rule=share).root)


def update_module(module: nn.Module, updates: Sequence[Tensor | None] | None = None,
                  memo: dict[int, Any] | None = None) -> nn.Module:
    """Replace every parameter p of `module` that has an update u by p + u, differentiably (the
    module's slots get new tensors; the old ones are untouched). Returns `module`.

    Args:
        module: the (cloned) module to update in place.
        updates: one update (or None) per parameter in `module.parameters()` order; None: each
            parameter's `.update` attribute, reset to None afterwards, as in learn2learn.
        memo: accepted for learn2learn's signature, unused.
    """
    slots = FastSlots.of(module)
    params = slots.current()
    if updates is not None:
        updates = list(updates)
        if len(updates) != len(params):
            warnings.warn(f"update_module: {len(params)} parameters but {len(updates)} updates; the first "
                          f"{min(len(params), len(updates))} are applied", stacklevel=2)
        for p, u in zip(params, updates):
            cast(Any, p).update = u  # learn2learn's convention: the update rides on the tensor
    idx = [i for i, p in enumerate(params) if getattr(p, "update", None) is not None]
    if idx:
        chosen = [params[i] for i in idx]
        steps = [cast(Any, p).update for p in chosen]
        for p in chosen:
            cast(Any, p).update = None
        slots.assign(ops.update(chosen, steps, -1.0, names=[slots.names[i] for i in idx]), idx)
    return module


def detach_module(module: nn.Module, keep_requires_grad: bool = False) -> None:
    """Detach every parameter (and every buffer that requires grad) of a cloned module from the
    graph, in place.

    Args:
        module: the (cloned) module (anything else is left alone, as in learn2learn).
        keep_requires_grad: the detached tensors keep requiring grad.
    """
    if not isinstance(module, nn.Module):
        return
    # new detached tensors in the slots, not detach_(): a fresh clone's slots hold the original
    # model's own parameters, which must keep their graph; `done` keeps tied weights tied
    done: dict[int, Tensor] = {}
    for mod in module.modules():
        tables: tuple[tuple[dict[str, Tensor | None], bool], ...] = (
            (cast("dict[str, Tensor | None]", mod._parameters), False), (mod._buffers, True))
        for table, wanted in tables:
            for key, t in table.items():
                if t is None or (wanted and not t.requires_grad):
                    continue
                if id(t) not in done:
                    done[id(t)] = t.detach().requires_grad_(keep_requires_grad and t.requires_grad)
                table[key] = done[id(t)]


def clone_parameters(param_list: Iterable[Tensor]) -> list[Tensor]:
    """`p.clone()` of each tensor (differentiable copies).

    Args:
        param_list: the tensors to clone.
    """
    return [p.clone() for p in param_list]


def clone_named_parameters(param_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """name -> `p.clone()` of each tensor (differentiable copies).

    Args:
        param_dict: name -> tensor.
    """
    return {k: p.clone() for k, p in param_dict.items()}


def magic_box(x: T) -> T:
    """DiCE's magic box: 1 in value, d x in gradient (exp(x - stop_gradient(x))).

    Args:
        x: a tensor (anything else is returned as it is).
    """
    return cast(T, torch.exp(x - x.detach())) if isinstance(x, Tensor) else x


def accuracy(preds: Tensor, targets: Tensor) -> Tensor:
    """Fraction of rows of `preds` whose argmax equals `targets`.

    Args:
        preds: [N, classes] scores.
        targets: [N] class indices.
    """
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
