"""The Triton backend's checks, run under the Triton interpreter on CPU tensors by
tests/ops/test_update_triton.py in a subprocess (TRITON_INTERPRET=1 must be set before triton is
first imported, so these cannot share a process with the rest of the suite). Not collected alone."""

import os

import pytest
import torch

from tests.ops import _suite
from tests.ops._cases import DTYPES, FORMS, SMALL_SHAPES

assert os.environ.get("TRITON_INTERPRET") == "1", "run through tests/ops/test_update_triton.py"
fastmaml_triton = pytest.importorskip("fastmaml.ops.triton")

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
