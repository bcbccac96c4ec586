"""The moment forms (NOTE: [moment forms] in csrc/include/fastmaml/update.h): the fused op against
its reference twin (values; every gradient in float64, gradcheck and gradgradcheck through the
op's autograd), each form's hyper-parameters against torch.optim's own step, and the argument
errors. The faces' agreement with the real higher and TorchOpt: tests/compat/test_inner_optimizers.py."""

import itertools

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from fastmaml import ops
from fastmaml.ops import moments as M
from fastmaml.ops.moments import Form, native, reference
from fastmaml.ops.optim import InnerAdam, InnerAdamW, InnerRMSprop, InnerSGD

CPU = torch.device("cpu")
needs_native = pytest.mark.skipif(not native.is_available(CPU), reason="fastmaml._C without fused_moments")
SHAPES = [(3,), (4, 2, 2), (2, 3)]

# (name, form, which states m, v, b are kept, whether params are read)
FORMS = {
    "momentum": (Form(mu=0.9, c=0.7), (False, False, True)),
    "nesterov-wd": (Form(wd=0.1, mu=0.8, c=1.0, nesterov=True), (False, False, True)),
    "adam": (Form(b1=0.9, c1=0.1, b2=0.99, c2=0.01, s1=1 / 0.19, s2=1 / 0.0199, eps=1e-3, adam=True), (True, True, False)),
    "adam-wd-eps_root": (Form(wd=0.05, b1=0.8, c1=0.2, b2=0.9, c2=0.1, s1=1.5, s2=2.0, eps_in=1e-2, eps=1e-3, adam=True),
                         (True, True, False)),
    "rmsprop": (Form(b2=0.9, c2=0.1, eps=1e-3), (False, True, False)),
    "rmsprop-centered-momentum": (Form(wd=0.1, b1=0.9, c1=0.1, b2=0.9, c2=0.1, eps=1e-3, mu=0.5, c=1.0, centered=True),
                                  (True, True, True)),
    "rmsprop-nesterov": (Form(b2=0.9, c2=0.1, eps=1e-3, mu=0.5, nesterov=True), (False, True, True)),
}


def _case(form, keeps, dtype=torch.float64, seed=0, leaves=False):
    gen = torch.Generator().manual_seed(seed)

    def rand(shape, positive=False):
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        x = x.abs() + 0.1 if positive else x
        x = x.to(dtype)
        return x.requires_grad_() if leaves else x

    grads = [rand(s) for s in SHAPES]
    params = [rand(s) for s in SHAPES] if form.wd else None
    m = [rand(s) * 0.3 if not leaves else (rand(s).detach() * 0.3).requires_grad_() for s in SHAPES] if keeps[0] else None
    # v large enough that v' - m'^2 > 0 (centered) and the root stays away from 0
    v = [rand(s, positive=True) + 2 for s in SHAPES] if keeps[1] else None
    b = [rand(s) for s in SHAPES] if keeps[2] else None
    return grads, params, m, v, b


