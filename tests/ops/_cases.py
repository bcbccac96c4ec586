"""Random inputs for the update tests, shared by every backend's tests (never zeros).

A case is a list of tensors of odd sizes (1, 1023, 278011, 0 elements, a conv weight, a
non-contiguous view) with a and gamma broadcast in one of several ways.
"""

from __future__ import annotations

import torch

# (dtype, atol, rtol): the reference rounds every op in the 16-bit types while the kernels round
# once from fp32, so those compare to a few ulps.
DTYPES = [
    (torch.float32, 1e-6, 1e-5),
    (torch.float64, 1e-12, 1e-12),
    (torch.bfloat16, 3e-2, 2e-2),
    (torch.float16, 3e-3, 2e-3),
]

# How a (lrs[i]) and gamma (gammas[i]) broadcast to p: "scalar" shape [], "layer" [1],
# "elementwise" p's shape, "channel" [C, 1, ...] (first dim kept, rest 1).
BROADCASTS = ("scalar", "layer", "elementwise", "channel")

# form -> (a broadcast or None, gamma broadcast or None); see NOTE: [update forms].
FORMS = {
    "sgd": (None, None),
    **{f"scaled-{b}": (b, None) for b in BROADCASTS},
    **{f"forget-{b}": ("elementwise", b) for b in BROADCASTS},
    "forget-nolr": (None, "layer"),
}

SHAPES = [(1,), (1023,), (278011,), (0,), (64, 3, 3, 3), (5, 7)]
SMALL_SHAPES = [(1,), (1023,), (0,), (16, 3, 3, 3), (5, 7)]


def side(shape, kind, dtype, device, generator):
    """A broadcastable factor in [0.5, 1.5) (never zero)."""
    if kind == "scalar":
        s = ()
    elif kind == "layer":
        s = (1,)
    elif kind == "elementwise":
        s = shape
    else:
        s = (shape[0],) + (1,) * (len(shape) - 1)
    return (torch.rand(s, generator=generator, dtype=torch.float64) + 0.5).to(dtype=dtype, device=device)


def make_case(form, dtype, device="cpu", shapes=SHAPES, seed=0, noncontiguous=True):
    """params, grads, lrs, gammas for `form`; the last tensor's p and g are non-contiguous views."""
    gen = torch.Generator().manual_seed(seed)
    a_kind, gamma_kind = FORMS[form]

    def rand(shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)

    params, grads = [rand(s) for s in shapes], [rand(s) for s in shapes]
    if noncontiguous:
        params[-1] = rand(shapes[-1][::-1]).t()
        grads[-1] = rand(shapes[-1][::-1]).t()
    lrs = None if a_kind is None else [side(s, a_kind, dtype, device, gen) for s in shapes]
    gammas = None if gamma_kind is None else [side(s, gamma_kind, dtype, device, gen) for s in shapes]
    return params, grads, lrs, gammas
