"""The stateful inner optimizers' direction and state: one fused op for all the tensors of a list
(NOTE: [moment forms] in csrc/include/fastmaml/update.h, where the maths is written once):

    d, m', v', b' = moments(grads, params, m, v, b, form)

with `form` (a Form) holding the step's hyper-parameters, bias corrections folded in. The optimizers
(fastmaml/ops/optim.py) then move the parameters by the plain fused update, p - lr * d (AdamW: the
forget form, (1 - lr * wd) * p - lr * d).

NOTE: [moment state]
Why the op returns the new state instead of writing it in place, as torch.optim does: the inner
loop is differentiated, so each step's state is a new node of the graph (m' depends on g, which
depends on the parameters), the old state is an input of the next step's backward, and torch.func
transforms (vmap over tasks) need pure functions. So the op is a multi-output map (d, m', v', b'),
each output differentiable, and an optimizer's state is a tuple of tensor lists passed from step
to step (fastmaml.ops.optim.OptimState). Why a direction d and not the new parameters: the plain
update already takes every learned-rate operand (a number, per-layer or elementwise rate tensors
with their gradients, vmap rules): the rate stays the update's, the moments stay this op's.

Backends: "reference" (the oracle, plain torch ops), "native" (csrc/, CPU and CUDA; its autograd in
native.py); others run the reference. Inside torch.func transforms and torch.compile the native
backend runs the reference ops too (the fused op has no vmap rule).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from torch import Tensor

from fastmaml.ops.dispatch import BACKENDS, Family

MOMENTS = Family.of_package("moments", __name__, tuple(b for b in BACKENDS if b in ("reference", "native")),
                            auto={"cpu": ("native",), "cuda": ("native",)})

ADAM, CENTERED, NESTEROV = 1, 2, 4  # the flags of the schema (csrc/ops.cpp)


@dataclasses.dataclass(frozen=True)
class Form:
    """One step's hyper-parameters (NOTE: [moment forms]): g' = g + wd p; m' = b1 m + c1 g';
    v' = b2 v + c2 g'^2; q = (s1 m' if adam else g') / (sqrt(s2 v' [- m'^2 if centered] + eps_in)
    + eps) when v is kept; b' = mu b + c q; d = q + mu b' if nesterov else b' when b is kept."""

    wd: float = 0.0
    b1: float = 0.0
    c1: float = 0.0
    b2: float = 0.0
    c2: float = 0.0
    s1: float = 1.0
    s2: float = 1.0
    eps_in: float = 0.0
    eps: float = 0.0
    mu: float = 0.0
    c: float = 1.0
    adam: bool = False
    centered: bool = False
    nesterov: bool = False

    @property
    def hyper(self) -> list[float]:
        return [float(getattr(self, f)) for f in ("wd", "b1", "c1", "b2", "c2", "s1", "s2", "eps_in", "eps", "mu", "c")]

    @property
    def flags(self) -> int:
        return ADAM * self.adam + CENTERED * self.centered + NESTEROV * self.nesterov


def _check(grads, params, m, v, b, form) -> None:
    if not isinstance(form, Form):
        raise TypeError(f"moments: form must be a fastmaml.ops.moments.Form, got {type(form).__name__}")
    for name, seq in (("grads", grads), ("params", params), ("m", m), ("v", v), ("b", b)):
        if seq is None:
            continue
        if isinstance(seq, Tensor) or not isinstance(seq, Sequence):
            raise TypeError(f"moments: {name} must be a list of tensors, got {type(seq).__name__}")
        if len(seq) != len(grads):
            raise ValueError(f"moments: {name} has {len(seq)} tensors but grads has {len(grads)}")
        for i, t in enumerate(seq):
            g = grads[i]
            if not isinstance(t, Tensor):
                raise TypeError(f"moments: {name}[{i}] must be a Tensor, got {type(t).__name__}")
            if not t.is_floating_point() or t.shape != g.shape or t.dtype != g.dtype or t.device != g.device:
                raise ValueError(f"moments: {name}[{i}] is {t.dtype} {list(t.shape)} on {t.device}, expected "
                                 f"grads[{i}]'s {g.dtype} {list(g.shape)} on {g.device}")
    needs = {"m": form.adam or form.centered, "v": form.centered, "b": form.nesterov}
    for name, needed in needs.items():
        if needed and locals()[name] is None:
            raise ValueError(f"moments: this form ({'adam' if form.adam else 'centered' if form.centered else 'nesterov'}) "
                             f"needs the state {name}")


def moments(grads: Sequence[Tensor], params: Sequence[Tensor] | None, m: Sequence[Tensor] | None,
            v: Sequence[Tensor] | None, b: Sequence[Tensor] | None, form: Form) -> tuple:
    """(d, m', v', b') for every tensor of the lists (NOTE: [moment forms]); a state passed as None
    is not kept and comes back None. `params` is read only for the coupled weight decay (pass None
    when form.wd == 0). Differentiable in every tensor input."""
    _check(grads, params, m, v, b, form)
    if len(grads) == 0:
        return [], None if m is None else [], None if v is None else [], None if b is None else []
    lists = [None if x is None else list(x) for x in (params, m, v, b)]
    backend = MOMENTS.backend(grads[0].device)
    return backend.moments(list(grads), *lists, form)


def backend_module(name: str):
    return MOMENTS.load(name)


__all__ = ["ADAM", "CENTERED", "MOMENTS", "NESTEROV", "Form", "backend_module", "moments"]