@needs_native
@pytest.mark.parametrize("name", FORMS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_native_matches_reference(name, dtype):
    form, keeps = FORMS[name]
    args = _case(form, keeps, dtype)
    got = native.moments(*args, form)
    want = reference.moments(*[None if a is None else [t.float() if dtype == torch.bfloat16 else t for t in a]
                               for a in args], form)
    tol = {torch.float64: 0, torch.float32: 1e-6, torch.bfloat16: 2e-2}[dtype]
    for g, w, kept in zip(got, want, (True, *keeps)):
        assert (g is None) == (not kept)
        for x, y in zip(g or [], w or []):
            assert x.dtype == dtype
            torch.testing.assert_close(x.to(y.dtype), y, atol=tol, rtol=tol)


def _flat_fn(name, fn):
    form, keeps = FORMS[name]
    args = _case(form, keeps, leaves=True)
    present = [a is not None for a in args]
    flat = [t for a in args if a is not None for t in a]
    n = len(SHAPES)

    def f(*flat):
        lists, pos = [], 0
        for here in present:
            lists.append(list(flat[pos:pos + n]) if here else None)
            pos += n if here else 0
        out = fn(*lists, form)
        return tuple(t for lst in out if lst is not None for t in lst)

    return f, flat


@needs_native
@pytest.mark.parametrize("name", FORMS)
def test_gradcheck_and_gradgradcheck(name):
    f, flat = _flat_fn(name, native.moments)
    assert gradcheck(f, flat)
    assert gradgradcheck(f, flat)


@needs_native
@pytest.mark.parametrize("name", FORMS)
def test_fused_backward_equals_reference_autograd(name):
    """The plain backward (one fused_moments_backward pass) against autograd of the reference,
    with some outputs unused (their gradients absent)."""
    for fn in (native.moments, reference.moments):
        f, flat = _flat_fn(name, fn)
        out = f(*flat)
        torch.manual_seed(0)
        weights = [torch.randn_like(o) for o in out]
        loss = sum((w * o).sum() for w, o in itertools.islice(zip(weights, out), 0, None, 2))
        got = torch.autograd.grad(loss, flat, allow_unused=True)
        if fn is native.moments:
            fused = got
        else:
            for x, y in zip(fused, got):
                if y is None:
                    assert x is None or not x.abs().any()
                else:
                    torch.testing.assert_close(x, y, atol=1e-12, rtol=1e-12)


@needs_native
def test_inside_vmap_and_grad_runs_the_reference_ops():
    form, keeps = FORMS["adam"]
    grads, _, m, v, _ = _case(form, keeps)
    batch = [torch.stack([g, 2 * g]) for g in grads]

    def one(g0):
        d, *_ = native.moments([g0], None, [m[0]], [v[0]], None, form)
        return d[0].sum()

    got = torch.func.vmap(torch.func.grad(one))(batch[0])
    for k in range(2):
        g0 = batch[0][k].clone().requires_grad_()
        d, *_ = reference.moments([g0], None, [m[0]], [v[0]], None, form)
        torch.testing.assert_close(got[k], torch.autograd.grad(d[0].sum(), g0)[0])


# ---- each optimizer's form against torch.optim's own step ---------------------------------------
OPTIMIZERS = [
    (InnerSGD(momentum=0.9, dampening=0.3, weight_decay=0.1), torch.optim.SGD, dict(momentum=0.9, dampening=0.3, weight_decay=0.1)),
    (InnerSGD(momentum=0.9, nesterov=True), torch.optim.SGD, dict(momentum=0.9, nesterov=True)),
    (InnerAdam(betas=(0.8, 0.9), eps=1e-3, weight_decay=0.1), torch.optim.Adam, dict(betas=(0.8, 0.9), eps=1e-3, weight_decay=0.1)),
    (InnerAdamW(betas=(0.8, 0.9), eps=1e-3, weight_decay=0.1), torch.optim.AdamW, dict(betas=(0.8, 0.9), eps=1e-3, weight_decay=0.1)),
    (InnerRMSprop(alpha=0.9, eps=1e-3, weight_decay=0.1, momentum=0.5, centered=True), torch.optim.RMSprop,
     dict(alpha=0.9, eps=1e-3, weight_decay=0.1, momentum=0.5, centered=True)),
    (InnerRMSprop(alpha=0.9, eps=1e-3), torch.optim.RMSprop, dict(alpha=0.9, eps=1e-3)),
]


@pytest.mark.parametrize("backend", ["reference", "native"])
@pytest.mark.parametrize("inner,torch_opt,kwargs", OPTIMIZERS, ids=lambda x: repr(x)[:40] if not isinstance(x, dict) else "")
def test_steps_equal_torch_optim(inner, torch_opt, kwargs, backend):
    if backend == "native" and not native.is_available(CPU):
        pytest.skip("no fused_moments")
    gen = torch.Generator().manual_seed(1)
    params = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    theirs = [p.clone().requires_grad_() for p in params]
    opt = torch_opt(theirs, lr=0.05, foreach=False, **kwargs)
    ours, state = [p.clone() for p in params], inner.init(params)
    with ops.use_backend(backend):
        for _ in range(4):
            grads = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
            for t, g in zip(theirs, grads):
                t.grad = g.clone()
            opt.step()
            ours, state = inner.step(ours, grads, state, 0.05)
    for x, y in zip(ours, theirs):
        torch.testing.assert_close(x, y.detach(), atol=1e-13, rtol=1e-12)


def test_plain_sgd_is_the_update_op_alone():
    gen = torch.Generator().manual_seed(2)
    params = [torch.randn(s, generator=gen) for s in SHAPES]
    grads = [torch.randn(s, generator=gen) for s in SHAPES]
    opt = InnerSGD()
    new, _ = opt.step(params, grads, opt.init(params), 0.1)
    for x, y in zip(new, ops.update(params, grads, 0.1)):
        assert torch.equal(x, y)


# ---- errors --------------------------------------------------------------------------------------
def test_errors_name_the_argument():
    g = [torch.randn(3)]
    with pytest.raises(ValueError, match=r"moments: m\[0\]"):
        M.moments(g, None, [torch.randn(4)], [torch.rand(3)], None, FORMS["adam"][0])
    with pytest.raises(ValueError, match="needs the state m"):
        M.moments(g, None, None, [torch.rand(3)], None, FORMS["adam"][0])
    with pytest.raises(TypeError, match="form must be"):
        M.moments(g, None, None, None, None, {"mu": 0.9})
    with pytest.raises(ValueError, match="InnerAdam: betas"):
        InnerAdam(betas=(0.9, 1.0))
    with pytest.raises(NotImplementedError, match="amsgrad"):
        InnerAdam(amsgrad=True)
    with pytest.raises(ValueError, match="nesterov"):
        InnerSGD(nesterov=True)
    with pytest.raises(ValueError, match="inner_optimizer must be one of"):
        ops.optim.resolve("adagrad")


@needs_native
def test_native_op_errors():
    g = [torch.randn(3)]
    hyper = Form().hyper
    with pytest.raises(RuntimeError, match="hyper must have 11 values"):
        torch.ops.fastmaml.fused_moments(g, None, None, None, None, hyper[:3], 0)
    with pytest.raises(RuntimeError, match=r"fused_moments: m\[0\] has shape"):
        torch.ops.fastmaml.fused_moments(g, None, [torch.randn(2)], None, None, hyper, 0)
    with pytest.raises(RuntimeError, match="the adam form needs m"):
        torch.ops.fastmaml.fused_moments(g, None, None, None, None, hyper, 1)
