"""Every fast backend against `reference`: outputs, gradients, torch.func transforms, op count."""

import pytest
import torch

from fastmaml.ops import native
from tests.ops import _suite
from tests.ops._cases import DTYPES, FORMS, SMALL_SHAPES

CPU = torch.device("cpu")
needs_native = pytest.mark.skipif(not native.is_available(CPU), reason=f"fastmaml._C not usable: {native.import_error}")
needs_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and native.is_available(torch.device("cuda"))), reason="no CUDA device or kernels"
)
dtypes = pytest.mark.parametrize("dtype,atol,rtol", DTYPES, ids=[str(d[0]).split(".")[1] for d in DTYPES])
forms = pytest.mark.parametrize("form", FORMS)


@forms
@dtypes
def test_matches_reference_cpu(form, dtype, atol, rtol):
    _suite.check_matches_reference(["foreach"] + (["native"] if native.is_available(CPU) else []), form, dtype, atol, rtol)


@needs_cuda
@forms
@dtypes
def test_matches_reference_cuda(form, dtype, atol, rtol):
    _suite.check_matches_reference(["native"], form, dtype, atol, rtol, device="cuda")


@needs_native
@forms
def test_gradcheck(form):
    _suite.check_gradcheck("native", form)


@needs_cuda
@forms
def test_gradcheck_cuda(form):
    _suite.check_gradcheck("native", form, device="cuda")


@needs_cuda
def test_transforms_cuda():
    _suite.check_transforms("native", device="cuda")


@needs_cuda
@pytest.mark.parametrize("sizes", [[1023], [7, 0, 65536, 65537, 3] * 40, [25_000_001]], ids=["one", "200", "big"])
@pytest.mark.parametrize("form", ["sgd", "scaled-channel", "forget-elementwise"])
def test_one_cuda_launch_per_update(sizes, form):
    """One kernel per update however many tensors (200) or chunks (a 25M-element tensor is 382
    chunks), out of place and in place, with the reference's numbers."""
    params, grads, lrs, gammas = _suite.make_case(form, torch.float32, "cuda", shapes=[(n,) for n in sizes],
                                                  noncontiguous=False)
    backend = _suite.backend_module("native")
    expected = _suite.reference.update(params, grads, lrs, gammas, 0.37)
    out = [p.clone() for p in params]
    for inplace in (False, True):
        if inplace:
            call = lambda: backend.update_(out, grads, lrs, gammas, 0.37)
        else:
            call = lambda: backend.update(params, grads, lrs, gammas, 0.37)
        with torch.no_grad():
            kernels = _suite.cuda_kernels(call)
        assert len(kernels) == 1, f"{form} inplace={inplace}: {kernels}"
    _suite.assert_all_close(backend.update(params, grads, lrs, gammas, 0.37), expected, atol=1e-6, rtol=1e-5,
                            what=f"native cuda {form}")


@needs_native
@forms
@dtypes
def test_backward_matches_reference(form, dtype, atol, rtol):
    _suite.check_backward_matches_reference("native", form, dtype, atol, rtol)


@needs_native
def test_transforms():
    _suite.check_transforms("native")


@needs_native
def test_one_dispatched_op_per_update():
    _suite.check_one_op_per_update("native")


@needs_native
@pytest.mark.parametrize("form", ["sgd", "scaled-channel", "forget-layer"])
def test_opcheck(form):
    params, grads, lrs, gammas = _suite.make_case(form, torch.float32, shapes=SMALL_SHAPES)
    ops = torch.ops.fastmaml
    leaves = [t.requires_grad_() for t in params]
    torch.library.opcheck(ops.fused_update.default, (leaves, grads, lrs, gammas, 0.3))
    torch.library.opcheck(ops.fused_update_.default, ([p.detach().clone() for p in params], grads, lrs, gammas, 0.3))
    torch.library.opcheck(ops.fused_update_backward.default,
                          (grads, [p.detach() for p in params], grads, lrs, gammas, 0.3, [True, True, bool(lrs), bool(gammas)]))
