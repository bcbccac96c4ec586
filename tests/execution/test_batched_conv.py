"""The task-batched convolution's hand-written second derivative (fastmaml/execution/batched/conv.py,
NOTE: [grouped conv double backward]): float64 gradgradcheck against finite differences, the same
first, second and third derivatives as torch's own convolution, and no loop over the groups in a
second-order meta-gradient; on a GPU too (the `cuda` tests, run by the device run of bench/gpu)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastmaml.execution.batched import conv
from fastmaml.execution.batched.conv import conv2d
from tests.execution._batched import meta_step_ops

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

# (input shape, weight shape, bias, stride, padding, dilation, groups)
GEOMETRIES = {
    "plain": ((2, 3, 6, 6), (4, 3, 3, 3), True, 1, 1, 1, 1),
    "grouped": ((2, 6, 7, 5), (9, 2, 3, 3), True, 1, 1, 1, 3),
    "strided-uneven": ((1, 4, 8, 7), (6, 2, 3, 2), False, 2, (1, 0), 1, 2),
    "dilated": ((2, 4, 9, 9), (4, 1, 3, 3), True, (1, 2), 2, (2, 1), 4),
}


def _inputs(name, seed=0, device="cpu"):
    xs, ws, bias, stride, padding, dilation, groups = GEOMETRIES[name]
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    x, w = rand(*xs), rand(*ws)
    b = rand(ws[0]) if bias else None
    return x, w, b, (stride, padding, dilation, groups)


@pytest.mark.parametrize("name", GEOMETRIES)
def test_gradgradcheck(name):
    _check_gradgrad(name, "cpu")


@needs_cuda
@pytest.mark.parametrize("name", GEOMETRIES)
def test_gradgradcheck_cuda(name):
    _check_gradgrad(name, "cuda")
    _check_three_derivatives(name, "cuda")


def _check_gradgrad(name, device):
    x, w, b, geometry = _inputs(name, device=device)
    args = (x, w) if b is None else (x, w, b)
    fn = lambda x, w, b=None: conv2d(x, w, b, *geometry).tanh()  # tanh: a non-zero second derivative
    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


@pytest.mark.parametrize("name", GEOMETRIES)
def test_three_derivatives_match_torch(name):
    _check_three_derivatives(name, "cpu")


def _check_three_derivatives(name, device):
    """d/d(x, w, b) of the forward, of the gradient's norm and of the gradient's norm's gradient's
    norm: the same as torch's convolution to rounding."""
    x, w, b, geometry = _inputs(name, device=device)
    leaves = [t for t in (x, w, b) if t is not None]

    def derivatives(conv):
        out = conv(x, w, b, *geometry)
        found, scalar = [out], (out.sin() * 1.3).sum()
        for _ in range(3):
            grads = torch.autograd.grad(scalar, leaves, create_graph=True)
            found += grads
            scalar = sum((g.cos() * (i + 1)).sum() for i, g in enumerate(grads))
        return found

    for ours, theirs in zip(derivatives(conv2d), derivatives(F.conv2d)):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


def test_unused_outputs_and_inputs_without_grad():
    """Only some of x, w needing gradients, and cotangents on only some of the backward's outputs."""
    x, w, b, geometry = _inputs("grouped")
    x0 = x.detach()

    def second(conv):
        gw, = torch.autograd.grad(conv(x0, w, b, *geometry).square().sum(), [w], create_graph=True)
        return torch.autograd.grad(gw.sum(), [w, b])

    for ours, theirs in zip(second(conv2d), second(F.conv2d)):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


def _convolutions_of_a_meta_step(tasks, device="cpu"):
    ops = meta_step_ops(tasks, device).by_op
    return ops["aten.convolution"] + ops["aten.convolution_backward"]


def test_second_order_meta_step_has_no_loop_over_tasks():
    """The same count of convolutions at 2 and 7 tasks."""
    assert _convolutions_of_a_meta_step(7) == _convolutions_of_a_meta_step(2)


def test_torch_loops_over_tasks_without_it(monkeypatch):
    """What the hand derivative is for: torch's runs one convolution per group (task) and layer
    (the 3 layers whose input needs a gradient, x 5 more tasks)."""
    monkeypatch.setattr(conv, "HAND_DERIVATIVE", False)
    assert _convolutions_of_a_meta_step(7) - _convolutions_of_a_meta_step(2) == 3 * 5


@needs_cuda
def test_second_order_meta_step_has_no_loop_over_tasks_cuda():
    assert _convolutions_of_a_meta_step(7, "cuda") == _convolutions_of_a_meta_step(2, "cuda")


def test_inside_torch_func_the_plain_convolution_runs():
    x, w, b, geometry = _inputs("grouped")
    grad = torch.func.grad(lambda w: conv2d(x.detach(), w, b.detach(), *geometry).tanh().sum())(w.detach())
    want, = torch.autograd.grad(F.conv2d(x, w, b, *geometry).tanh().sum(), [w])
    torch.testing.assert_close(grad, want, rtol=1e-12, atol=1e-12)
