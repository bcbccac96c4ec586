"""The Triton backend's checks, run under the Triton interpreter on CPU tensors by
tests/ops/test_update_triton.py in a subprocess (TRITON_INTERPRET=1 must be set before triton is
first imported, so these cannot share a process with the rest of the suite). Not collected alone."""

import os

import pytest
import torch

from fastmaml import ops
from fastmaml.ops import reference
from fastmaml.ops.moments import reference as moments_reference
from fastmaml.ops.optim import InnerAdam, InnerAdamW, InnerRMSprop, InnerSGD
from tests.ops import _suite
from tests.ops._cases import DTYPES, FORMS, SMALL_SHAPES
from tests.ops._compare import assert_all_close
from tests.ops._moments_cases import FORMS as MOMENT_FORMS, case as moments_case
from tests.ops._triton_cases import MANY_FORMS, many_case

assert os.environ.get("TRITON_INTERPRET") == "1", "run through tests/ops/test_update_triton.py"
fastmaml_triton = pytest.importorskip("fastmaml.ops.triton")
triton_moments = pytest.importorskip("fastmaml.ops.moments.triton")

dtypes = pytest.mark.parametrize("dtype,atol,rtol", DTYPES, ids=[str(d[0]).split(".")[1] for d in DTYPES])
forms = pytest.mark.parametrize("form", FORMS)


@forms
@dtypes
def test_matches_reference(form, dtype, atol, rtol):
    _suite.check_matches_reference(["triton"], form, dtype, atol, rtol, shapes=SMALL_SHAPES)


# The backward formulas are _autograd.py's, checked for every form with the native backend; here a
# few forms, small, as the interpreter is slow.
@pytest.mark.parametrize("form", ["sgd", "scaled-channel", "forget-elementwise"])
def test_gradcheck(form):
    _suite.check_gradcheck("triton", form, shapes=((3,), (2, 3)))


def test_transforms():
    _suite.check_transforms("triton")


def test_one_dispatched_op_per_update():
    _suite.check_one_op_per_update("triton")


def test_opcheck():
    params, grads, lrs, gammas = _suite.make_case("forget-channel", torch.float32, shapes=SMALL_SHAPES)
    ops = torch.ops.fastmaml_triton
    torch.library.opcheck(ops.fused_update.default, ([p.requires_grad_() for p in params], grads, lrs, gammas, 0.3))
    torch.library.opcheck(ops.fused_update_.default, ([p.detach().clone() for p in params], grads, lrs, gammas, 0.3))


def test_nested_and_forward_mode_differentiation_refused():
    """The Python autograd of this family gets nested grad levels and tangents wrong (measured on the
    native op, fastmaml/ops/_autograd.py): they must raise, not return silently wrong numbers."""
    from torch.func import grad, hessian, jacfwd, jacrev

    backend = fastmaml_triton
    p, g = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)

    def loss(p):
        return (backend.update([p], [g], None, None, 0.1)[0].sin() * g).sum()

    for _name, fn in (("grad(grad)", lambda: grad(lambda p: grad(loss)(p).sum())(p)),
                     ("jacrev(jacrev)", lambda: jacrev(jacrev(loss))(p)),
                     ("jacfwd", lambda: jacfwd(loss)(p)), ("hessian", lambda: hessian(loss)(p))):
        with pytest.raises(NotImplementedError, match="forward-mode or nested torch.func differentiation"):
            fn()
    torch.testing.assert_close(grad(loss)(p), torch.cos(p - 0.1 * g) * g)  # one level stays right


class _CountLaunches:
    """Stands in for the kernel and counts its launches."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        self.launches += 1
        return self.kernel[grid]


@pytest.mark.parametrize("form", MANY_FORMS)
@dtypes
def test_one_launch_for_many_tensors(form, dtype, atol, rtol, monkeypatch):
    """Many tensors of odd sizes (0 elements, chunk boundaries, a misaligned view): one launch per
    update, out of place and in place, and the reference's numbers."""
    params, grads, lrs, gammas = many_case(form, dtype, chunk=fastmaml_triton._CHUNK)
    expected = reference.update(params, grads, lrs, gammas, 0.37)
    for inplace in (False, True):
        counter = _CountLaunches(fastmaml_triton._multi_update_kernel)
        monkeypatch.setattr(fastmaml_triton, "_multi_update_kernel", counter)
        actual = _suite._call(fastmaml_triton, params, grads, lrs, gammas, 0.37, inplace)
        assert counter.launches == 1, f"{form} inplace={inplace}: {counter.launches} launches"
        assert_all_close(actual, expected, atol=atol, rtol=rtol, what=f"triton many {form} inplace={inplace}")


