"""fastmaml.hvp against dense Hessians (torch.autograd.functional.hessian) in float64."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from fastmaml.secondorder.hvp import hvp, hvp_and_grad
from tests.models import image_tasks, regression_tasks, tiny_cnn, tiny_mlp

METHODS = ["forward", "reverse", "loop"]


def _dense(model, loss_fn, point, x, y):
    """Dense Hessian and gradient of one task's loss over all params, flattened in point's order."""
    names = list(point)
    shapes = [point[n].shape for n in names]

    def unflat(f):
        parts = torch.split(f, [s.numel() for s in shapes])
        return {n: p.view(s) for n, p, s in zip(names, parts, shapes)}

    flat = torch.cat([point[n].flatten() for n in names]).detach()
    loss = lambda f: loss_fn(functional_call(model, unflat(f), (x,)), y)
    return torch.autograd.functional.hessian(loss, flat), torch.autograd.functional.jacobian(loss, flat)


def _batched_point(model, T, scale=0.1):
    g = torch.Generator().manual_seed(5)
    return {n: p.detach() + scale * torch.randn(T, *p.shape, generator=g, dtype=p.dtype) for n, p in model.named_parameters()}


@pytest.mark.parametrize("method", METHODS)
def test_matches_dense_hessian_mlp(method):
    model = tiny_mlp()
    sx, sy, _, _ = regression_tasks()
    T = sx.shape[0]
    params = _batched_point(model, T)
    vectors = {n: torch.randn_like(p) for n, p in params.items()}

    def loss_of(p, x, y):
        return F.mse_loss(functional_call(model, p, (x,)), y)

    grads, hv, used = hvp_and_grad(loss_of, params, vectors, sx, sy, method=method)
    assert used == method
    for t in range(T):
        H, g = _dense(model, F.mse_loss, {n: p[t] for n, p in params.items()}, sx[t], sy[t])
        v = torch.cat([vectors[n][t].flatten() for n in params])
        torch.testing.assert_close(torch.cat([hv[n][t].flatten() for n in params]), H @ v, atol=1e-11, rtol=1e-10)
        torch.testing.assert_close(torch.cat([grads[n][t].flatten() for n in params]), g, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("method", ["forward", "reverse"])
def test_shared_params_block_and_batch_norm(method):
    """params shared by the tasks (theta), the Hessian block of a subset of names (the others held
    fixed), a conv net with batch norm (batch statistics) and cross-entropy."""
    model = tiny_cnn()
    sx, sy, _, _ = image_tasks()
    theta = {n: p.detach() for n, p in model.named_parameters()}
    wrt = ["0.weight", "4.weight"]
    vectors = {n: torch.randn(sx.shape[0], *theta[n].shape, dtype=torch.float64) for n in wrt}
    nobuf = {n: None for n, _ in model.named_buffers()}  # batch statistics, running stats untouched

    def loss_of(p, x, y):
        return F.cross_entropy(functional_call(model, {**p, **nobuf}, (x,)), y)

    from fastmaml.execution.batchnorm import DecomposedBatchNorm

    hv = hvp(loss_of, theta, vectors, sx, sy, params_batched=False, method=method, context=DecomposedBatchNorm)
    assert list(hv) == wrt
    for t in range(sx.shape[0]):
        # the oracle: plain autograd double backward on the task's own forward
        point = {n: p.clone().requires_grad_() for n, p in theta.items()}
        loss = F.cross_entropy(functional_call(model, {**point, **nobuf}, (sx[t],)), sy[t])
        g = torch.autograd.grad(loss, [point[n] for n in wrt], create_graph=True)
        dot = sum((gi * vectors[n][t]).sum() for gi, n in zip(g, wrt))
        expected = torch.autograd.grad(dot, [point[n] for n in wrt])
        for n, e in zip(wrt, expected):
            torch.testing.assert_close(hv[n][t], e, atol=1e-10, rtol=1e-9)
    assert float(dict(model.named_buffers())["1.num_batches_tracked"]) == 0


def test_cross_term_with_zero_vector():
    """A zero vector on a name gives that name's cross term H_{name, others} v."""
    model = tiny_mlp()
    sx, sy, _, _ = regression_tasks(tasks=2)
    params = _batched_point(model, 2)
    vectors = {n: torch.randn_like(p) for n, p in params.items()}
    vectors["4.weight"] = torch.zeros_like(params["4.weight"])

    def loss_of(p, x, y):
        return F.mse_loss(functional_call(model, p, (x,)), y)

    hv = hvp(loss_of, params, vectors, sx, sy)
    for t in range(2):
        H, _ = _dense(model, F.mse_loss, {n: p[t] for n, p in params.items()}, sx[t], sy[t])
        v = torch.cat([vectors[n][t].flatten() for n in params])
        torch.testing.assert_close(torch.cat([hv[n][t].flatten() for n in params]), H @ v, atol=1e-11, rtol=1e-10)
        assert hv["4.weight"][t].abs().sum() > 0


def test_auto_falls_back_when_forward_mode_fails():
    """An op without a forward-mode formula: "auto" warns and uses the double backward."""

    class NoJvp(torch.autograd.Function):
        @staticmethod
        def forward(x):
            return x.sin()

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * x.cos()

    def loss_of(p, x):
        return NoJvp.apply(p["w"] * x).sum()

    w = torch.randn(2, 3, dtype=torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64)
    v = {"w": torch.randn(2, 3, dtype=torch.float64)}
    with pytest.warns(RuntimeWarning, match="falling back"):
        _, hv, used = hvp_and_grad(loss_of, {"w": w}, v, x, method="auto")
    assert used in ("reverse", "loop")
    torch.testing.assert_close(hv["w"], -(w * x).sin() * x * x * v["w"])


def test_errors_name_the_argument():
    p = {"w": torch.zeros(2, 3)}
    with pytest.raises(ValueError, match=r"vectors\['w'\] has shape \[2, 4\]"):
        hvp(lambda p: p["w"].sum(), p, {"w": torch.zeros(2, 4)}, params_batched=False)
    with pytest.raises(KeyError, match="params lacks"):
        hvp(lambda p: p["w"].sum(), p, {"b": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match="method must be one of"):
        hvp(lambda p: p["w"].sum(), p, {"w": torch.zeros(2, 2, 3)}, params_batched=False, method="bogus")
