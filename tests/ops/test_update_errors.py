"""Bad input to the update gets an error naming the argument and the index, whatever the backend
(the dispatcher checks before any backend runs), and the compiled ops check too when called directly."""

import math

import pytest
import torch

from fastmaml import ops
from fastmaml.ops import native


def _lists(n=3):
    params = [torch.randn(4, 3), torch.randn(5), torch.randn(2, 2, 2)][:n]
    return params, [torch.randn_like(p) for p in params]


@pytest.fixture(params=["reference", "foreach", "native"])
def backend(request):
    if not ops.is_available(request.param):
        pytest.skip(f"{request.param} not usable here: {native.import_error}")
    with ops.use_backend(request.param):
        yield request.param


@pytest.mark.parametrize("update", [ops.update, ops.update_], ids=["update", "update_"])
class TestDispatcher:
    def test_list_lengths(self, backend, update):
        params, grads = _lists()
        with pytest.raises(ValueError, match="grads has 2 tensors but params has 3"):
            update(params, grads[:2], 0.1)
        with pytest.raises(ValueError, match="lrs has 1 tensors but params has 3"):
            update(params, grads, [torch.ones(1)])
        with pytest.raises(ValueError, match="gammas has 4 tensors but params has 3"):
            update(params, grads, 0.1, [torch.ones(1)] * 4)

    def test_shape(self, backend, update):
        params, grads = _lists()
        grads[1] = torch.randn(6)
        with pytest.raises(ValueError, match=r"grads\[1\] \('b'\) has shape \[6\] but params\[1\] \('b'\) has \[5\]"):
            update(params, grads, 0.1, names=["a", "b", "c"])

    def test_dtype(self, backend, update):
        params, grads = _lists()
        grads[2] = grads[2].double()
        with pytest.raises(TypeError, match=r"grads\[2\] has dtype torch.float64 but params\[2\] has torch.float32"):
            update(params, grads, 0.1)
        lrs = [torch.ones(1), torch.ones(1, dtype=torch.float16), torch.ones(1)]
        with pytest.raises(TypeError, match=r"lrs\[1\] has dtype torch.float16"):
            update(*_lists(), lrs)

    def test_device(self, backend, update):
        params, grads = _lists()
        grads[0] = grads[0].to("meta")
        with pytest.raises(ValueError, match=r"grads\[0\] is on meta but params\[0\] is on cpu"):
            update(params, grads, 0.1)

    def test_not_broadcastable(self, backend, update):
        params, grads = _lists()
        lrs = [torch.ones(1), torch.ones(3), torch.ones(1)]
        with pytest.raises(ValueError, match=r"lrs\[1\] has shape \[3\], which does not broadcast to params\[1\] shape \[5\]"):
            update(params, grads, lrs)
        gammas = [torch.ones(4, 1), torch.ones(1), torch.ones(2, 2, 2, 2)]
        with pytest.raises(ValueError, match=r"gammas\[2\] has shape \[2, 2, 2, 2\], which does not broadcast"):
            update(params, grads, 0.1, gammas)

    @pytest.mark.parametrize("lr", [math.nan, math.inf])
    def test_non_finite_lr(self, backend, update, lr):
        with pytest.raises(ValueError, match="lr must be finite"):
            update(*_lists(), lr)


needs_native = pytest.mark.skipif(not ops.is_available("native"), reason=f"fastmaml._C not usable: {native.import_error}")


@needs_native
def test_compiled_op_checks_its_arguments():
    op = torch.ops.fastmaml.fused_update
    params, grads = _lists()
    with pytest.raises(RuntimeError, match=r"fused_update: grads\[1\] has shape \[6\] but params\[1\] has \[5\]"):
        op(params, [grads[0], torch.randn(6), grads[2]], None, None, 0.1)
    with pytest.raises(RuntimeError, match=r"fused_update: lrs\[0\] has shape \[3, 3\], which does not broadcast"):
        op(params, grads, [torch.ones(3, 3), torch.ones(1), torch.ones(1)], None, 0.1)
    with pytest.raises(RuntimeError, match=r"fused_update_: gammas has 1 tensors but params has 3"):
        torch.ops.fastmaml.fused_update_(params, grads, None, [torch.ones(1)], 0.1)
    with pytest.raises(RuntimeError, match=r"fused_update: params\[1\] must be floating point"):
        op([params[0], torch.ones(5, dtype=torch.int32)], [grads[0], torch.ones(5, dtype=torch.int32)], None, None, 0.1)


@needs_native
def test_inplace_under_vmap_needs_batched_params():
    p, g = torch.randn(3), torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"params\[0\] is not batched but another operand is"):
        torch.func.vmap(lambda g: (native.update_([p], [g], None, None, 0.1), g)[1])(g)
