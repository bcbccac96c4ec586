"""NOTE: [update operands] The fused ops' operands, in this order in every schema (csrc/ops.cpp),
in the C++ checks and kernels (csrc/include/fastmaml/operands.h, update.h) and in the Python rules
(checks.py, _autograd.py, moments/native.py) and kernel tables (triton.py), which read them here.

The update (`fused_update`, NOTE: [update forms]):

    params  Tensor[]    p_i, the tensors updated
    grads   Tensor[]    g_i, each of p_i's shape, dtype and device
    lrs     Tensor[]?   a_i, each broadcastable to p_i (learned rates: Meta-SGD, MAML++)
    gammas  Tensor[]?   gamma_i, each broadcastable to p_i (forget factors: ALFA)
    alpha   float       one rate for all:  out_i = gamma_i * p_i - alpha * a_i * g_i

The stateful optimizers' update (`fused_moments`, NOTE: [moment forms]): params, grads and lrs as
above (no gammas: AdamW's decay is a hyper-parameter), then the state, each of p_i's shape:

    m       Tensor[]?   the first moment (Adam; RMSprop centered)
    v       Tensor[]?   the second moment (Adam, RMSprop)
    b       Tensor[]?   the momentum trace (SGD momentum, RMSprop momentum)
    alpha, hyper, flags

A new operand is one entry in a Layout here and one in the schema.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from torch import Tensor


@dataclasses.dataclass(frozen=True)
class Layout:
    """The tensor-list operands of one op, in schema order.

    Args:
        lists: the operands' names.
        optional: those that may be None.
        broadcast: those that need only broadcast to params (the others have params' shapes).
    """

    lists: tuple[str, ...]
    optional: frozenset[str]
    broadcast: frozenset[str]

    def index(self, name: str) -> int:
        """The position of operand `name`.

        Args:
            name: an operand of `lists`.
        """
        return self.lists.index(name)

    def join(self, values: Sequence[Sequence[Tensor] | None]) -> list[Tensor]:
        """The tensor lists (in `lists` order) as one flat list, the absent ones left out.

        Args:
            values: one list (or None) per operand.
        """
        return [t for lst in values if lst is not None for t in lst]

    def split(self, n: int, present: Sequence[bool], flat: Sequence[Tensor]) -> list[list[Tensor] | None]:
        """Inverse of join: one list of n tensors per operand, None where not `present`.

        Args:
            n: the number of tensors per list.
            present: per operand, whether it was passed.
            flat: the joined tensors.
        """
        out: list[list[Tensor] | None] = []
        pos = 0
        for here in present:
            out.append(list(flat[pos : pos + n]) if here else None)
            pos += n if here else 0
        return out


UPDATE = Layout(("params", "grads", "lrs", "gammas"), frozenset({"lrs", "gammas"}), frozenset({"lrs", "gammas"}))
MOMENTS = Layout(("params", "grads", "lrs", "m", "v", "b"), frozenset({"lrs", "m", "v", "b"}), frozenset({"lrs"}))

LISTS = UPDATE.lists
BROADCAST = UPDATE.broadcast  # the others must have params' shapes


def join(params: Sequence[Tensor], grads: Sequence[Tensor], lrs: Sequence[Tensor] | None,
         gammas: Sequence[Tensor] | None) -> list[Tensor]:
    """The update's tensor lists as one flat list (the absent optional ones left out).

    Args:
        params: the tensors updated.
        grads: their gradients.
        lrs: the learned rates, or None.
        gammas: the forget factors, or None.
    """
    return UPDATE.join((params, grads, lrs, gammas))


def split(n: int, has_lrs: bool, has_gammas: bool, flat: Sequence[Tensor]) -> tuple:
    """Inverse of join: (params, grads, lrs or None, gammas or None).

    Args:
        n: the number of tensors per list.
        has_lrs: whether lrs was passed.
        has_gammas: whether gammas was passed.
        flat: the joined tensors.
    """
    return tuple(UPDATE.split(n, (True, True, has_lrs, has_gammas), flat))
