"""The moments op, one op per update (NOTE: [moment forms] in csrc/include/fastmaml/update.h): the
fused op against its reference twin (values; every gradient in float64, gradcheck and
gradgradcheck through the op's autograd) and against hand-written float64 Adam and momentum
steps, each optimizer's form against torch.optim's own step, the count of ops per update, and the
argument errors. The Triton backend: tests/ops/_triton_suite.py. The faces' agreement with the
real higher and TorchOpt: tests/compat/test_inner_optimizers.py."""

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck
from torch.utils._python_dispatch import TorchDispatchMode

from fastmaml import ops
from fastmaml.ops import moments as M
from fastmaml.ops.moments import Form, native, reference
from fastmaml.ops.optim import InnerAdam, InnerAdamW, InnerRMSprop, InnerSGD
from tests.ops._moments_cases import FORMS, SHAPES, case, flat_fn

CPU = torch.device("cpu")
needs_native = pytest.mark.skipif(not native.is_available(CPU), reason="fastmaml._C without fused_moments")


@needs_native
@pytest.mark.parametrize("name", FORMS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_native_matches_reference(name, dtype):
    form, keeps, _, direction = FORMS[name]
    *lists, alpha = case(name, dtype)
    got = native.moments(*lists, alpha, form, direction)
    up = [None if x is None else [t.float() if dtype == torch.bfloat16 else t for t in x] for x in lists]
    want = reference.moments(*up, alpha, form, direction)
    # float64 to a few ulp, not 0: torch's vectorized sqrt (Sleef, 0.5001 ulp on AVX-512) is not
    # always the correctly rounded std::sqrt of the kernels
    tol = {torch.float64: 1e-14, torch.float32: 1e-6, torch.bfloat16: 2e-2}[dtype]
    for g, w, kept in zip(got, want, (True, *keeps)):
        assert (g is None) == (not kept)
        for x, y in zip(g or [], w or []):
            assert x.dtype == dtype
            torch.testing.assert_close(x.to(y.dtype), y, atol=tol, rtol=tol)


@needs_native
@pytest.mark.parametrize("name", FORMS)
def test_gradcheck_and_gradgradcheck(name):
    f, flat = flat_fn(name, native.moments)
    assert gradcheck(f, flat)
    assert gradgradcheck(f, flat)


@needs_native
@pytest.mark.parametrize("name", FORMS)
def test_fused_backward_equals_reference_autograd(name):
    """The plain backward (one fused_moments_backward pass) against autograd of the reference,
    with every other output unused (its gradient absent)."""
    got = []
    for fn in (native.moments, reference.moments):
        f, flat = flat_fn(name, fn)
        out = f(*flat)
        gen = torch.Generator().manual_seed(0)
        loss = sum((torch.randn(o.shape, generator=gen, dtype=o.dtype) * o).sum() for o in out[::2])
        got.append(torch.autograd.grad(loss, flat, allow_unused=True))
    for x, y in zip(*got):
        if y is None:
            assert x is None or not x.abs().any()
        else:
            torch.testing.assert_close(x, y, atol=1e-12, rtol=1e-12)


# ---- against hand-written float64 steps (independent of the Form's arithmetic) --------------------
def _adam_by_hand(p, g, m, v, lr, b1, b2, eps, t, decay):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    step = (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
    return p * (1 - lr * decay) - lr * step, m, v


def _momentum_by_hand(p, g, b, lr, mu, dampening):
    b = mu * b + (1 - dampening) * g
    return p - lr * b, b


HAND = {
    "adam": (lambda: InnerAdam(betas=(0.8, 0.9), eps=1e-3), lambda p, g, s, lr, t:
             _adam_by_hand(p, g, s[0], s[1], lr, 0.8, 0.9, 1e-3, t, 0.0)),
    "adamw": (lambda: InnerAdamW(betas=(0.8, 0.9), eps=1e-3, weight_decay=0.1), lambda p, g, s, lr, t:
              _adam_by_hand(p, g, s[0], s[1], lr, 0.8, 0.9, 1e-3, t, 0.1)),
    "momentum": (lambda: InnerSGD(momentum=0.9, dampening=0.3), lambda p, g, s, lr, t:
                 _momentum_by_hand(p, g, s[2], lr, 0.9, 0.3)),
}


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("name", HAND)
def test_step_and_its_gradients_equal_a_hand_written_step(name, backend):
    """The values, the vjp and the vjp's own vjp (second order) of one step at t = 3 against the same
    step written out in float64 torch ops, with every input requiring grad."""
    if backend == "native" and not native.is_available(CPU):
        pytest.skip("no fused_moments")
    make, by_hand = HAND[name]
    opt = make()
    gen = torch.Generator().manual_seed(3)
    rand = lambda s, low=None: (torch.randn(s, generator=gen, dtype=torch.float64).abs() + low if low
                                else torch.randn(s, generator=gen, dtype=torch.float64)).requires_grad_()
    p, g = [rand(s) for s in SHAPES], [rand(s) for s in SHAPES]
    state = opt.init(p)
    state = state._replace(count=2, **{k: [rand(s, 0.5) for s in SHAPES] for k, x in zip("mvb", state[1:])
                                       if x is not None})
    lists = [x for x in state[1:] if x is not None]
    inputs = p + g + [t for x in lists for t in x]
    with ops.use_backend(backend):
        new, after = opt.step(p, g, state, 0.05)
    outs = new + [t for x in after[1:] if x is not None for t in x]
    mine = [by_hand(p[i], g[i], [None if x is None else x[i] for x in state[1:]], 0.05, 3) for i in range(len(p))]
    theirs = [o[0] for o in mine] + [o[k] for k in range(1, len(mine[0])) for o in mine]
    for x, y in zip(outs, theirs):
        torch.testing.assert_close(x, y, atol=1e-14, rtol=1e-13)
    cot = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in outs]
    first = [torch.autograd.grad(o, inputs, cot, create_graph=True) for o in (outs, theirs)]
    for x, y in zip(*first):
        torch.testing.assert_close(x, y, atol=1e-12, rtol=1e-12)
    cot2 = [torch.randn(x.shape, generator=gen, dtype=torch.float64) for x in first[0]]
    second = []
    for grads in first:  # the vjp of <cot2, first-order gradients>: zeros where it is constant
        total = sum((c * x).sum() for c, x in zip(cot2, grads) if x.requires_grad)
        got = torch.autograd.grad(total, inputs, allow_unused=True) if torch.is_tensor(total) else [None] * len(inputs)
        second.append([torch.zeros_like(x) if d is None else d for x, d in zip(inputs, got)])
    assert name == "momentum" or any(d.abs().any() for d in second[1])  # momentum is linear
    for x, y in zip(*second):
        torch.testing.assert_close(x, y, atol=1e-11, rtol=1e-11)


# ---- one op per update -------------------------------------------------------------------------
class _Ops(TorchDispatchMode):
    """Every op that reaches the dispatcher while active."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


@needs_native
@pytest.mark.parametrize("make", [lambda: InnerSGD(momentum=0.9), lambda: InnerAdam(), lambda: InnerAdamW(),
                                  lambda: InnerRMSprop(centered=True, momentum=0.5)],
                         ids=["momentum", "adam", "adamw", "rmsprop"])
@pytest.mark.parametrize("rates", [False, True], ids=["lr", "rate-tensors"])
def test_one_op_per_update(make, rates):
    """A step of any optimizer over any number of tensors is one dispatched op, fastmaml::fused_moments,
    nothing else (no torch op around it); its backward one fastmaml::fused_moments_backward."""
    opt = make()
    params = [torch.randn(s, requires_grad=True) for s in SHAPES * 3]
    grads = [torch.randn(s) for s in SHAPES * 3]
    lr = [torch.rand(()) for _ in params] if rates else 0.1
    state = opt.init([p.detach() for p in params])
    with ops.use_backend("native"), _Ops() as forward:
        new, state = opt.step(params, grads, state, lr)
    assert forward.names == ["fastmaml.fused_moments.default"]
    with _Ops() as backward:
        torch.autograd.grad(new, params, [torch.ones_like(p) for p in new])
    assert [n for n in backward.names if n.startswith("fastmaml")] == ["fastmaml.fused_moments_backward.default"]


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


def test_direction_and_step_agree():
    """direction (TorchOpt's functional API) gives d with p' = p - lr d, the step's own state."""
    opt = InnerAdam(weight_decay=0.1)
    gen = torch.Generator().manual_seed(4)
    params = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    grads = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    state = opt.init(params)
    d, s1 = opt.direction(params, grads, state)
    new, s2 = opt.step(params, grads, state, 0.05)
    for p, x, y in zip(params, d, new):
        torch.testing.assert_close(p - 0.05 * x, y, atol=1e-15, rtol=1e-14)
    for a, b in zip(s1.m + s1.v, s2.m + s2.v):
        assert torch.equal(a, b)


# ---- errors --------------------------------------------------------------------------------------
def test_errors_name_the_argument():
    p, g = [torch.randn(3)], [torch.randn(3)]
    adam = FORMS["adam"][0]
    for backend in ("reference", "auto"):
        with ops.use_backend(backend):
            with pytest.raises(ValueError, match=r"moments: m\[0\]"):
                M.moments(p, g, 0.1, [torch.randn(4)], [torch.rand(3)], None, adam)
            with pytest.raises(ValueError, match=r"moments: lrs\[0\] has shape \[2\], which does not broadcast"):
                M.moments(p, g, [torch.rand(2)], [torch.randn(3)], [torch.rand(3)], None, adam)
            with pytest.raises(ValueError, match=r"moments: grads has 2 tensors but params has 1"):
                M.moments(p, g * 2, 0.1, [torch.randn(3)], [torch.rand(3)], None, adam)
    with pytest.raises(ValueError, match="needs the state m"):
        M.moments(p, g, 0.1, None, [torch.rand(3)], None, adam)
    with pytest.raises(TypeError, match="form must be"):
        M.moments(p, g, 0.1, None, None, None, {"mu": 0.9})
    with pytest.raises(TypeError, match="lr must be a Python number or a list"):
        M.moments(p, g, torch.tensor(0.1), None, None, None, Form())
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
    p = [torch.randn(3)]
    hyper = Form().hyper(0.1, False)
    op = torch.ops.fastmaml.fused_moments
    with pytest.raises(RuntimeError, match="hyper must have 13 values"):
        op(p, p, None, None, None, None, 0.1, hyper[:3], 0)
    with pytest.raises(RuntimeError, match=r"fused_moments: m\[0\] has shape"):
        op(p, p, None, [torch.randn(2)], None, None, 0.1, hyper, 0)
    with pytest.raises(RuntimeError, match="the adam form needs m"):
        op(p, p, None, None, None, None, 0.1, hyper, 1)
    with pytest.raises(RuntimeError, match="flags must be a combination"):
        op(p, p, None, None, None, None, 0.1, hyper, 16)
