"""The task-batched batch norm's hand-written second derivative (fastmaml/execution/batched/norm.py,
NOTE: [batch norm double backward]): float64 gradgradcheck against finite differences (of its
gradient too: third order, which torch's batch norm refuses), the same first and second derivatives
and running statistics as torch's F.batch_norm, and far fewer ops in a second-order meta-step; on a GPU too (the `cuda` tests, run by the device run of bench/gpu)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastmaml
from fastmaml.execution.batched import norm
from fastmaml.execution.batched.norm import batch_norm
from fastmaml.models import conv4
from tests.execution._batched import meta_step_ops

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

# name -> (input shape, affine, running statistics)
CASES = {
    "2d-affine-running": ((3, 4, 5, 3), True, True),
    "2d-plain": ((2, 3, 4, 4), False, False),
    "1d-affine": ((6, 5), True, False),
    "1d-length-running": ((4, 3, 7), True, True),
}


def _inputs(name, device="cpu", seed=0):
    shape, affine, running = CASES[name]
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64).to(device)
    x = (rand(*shape) * 2 + 0.5).requires_grad_()
    c = shape[1]
    w = (rand(c) + 1.5).requires_grad_() if affine else None
    b = rand(c).requires_grad_() if affine else None
    stats = (rand(c), rand(c).abs() + 0.5) if running else (None, None)
    return x, w, b, stats


def _leaves(x, w, b):
    return [t for t in (x, w, b) if t is not None]


@pytest.mark.parametrize("name", CASES)
def test_gradgradcheck(name):
    _check_gradgrad(name, "cpu")


@needs_cuda
@pytest.mark.parametrize("name", CASES)
def test_gradgradcheck_cuda(name):
    _check_gradgrad(name, "cuda")
    _check_two_derivatives(name, "cuda")


def _check_gradgrad(name, device):
    x, w, b, _ = _inputs(name, device)
    args = _leaves(x, w, b)

    def fn(x, w=None, b=None):
        return batch_norm(x, None, None, w, b, True, 0.1, 1e-5).sin()  # sin: a non-zero second derivative

    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


def test_third_order_gradgradcheck():
    """The gradient, checked twice more: the third derivatives against finite differences."""
    x, w, b, _ = _inputs("1d-length-running")

    def gradient(x, w, b):
        out = batch_norm(x, None, None, w, b, True, 0.1, 1e-5).sin().sum()
        return torch.autograd.grad(out, [x, w, b], create_graph=True)

    assert torch.autograd.gradgradcheck(gradient, [x, w, b])


@pytest.mark.parametrize("name", CASES)
def test_two_derivatives_and_running_statistics_match_torch(name):
    _check_two_derivatives(name, "cpu")


def _check_two_derivatives(name, device):
    """The output, the running statistics it leaves, and d/d(x, w, b) of the output and of the
    gradients' norm: torch's F.batch_norm's to rounding (torch has no third order here)."""
    x, w, b, (rm, rv) = _inputs(name, device)
    leaves = _leaves(x, w, b)

    def derivatives(bn):
        stats = [None if s is None else s.clone() for s in (rm, rv)]
        out = bn(x, stats[0], stats[1], w, b, True, 0.3, 1e-5)
        found, scalar = [out, *(s for s in stats if s is not None)], (out.sin() * 1.3).sum()
        for order in range(2):
            grads = torch.autograd.grad(scalar, leaves, create_graph=order == 0)
            found += grads
            scalar = sum((g.cos() * (i + 1)).sum() for i, g in enumerate(grads))
        return found

    for ours, theirs in zip(derivatives(batch_norm), derivatives(F.batch_norm), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)


def test_partial_cotangents_and_inputs_without_grad():
    """Only the weight's gradient taken, then differentiated w.r.t. x alone (x a non-leaf)."""
    x, w, b, _ = _inputs("2d-affine-running")

    def second(bn):
        h = x * 1.0
        gw, = torch.autograd.grad(bn(h, None, None, w, b, True, 0.1, 1e-5).pow(3).sum(), [w], create_graph=True)
        return torch.autograd.grad((gw * gw).sum(), [x])

    for ours, theirs in zip(second(batch_norm), second(F.batch_norm), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


def test_eval_mode_and_torch_func_run_torch_batch_norm():
    x, w, b, (rm, rv) = _inputs("2d-affine-running")
    torch.testing.assert_close(batch_norm(x, rm, rv, w, b, False, 0.1, 1e-5), F.batch_norm(x, rm, rv, w, b, False, 0.1, 1e-5))
    grad = torch.func.grad(lambda w: batch_norm(x.detach(), None, None, w, b.detach(), True, 0.1, 1e-5).sin().sum())
    want, = torch.autograd.grad(F.batch_norm(x, None, None, w, b, True, 0.1, 1e-5).sin().sum(), [w])
    torch.testing.assert_close(grad(w.detach()), want, rtol=1e-12, atol=1e-12)


def _ops_of_a_meta_step(device="cpu"):
    return meta_step_ops(3, device).count


def test_a_second_order_meta_step_dispatches_far_fewer_ops(monkeypatch):
    """Conv-4's four batch norms: ~120 ops each for torch's double backward, ~40 for ours."""
    ours = _ops_of_a_meta_step()
    monkeypatch.setattr(norm, "HAND_DERIVATIVE", False)
    theirs = _ops_of_a_meta_step()
    assert theirs - ours > 4 * 60, (ours, theirs)


@needs_cuda
def test_a_second_order_meta_step_dispatches_far_fewer_ops_cuda(monkeypatch):
    ours = _ops_of_a_meta_step("cuda")
    monkeypatch.setattr(norm, "HAND_DERIVATIVE", False)
    assert _ops_of_a_meta_step("cuda") - ours > 4 * 60


def test_autocast_runs_torch_layers(monkeypatch):
    """Under autocast (which casts inside a forward what a hand-written backward would see uncast)
    the batched layers are torch's: the same meta-step as with torch's derivatives."""
    from fastmaml.execution.batched import conv

    def meta_step():
        torch.manual_seed(0)
        model = conv4(n_way=3, hidden=4, image_size=16)
        learner = fastmaml.MAML(model, inner_lr=0.1, inner_steps=1, batching="batched")
        x, y = torch.rand(3, 6, 1, 16, 16), torch.arange(3).repeat(3, 2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = learner.meta_loss(x, y, x, y, F.cross_entropy)
        loss.backward()
        return [loss, *(p.grad for p in model.parameters())]

    ours = meta_step()
    monkeypatch.setattr(norm, "HAND_DERIVATIVE", False)
    monkeypatch.setattr(conv, "HAND_DERIVATIVE", False)
    for a, b in zip(ours, meta_step(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