def test_one_launch_per_dtype_in_a_mixed_list(monkeypatch):
    params, grads, lrs, gammas = many_case("scaled-channel", torch.float32, count=12)
    for i in range(0, 12, 2):  # every other tensor in float64
        params[i], grads[i], lrs[i] = params[i].double(), grads[i].double(), lrs[i].double()
    counter = _CountLaunches(fastmaml_triton._multi_update_kernel)
    monkeypatch.setattr(fastmaml_triton, "_multi_update_kernel", counter)
    actual = fastmaml_triton.update(params, grads, lrs, gammas, 0.37)
    assert counter.launches == 2
    assert_all_close(actual, reference.update(params, grads, lrs, gammas, 0.37), atol=1e-6, rtol=1e-5, what="mixed")


# ---- the moments op (NOTE: [moment forms]) ------------------------------------------------------
@pytest.mark.parametrize("name", MOMENT_FORMS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-14), (torch.float32, 1e-6), (torch.bfloat16, 2e-2)],
                         ids=["float64", "float32", "bfloat16"])
def test_moments_match_reference(name, dtype, tol):
    """Random inputs of every form (the four optimizers, rates of every broadcast, direction)."""
    form, keeps, _, direction = MOMENT_FORMS[name]
    *lists, alpha = moments_case(name, dtype, seed=5)
    got = triton_moments.moments(*lists, alpha, form, direction)
    up = [None if x is None else [t.float() for t in x] for x in lists] if dtype == torch.bfloat16 else lists
    want = moments_reference.moments(*up, alpha, form, direction)
    for g, w, kept in zip(got, want, (True, *keeps)):
        assert (g is None) == (not kept)
        for x, y in zip(g or [], w or []):
            assert x.dtype == dtype
            torch.testing.assert_close(x.to(y.dtype), y, atol=tol, rtol=tol)


@pytest.mark.parametrize("make", [lambda: InnerSGD(momentum=0.9, weight_decay=0.1), lambda: InnerAdam(weight_decay=0.1),
                                  lambda: InnerAdamW(), lambda: InnerRMSprop(centered=True, momentum=0.5)],
                         ids=["momentum", "adam", "adamw", "rmsprop"])
def test_optimizer_steps_one_launch_each(make, monkeypatch):
    """Each optimizer's steps through ops.use_backend("triton"), over many tensors of odd sizes: the
    reference backend's numbers (float64), one launch per step."""
    opt = make()
    params, grads, _, _ = many_case("sgd", torch.float64, count=12, chunk=fastmaml_triton._CHUNK)
    counter = _CountLaunches(fastmaml_triton._multi_moments_kernel)
    monkeypatch.setattr(fastmaml_triton, "_multi_moments_kernel", counter)
    results = {}
    for backend in ("reference", "triton"):
        ps, state = params, opt.init(params)
        with ops.use_backend(backend):
            for _ in range(2):
                ps, state = opt.step(ps, grads, state, 0.05)
        results[backend] = ps
    assert counter.launches == 2
    assert_all_close(results["triton"], results["reference"], atol=1e-14, rtol=1e-13, what=f"{opt!r}")


@pytest.mark.parametrize("name", ["adamw-elementwise", "rmsprop-centered-momentum"])
def test_moments_gradcheck(name):
    """The backward (the reference recomputed) and the double backward, through the Triton forward."""
    from tests.ops._moments_cases import flat_fn

    f, flat = flat_fn(name, triton_moments.moments, shapes=[(3,), (2, 2)])
    assert torch.autograd.gradcheck(f, flat)
    assert torch.autograd.gradgradcheck(f, flat)
