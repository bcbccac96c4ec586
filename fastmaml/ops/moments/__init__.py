"""The stateful inner optimizers' update: one fused op for all the tensors of a list, one op per
update (NOTE: [moment forms] in csrc/include/fastmaml/update.h, where the maths is written once):

    p', m', v', b' = moments(params, grads, lr, m, v, b, form)

with `form` (a Form) holding the step's hyper-parameters, bias corrections folded in, and `lr` a
number or a list of rate tensors (the update's operands, NOTE: [update operands]). With
direction=True the first output is the direction d instead (p' = p - lr * d; TorchOpt's
functional API returns -lr * d).

NOTE: [moment state]
Why the op returns the new state instead of writing it in place, as torch.optim does: the inner
loop is differentiated, so each step's state is a new node of the graph (m' depends on g, which
depends on the parameters), the old state is an input of the next step's backward, and torch.func
transforms (vmap over tasks) need pure functions. So the op is a multi-output map (p', m', v',
b'), each output differentiable, and an optimizer's state is a tuple of tensor lists passed from
step to step (fastmaml.ops.optim.OptimState).

Backends: "reference" (the oracle, plain torch ops), "native" (csrc/, CPU and CUDA), "triton"
(fastmaml/ops/triton.py: CUDA, and CPU under the Triton interpreter); their autograd:
moments/_autograd.py. Others run the reference. Inside torch.func transforms and torch.compile
the reference ops run (the fused op has no vmap rule).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from types import ModuleType

from torch import Tensor

from fastmaml.ops.checks import check_update_args
from fastmaml.ops.dispatch import BACKENDS, Family

MOMENTS = Family.of_package("moments", __name__, tuple(b for b in BACKENDS if b in ("reference", "native", "triton")),
                            auto={"cpu": ("native",), "cuda": ("native", "triton")})

ADAM, CENTERED, NESTEROV, DIRECTION = 1, 2, 4, 8  # the flags of the schema (csrc/ops.cpp)
_HYPER = ("wd", "b1", "c1", "b2", "c2", "s1", "s2", "eps_in", "eps", "mu", "c")

Lists = Sequence[Tensor]
Outputs = tuple[list[Tensor], list[Tensor] | None, list[Tensor] | None, list[Tensor] | None]


@dataclasses.dataclass(frozen=True)
class Form:
    """One step's hyper-parameters (NOTE: [moment forms]): g' = g + wd p; m' = b1 m + c1 g';
    v' = b2 v + c2 g'^2; q = (s1 m' if adam else g') / (sqrt(s2 v' [- m'^2 if centered] + eps_in)
    + eps) when v is kept; b' = mu b + c q; d = q + mu b' if nesterov else b' when b is kept;
    p' = (1 - lr decay) p - lr d (decay: AdamW's decoupled weight decay).

    Args:
        wd: the coupled weight decay.
        b1: m's decay.
        c1: g''s weight in m.
        b2: v's decay.
        c2: g'^2's weight in v.
        s1: m''s scale in the numerator (Adam's bias correction).
        s2: v''s scale under the root.
        eps_in: added under the root.
        eps: added to the root.
        mu: the momentum.
        c: q's weight in b' (1 - dampening).
        decay: the decoupled weight decay.
        adam: the numerator is s1 m' (else g').
        centered: subtract m'^2 under the root.
        nesterov: d = q + mu b' (else b').
    """

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
    decay: float = 0.0
    adam: bool = False
    centered: bool = False
    nesterov: bool = False

    def gamma(self, alpha: float, has_lrs: bool) -> tuple[float, float]:
        """(keep, dd): the parameters' factor gamma = keep - a * dd (NOTE: [moment forms]): for a
        number lr, 1 - lr * decay in double as torch.optim.AdamW; for rate tensors a, 1 - alpha a decay.

        Args:
            alpha: the scalar rate.
            has_lrs: whether rate tensors are passed.
        """
        return (1.0, alpha * self.decay) if has_lrs else (1.0 - alpha * self.decay, 0.0)

    def hyper(self, alpha: float, has_lrs: bool) -> list[float]:
        """The schema's float[] hyper: (wd, b1, c1, b2, c2, s1, s2, eps_in, eps, mu, c, keep, dd).

        Args:
            alpha: the scalar rate.
            has_lrs: whether rate tensors are passed.
        """
        return [float(getattr(self, f)) for f in _HYPER] + list(self.gamma(alpha, has_lrs))

    def flags(self, direction: bool) -> int:
        """The schema's flags.

        Args:
            direction: return the direction d instead of the new parameters.
        """
        return ADAM * self.adam + CENTERED * self.centered + NESTEROV * self.nesterov + DIRECTION * direction


def _split_lr(lr: float | Sequence[Tensor]) -> tuple[list[Tensor] | None, float]:
    if isinstance(lr, (int, float)) and not isinstance(lr, bool):
        return None, float(lr)
    if isinstance(lr, Tensor) or not isinstance(lr, Sequence):
        raise TypeError(f"moments: lr must be a Python number or a list of tensors (one per param), got "
                        f"{type(lr).__name__}")
    return list(lr), 1.0


def _check_form(m: Lists | None, v: Lists | None, b: Lists | None, form: Form) -> None:
    if not isinstance(form, Form):
        raise TypeError(f"moments: form must be a fastmaml.ops.moments.Form, got {type(form).__name__}")
    for name, needed, given in (("m", form.adam or form.centered, m), ("v", form.centered, v), ("b", form.nesterov, b)):
        if needed and given is None:
            kind = "adam" if form.adam else "centered" if form.centered else "nesterov"
            raise ValueError(f"moments: this form ({kind}) needs the state {name}")


def _check(params: Lists, grads: Lists, lrs: Lists | None, alpha: float, m: Lists | None, v: Lists | None,
           b: Lists | None, names: Sequence[str] | None) -> None:
    """Errors naming the argument and the index (NOTE: [update operands])."""
    check_update_args("moments", params, grads, lrs, None, alpha, names)
    for name, seq in (("m", m), ("v", v), ("b", b)):
        if seq is None:
            continue
        if isinstance(seq, Tensor) or not isinstance(seq, Sequence):
            raise TypeError(f"moments: {name} must be a list of tensors, got {type(seq).__name__}")
        if len(seq) != len(params):
            raise ValueError(f"moments: {name} has {len(seq)} tensors but params has {len(params)}")
        for i, t in enumerate(seq):
            p = params[i]
            if not isinstance(t, Tensor):
                raise TypeError(f"moments: {name}[{i}] must be a Tensor, got {type(t).__name__}")
            if t.shape != p.shape or t.dtype != p.dtype or t.device != p.device:
                raise ValueError(f"moments: {name}[{i}] is {t.dtype} {list(t.shape)} on {t.device}, expected "
                                 f"params[{i}]'s {p.dtype} {list(p.shape)} on {p.device}")


def moments(params: Lists, grads: Lists, lr: float | Sequence[Tensor], m: Lists | None, v: Lists | None,
            b: Lists | None, form: Form, *, direction: bool = False, names: Sequence[str] | None = None) -> Outputs:
    """One step of a stateful optimizer on every tensor of the lists (NOTE: [moment forms]), one op.

    Args:
        params: the parameters p[i].
        grads: their gradients g[i], same shapes.
        lr: a number (one rate for all) or a list of tensors a[i] broadcastable to each param.
        m: the first moments, or None when the form keeps none.
        v: the second moments, or None.
        b: the momentum traces, or None.
        form: the step's hyper-parameters.
        direction: return the direction d (p' = p - lr d) instead of p'.
        names: the params' names, only for error messages.

    Returns:
        (p' or d, m', v', b'), a state passed as None coming back None; differentiable in every
        tensor input.
    """
    _check_form(m, v, b, form)
    lrs, alpha = _split_lr(lr)
    if not math.isfinite(alpha):
        raise ValueError(f"moments: lr must be finite, got {alpha}")
    lists = [None if x is None else list(x) for x in (m, v, b)]
    # the lists are joined into one flat list on the way to the op: their lengths are checked here
    if (isinstance(params, (list, tuple)) and params and isinstance(params[0], Tensor)
            and all(isinstance(x, (list, tuple)) and len(x) == len(params) for x in (grads, lrs, *lists) if x is not None)
            and MOMENTS.resolve(params[0].device) == "native"):
        # NOTE: [validation fast path] in ops/__init__.py: the op checks in C++; on its error the
        # Python checks run to name the argument.
        try:
            return MOMENTS.load("native").moments(list(params), list(grads), lrs, *lists, alpha, form, direction)
        except (RuntimeError, TypeError, ValueError, IndexError):
            _check(params, grads, lrs, alpha, m, v, b, names)
            raise
    _check(params, grads, lrs, alpha, m, v, b, names)
    if len(params) == 0:
        return [], None if m is None else [], None if v is None else [], None if b is None else []
    backend = MOMENTS.backend(params[0].device)
    return backend.moments(list(params), list(grads), lrs, *lists, alpha, form, direction)


def backend_module(name: str) -> ModuleType:
    """The moments op's backend `name`.

    Args:
        name: "reference", "native" or "triton".
    """
    return MOMENTS.load(name)


__all__ = ["ADAM", "CENTERED", "DIRECTION", "MOMENTS", "NESTEROV", "Form", "backend_module", "moments"]
