"""Random inputs for the CG-op tests (never zeros) and the checks every backend must pass against
`reference`, as plain functions: tests/hvp/test_cg.py calls them per backend and device, and the
Triton ones run them in a subprocess under the interpreter (tests/hvp/_cg_triton_suite.py)."""

from __future__ import annotations

import torch

from fastmaml.ops.cg import backend_module, reference

# (dtype, atol, rtol) of the in-place updates; the dots compare with DOT_RTOL (a sum of many terms).
DTYPES = [
    (torch.float32, 1e-6, 1e-5),
    (torch.float64, 1e-12, 1e-12),
    (torch.bfloat16, 3e-2, 2e-2),
    (torch.float16, 3e-3, 2e-3),
]
DOT_RTOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 1e-5, torch.float16: 1e-5}

T = 3
SHAPES = [(T, 1), (T, 1023), (T, 92671), (T, 0), (T, 16, 3, 3, 3), (T, 5, 7)]
SMALL_SHAPES = [(T, 1), (T, 1023), (T, 0), (T, 16, 3, 3, 3), (T, 5, 7)]


def make_vectors(count, dtype, device="cpu", shapes=SHAPES, seed=0, noncontiguous=True):
    """`count` vectors (lists of tensors); the last tensor of each is a non-contiguous view."""
    gen = torch.Generator().manual_seed(seed)

    def rand(shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)

    out = []
    for _ in range(count):
        vec = [rand(s) for s in shapes]
        if noncontiguous:
            s = shapes[-1]
            vec[-1] = rand((s[0], s[2], s[1])).transpose(1, 2)
        out.append(vec)
    return out


def coef(dtype, device="cpu", seed=1):
    gen = torch.Generator().manual_seed(seed)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    return (torch.rand(T, generator=gen, dtype=torch.float64) + 0.5).to(acc).to(device)


def _clone(vec):
    return [t.clone() for t in vec]  # clone keeps a non-contiguous layout


def _close(actual, expected, atol, rtol, what):
    from tests.ops._compare import assert_all_close, assert_close

    if isinstance(actual, torch.Tensor):
        assert_close(actual, expected, atol=atol, rtol=rtol, what=what)
    else:
        assert_all_close(actual, expected, atol=atol, rtol=rtol, what=what)


def check_ops_match_reference(name, dtype, atol, rtol, device="cpu", shapes=SHAPES):
    """dot, matvec_dot_, step_ and direction_ of backend `name` against reference: the in-place
    results and the per-task reductions."""
    backend = backend_module(name)
    a, b, c, d = make_vectors(4, dtype, device, shapes)
    dot_rtol = DOT_RTOL[dtype]
    _close(backend.dot(a, b), reference.dot(a, b), 1e-6 if dtype != torch.float64 else 1e-12, dot_rtol, f"{name} dot {dtype}")

    hp_ref, hp = _clone(a), _clone(a)
    s_ref = reference.matvec_dot_(hp_ref, b, 1.25, 0.5)
    s = backend.matvec_dot_(hp, b, 1.25, 0.5)
    _close(hp, hp_ref, atol, rtol, f"{name} matvec_dot_ q {dtype}")
    _close(s, s_ref, 1e-5, max(dot_rtol, 4 * rtol if dtype in (torch.float16, torch.bfloat16) else dot_rtol),
           f"{name} matvec_dot_ <p,q> {dtype}")

    alpha = coef(dtype, device)
    x_ref, r_ref, x, r = _clone(a), _clone(b), _clone(a), _clone(b)
    s_ref = reference.step_(x_ref, r_ref, c, d, alpha)
    s = backend.step_(x, r, c, d, alpha)
    _close(x, x_ref, atol, rtol, f"{name} step_ x {dtype}")
    _close(r, r_ref, atol, rtol, f"{name} step_ r {dtype}")
    # <r, r> against the backend's own r: the fused ops reduce the opmath values before they are
    # rounded to a 16-bit type (NOTE: [cg ops]), so those compare to about the type's eps
    tol = {torch.bfloat16: 1e-2, torch.float16: 2e-3}.get(dtype, dot_rtol)  # ~ the 16-bit eps
    _close(s, reference.dot(r, r), 1e-5, tol, f"{name} step_ <r,r> {dtype}")

    beta = coef(dtype, device, seed=2)
    p_ref, p = _clone(c), _clone(c)
    reference.direction_(p_ref, d, beta)
    assert backend.direction_(p, d, beta) is None
    _close(p, p_ref, atol, rtol, f"{name} direction_ {dtype}")
    for t_ref, t in zip(p_ref, p):
        assert t.stride() == t_ref.stride(), f"{name}: direction_ changed a tensor's layout"
