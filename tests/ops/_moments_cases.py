"""The moments op's cases (NOTE: [moment forms]), shared by tests/ops/test_moments.py and the
Triton suite (tests/ops/_triton_suite.py): each form with its states, its rate (a number, or
rate tensors of some broadcast) and whether the op returns the direction."""

from __future__ import annotations

import torch

from fastmaml.ops.moments import Form

SHAPES = [(3,), (4, 2, 2), (2, 3)]
_ADAM = dict(b1=0.9, c1=0.1, b2=0.99, c2=0.01, s1=1 / 0.19, s2=1 / 0.0199, eps=1e-3, adam=True)

# name -> (form, which states m, v, b are kept, rate: None for a number else the rate tensors'
# broadcast kind, direction)
FORMS = {
    "momentum": (Form(mu=0.9, c=0.7), (False, False, True), None, False),
    "nesterov-wd-channel": (Form(wd=0.1, mu=0.8, c=1.0, nesterov=True), (False, False, True), "channel", False),
    "adam": (Form(**_ADAM), (True, True, False), None, False),
    "adamw": (Form(decay=0.1, **_ADAM), (True, True, False), None, False),
    "adamw-elementwise": (Form(decay=0.1, **_ADAM), (True, True, False), "elementwise", False),
    "adam-wd-eps_root-layer": (Form(wd=0.05, b1=0.8, c1=0.2, b2=0.9, c2=0.1, s1=1.5, s2=2.0, eps_in=1e-2, eps=1e-3,
                                    adam=True), (True, True, False), "layer", False),
    "adam-direction": (Form(wd=0.05, **_ADAM), (True, True, False), None, True),
    "rmsprop": (Form(b2=0.9, c2=0.1, eps=1e-3), (False, True, False), None, False),
    "rmsprop-centered-momentum": (Form(wd=0.1, b1=0.9, c1=0.1, b2=0.9, c2=0.1, eps=1e-3, mu=0.5, c=1.0, centered=True),
                                  (True, True, True), None, False),
    "rmsprop-nesterov": (Form(b2=0.9, c2=0.1, eps=1e-3, mu=0.5, nesterov=True), (False, True, True), "elementwise",
                         False),
}


def _rate_shape(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    return {"layer": (1,), "elementwise": shape, "channel": (shape[0],) + (1,) * (len(shape) - 1)}[kind]


def case(name: str, dtype: torch.dtype = torch.float64, seed: int = 0, leaves: bool = False,
         shapes: list[tuple[int, ...]] = SHAPES, device: str = "cpu") -> tuple:
    """(params, grads, lrs, m, v, b, alpha) for the form `name`; `leaves`: every tensor requires grad."""
    form, keeps, rate, _ = FORMS[name]
    gen = torch.Generator().manual_seed(seed)

    def rand(shape, low=None):
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        x = x.abs() + low if low is not None else x
        x = x.to(dtype=dtype, device=device)
        return x.requires_grad_() if leaves else x

    params, grads = [rand(s) for s in shapes], [rand(s) for s in shapes]
    lrs = None if rate is None else [rand(_rate_shape(s, rate), 0.5) * 0.1 for s in shapes]
    if lrs is not None and leaves:
        lrs = [a.detach().requires_grad_() for a in lrs]
    m = [(rand(s) * 0.3).detach().requires_grad_(leaves) for s in shapes] if keeps[0] else None
    # v large enough that v' - m'^2 > 0 (centered) and the root stays away from 0
    v = [rand(s, 2.1) for s in shapes] if keeps[1] else None
    b = [rand(s) for s in shapes] if keeps[2] else None
    return params, grads, lrs, m, v, b, 1.0 if lrs is not None else 0.37


def flat_fn(name: str, fn, **kwargs) -> tuple:
    """(f, flat): f(*flat) is fn's outputs as one tuple, flat the case's tensors (all leaves)."""
    form, _, _, direction = FORMS[name]
    *lists, alpha = case(name, leaves=True, **kwargs)
    present = [x is not None for x in lists]
    flat = [t for x in lists if x is not None for t in x]
    n = len(lists[0])

    def f(*flat):
        args, pos = [], 0
        for here in present:
            args.append(list(flat[pos:pos + n]) if here else None)
            pos += n if here else 0
        out = fn(*args, alpha, form, direction)
        return tuple(t for lst in out if lst is not None for t in lst)

    return f, flat
