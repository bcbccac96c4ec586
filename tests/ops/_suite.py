"""Checks every fast backend must pass against `reference`, as plain functions: the test modules
call them per backend and device (tests/ops/test_update_backends.py, and the Triton ones in a
subprocess under the interpreter, tests/ops/_triton_suite.py)."""

from __future__ import annotations

import torch
from torch.func import grad, vmap
from torch.utils._python_dispatch import TorchDispatchMode

from fastmaml.ops import backend_module, reference
from tests.ops._cases import FORMS, SMALL_SHAPES, make_case
from tests.ops._compare import assert_all_close


def _call(backend, params, grads, lrs, gammas, alpha, inplace):
    if not inplace:
        return backend.update(params, grads, lrs, gammas, alpha)
    out = [p.clone() for p in params]  # keeps the non-contiguous layout of p
    with torch.no_grad():
        backend.update_(out, grads, lrs, gammas, alpha)
    return out


def check_matches_reference(names, form, dtype, atol, rtol, device="cpu", shapes=None):
    """Out-of-place and in-place results of each backend in `names` against `reference`."""
    kwargs = {} if shapes is None else {"shapes": shapes}
    params, grads, lrs, gammas = make_case(form, dtype, device, **kwargs)
    alpha = 0.37
    expected = reference.update(params, grads, lrs, gammas, alpha)
    for name in names:
        for inplace in (False, True):
            actual = _call(backend_module(name), params, grads, lrs, gammas, alpha, inplace)
            assert_all_close(actual, expected, atol=atol, rtol=rtol, what=f"{name} {form} {dtype} inplace={inplace}")


def _differentiable_case(form, shapes, device="cpu"):
    params, grads, lrs, gammas = make_case(form, torch.float64, device, shapes=list(shapes), seed=1)
    lists = [params, grads] + [x for x in (lrs, gammas) if x is not None]
    flat = [t.detach().requires_grad_() for lst in lists for t in lst]
    n = len(params)

    def fn(*flat):
        chunks = [list(flat[k * n : (k + 1) * n]) for k in range(len(flat) // n)]
        p, g, rest = chunks[0], chunks[1], chunks[2:]
        a = rest.pop(0) if lrs is not None else None
        gam = rest.pop(0) if gammas is not None else None
        return fn.backend.update(p, g, a, gam, 0.3)

    return fn, flat


def check_gradcheck(name, form, shapes=((3,), (4, 2, 2), (2, 3)), device="cpu"):
    """gradcheck and gradgradcheck in float64 w.r.t. every input (p, g, a, gamma)."""
    fn, flat = _differentiable_case(form, shapes, device)
    fn.backend = backend_module(name)
    assert torch.autograd.gradcheck(fn, flat)
    assert torch.autograd.gradgradcheck(fn, flat)


def check_backward_matches_reference(name, form, dtype, atol, rtol):
    params, grads, lrs, gammas = make_case(form, dtype, shapes=SMALL_SHAPES)
    results = []
    for backend in (reference, backend_module(name)):
        inputs = [t.detach().clone().requires_grad_() for lst in (params, grads, lrs or [], gammas or []) for t in lst]
        n = len(params)
        p, g = inputs[:n], inputs[n : 2 * n]
        rest = inputs[2 * n :]
        a = rest[:n] if lrs is not None else None
        gam = rest[n if lrs is not None else 0 :] if gammas is not None else None
        out = backend.update(p, g, a, gam, 0.37)
        weights = [torch.linspace(-1, 1, o.numel(), dtype=dtype).reshape(o.shape) for o in out]
        torch.autograd.backward(out, weights)
        results.append([t.grad for t in inputs])
    assert_all_close(results[1], results[0], atol=atol, rtol=rtol, what=f"{name} {form} {dtype} backward")


def check_transforms(name, device="cpu"):
    """The same results as `reference` inside vmap (tasks batched, a and gamma shared), grad,
    vmap(grad), grad(vmap), and a second-order meta-gradient (grad inside vmap, then .backward())."""
    backend = backend_module(name)
    dt = {"dtype": torch.float64, "device": device}
    p, a, gam = torch.randn(4, 3, **dt), torch.rand(4, 1, **dt) + 0.5, torch.rand((), **dt) + 0.5
    g = torch.randn(4, 3, **dt)
    pb, gb = torch.randn(5, 4, 3, **dt), torch.randn(5, 4, 3, **dt)
    tol = {"atol": 1e-12, "rtol": 1e-12}

    def upd(be):
        return lambda p, g, a, gam: be.update([p], [g], [a], [gam], 0.1)[0]

    def loss(be):
        return lambda p, g, a, gam: (upd(be)(p, g, a, gam) ** 2).sum()

    shared = (0, 0, None, None)
    for dims, args in (
        (shared, (pb, gb, a, gam)),
        ((None, 0, None, None), (p, gb, a, gam)),
        ((0, 0, 0, None), (pb, gb, torch.rand(5, 4, 1, **dt), gam)),
    ):
        assert_all_close([vmap(upd(backend), in_dims=dims)(*args)], [vmap(upd(reference), in_dims=dims)(*args)],
                         what=f"{name} vmap {dims}", **tol)
    argnums = (0, 1, 2, 3)
    assert_all_close(grad(loss(backend), argnums)(p, g, a, gam), grad(loss(reference), argnums)(p, g, a, gam),
                     what=f"{name} grad", **tol)
    assert_all_close(vmap(grad(loss(backend), argnums), in_dims=shared)(pb, gb, a, gam),
                     vmap(grad(loss(reference), argnums), in_dims=shared)(pb, gb, a, gam),
                     what=f"{name} vmap(grad)", **tol)

    def batched_loss(be):
        return lambda a, gam: vmap(loss(be), in_dims=shared)(pb, gb, a, gam).sum()

    assert_all_close(grad(batched_loss(backend), (0, 1))(a, gam), grad(batched_loss(reference), (0, 1))(a, gam),
                     what=f"{name} grad(vmap)", **tol)

    def meta(be, p, a):  # one inner step per task, tasks in vmap; second order
        def task(x):
            inner_grad = grad(lambda q: (q * x).sin().sum())(p)
            return (upd(be)(p, inner_grad, a, gam) * x).cos().sum()
        return vmap(task)(pb).sum()

    grads = []
    for be in (backend, reference):
        leaves = [p.clone().requires_grad_(), a.clone().requires_grad_()]
        meta(be, *leaves).backward()
        grads.append([t.grad for t in leaves])
    assert_all_close(grads[0], grads[1], what=f"{name} second order, vmap + backward", **tol)
    assert_all_close([grad(lambda q: meta(backend, q, a))(p)], [grad(lambda q: meta(reference, q, a))(p)],
                     what=f"{name} grad of a second-order meta-loss", **tol)


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def check_one_op_per_update(name, device="cpu"):
    for form in FORMS:
        params, grads, lrs, gammas = make_case(form, torch.float32, device, shapes=SMALL_SHAPES, noncontiguous=False)
        for inplace in (False, True):
            with _CountOps() as mode:
                _call(backend_module(name), params, grads, lrs, gammas, 0.1, inplace)
            ops = [op for op in mode.ops if "clone" not in op]  # the clone is the test's own
            assert len(ops) == 1, f"{name} {form} inplace={inplace}: dispatched {ops}"


def cuda_kernels(fn):
    """The names of the CUDA kernels `fn()` runs (torch.profiler; memory copies left out), after
    one call outside the profiler (compilation, caches)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type.name == "CUDA" and "memcpy" not in e.name.lower()
            and "memset" not in e.name.lower()]
