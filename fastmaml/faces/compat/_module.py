"""Shallow structural clones of a module tree whose parameter slots hold fast weights.

The faces need a module that runs like the user's model with other tensors in place of its
parameters, called as `model(x)`. A shallow clone does that at the cost of one copy of each
submodule's attribute dicts: every submodule is copied (`__dict__`, `_parameters`, `_buffers`,
`_modules`), and the parameter slots of the copies are then rewritten with new tensors, which is
what learn2learn's `clone_module`/`update_module` and higher's patched modules do too. The
forward pass is then the model's own code, without torch.func.functional_call's swapping in and
out on every call.

`FastSlots` remembers, for each distinct parameter of the original (in `model.parameters()`
order), every (submodule, key) slot that holds it, so tied weights stay tied.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

from torch import Tensor, nn

BufferRule = Callable[[Tensor], Tensor]


def share(buffer: Tensor) -> Tensor:
    """learn2learn's rule: buffers are shared with the original (BatchNorm's running statistics
    update the original's in place); a buffer that requires grad is cloned into the graph."""
    return buffer.clone() if buffer.requires_grad else buffer


def copy_detached(buffer: Tensor) -> Tensor:
    """higher's rule (`buffer_sync`): the clone gets its own detached copy of every buffer."""
    return buffer.clone().detach()


SLOTS_KEY = "_fastmaml_slots"


class FastSlots:
    """A shallow clone of `module` (`.root`) and the slots of its distinct parameters; with
    clone=False, the slots of `module` itself (`.root` is `module`).

    names[i] is the first name of distinct parameter i, `slots[i]` the (submodule, key) pairs
    holding it in the clone, `originals[i]` the original tensor. The FastSlots is remembered in
    the root's __dict__ (SLOTS_KEY) so that a module handed around later finds it again."""

    def __init__(self, module: nn.Module, buffer_rule: BufferRule = share, clone: bool = True):
        if not isinstance(module, nn.Module):
            raise TypeError(f"expected an nn.Module, got {type(module).__name__}")
        self.names: list[str] = []
        self.originals: list[Tensor] = []
        self.slots: list[list[tuple[nn.Module, str]]] = []
        self._rnns: list[nn.RNNBase] = []
        index: dict[int, int] = {}
        buffers: dict[int, Tensor] = {}

        def visit(mod: nn.Module, prefix: str) -> nn.Module:
            if clone:
                new = mod.__new__(type(mod))
                d = mod.__dict__.copy()  # set through __dict__: nn.Module.__setattr__ is slow
                d.pop(SLOTS_KEY, None)
                d["_parameters"] = mod._parameters.copy()
                d["_buffers"] = mod._buffers.copy()
                d["_modules"] = mod._modules.copy()
                object.__setattr__(new, "__dict__", d)
            else:
                new = mod
            for key, p in mod._parameters.items():
                if p is None:
                    continue
                i = index.get(id(p))
                if i is None:
                    i = index[id(p)] = len(self.originals)
                    self.names.append(prefix + key)
                    self.originals.append(p)
                    self.slots.append([])
                self.slots[i].append((new, key))
            for key, b in mod._buffers.items():
                if clone and isinstance(b, Tensor):
                    if id(b) not in buffers:
                        buffers[id(b)] = buffer_rule(b)
                    new._buffers[key] = buffers[id(b)]
            for key, child in mod._modules.items():
                if child is not None:
                    new._modules[key] = visit(child, f"{prefix}{key}.")
            if "_flat_weights_names" in new.__dict__:
                self._rnns.append(cast(nn.RNNBase, new))
            return new

        self.root = visit(module, "")
        self.root.__dict__[SLOTS_KEY] = self

    @staticmethod
    def of(module: nn.Module, buffer_rule: BufferRule = share) -> FastSlots:
        """The FastSlots whose root is `module`, or new slots over `module` itself."""
        slots = module.__dict__.get(SLOTS_KEY)
        return slots if slots is not None else FastSlots(module, buffer_rule, clone=False)

    def __len__(self) -> int:
        return len(self.originals)

    def current(self) -> list[Tensor]:
        """The tensors now in the slots, one per distinct parameter."""
        return [cast(Tensor, slots[0][0]._parameters[slots[0][1]]) for slots in self.slots]

    def assign(self, tensors: Sequence[Tensor], indices: Sequence[int] | None = None) -> None:
        """Put tensors[j] into every slot of distinct parameter indices[j] (default: all, in order)."""
        if indices is None:
            if len(tensors) != len(self.slots):
                raise ValueError(f"expected {len(self.slots)} tensors (one per parameter), got {len(tensors)}")
            indices = range(len(self.slots))
        for i, t in zip(indices, tensors):
            for mod, key in self.slots[i]:
                _slots(mod)[key] = t
        for rnn in self._rnns:  # RNNs keep a list of their weights beside _parameters
            rnn._flat_weights = [_slots(rnn).get(n) for n in rnn._flat_weights_names]


def _slots(module: nn.Module) -> dict[str, Tensor | None]:
    """`module._parameters`, whose slots hold fast weights (plain tensors) here, not only Parameters."""
    return cast("dict[str, Tensor | None]", module._parameters)


def lr_list(lr: float | Tensor, params: Sequence[Tensor]) -> float | list[Tensor]:
    """A learning rate for fastmaml.ops.update: a Python number as it is, a tensor as one
    per-parameter rate tensor each (the "scaled" form, differentiable in the rate)."""
    if isinstance(lr, Tensor):
        return [lr.to(p.dtype) if lr.dtype != p.dtype else lr for p in params]
    return float(lr)
