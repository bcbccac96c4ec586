"""The functional core: inner_update, adapt, functional_forward."""

import pytest
import torch
import torch.nn.functional as F

import fastmaml
from tests.models import mlp_forward, regression_tasks, tiny_mlp


@pytest.mark.parametrize("backend", ["reference", "foreach", "auto"])
def test_inner_update_is_p_minus_lr_g_and_differentiable(backend):
    params = {"a": torch.randn(3, 4, dtype=torch.float64, requires_grad=True),
              "b": torch.randn(5, dtype=torch.float64, requires_grad=True)}
    grads = {"a": torch.randn(3, 4, dtype=torch.float64, requires_grad=True)}
    with fastmaml.use_backend(backend):
        out = fastmaml.inner_update(params, grads, 0.25)
    torch.testing.assert_close(out["a"], params["a"] - 0.25 * grads["a"])
    assert out["b"] is params["b"]
    (out["a"] * torch.arange(12.0, dtype=torch.float64).view(3, 4)).sum().backward()
    w = torch.arange(12.0, dtype=torch.float64).view(3, 4)
    torch.testing.assert_close(params["a"].grad, w)
    torch.testing.assert_close(grads["a"].grad, -0.25 * w)


def test_adapt_matches_plain_gradient_descent():
    model = tiny_mlp()
    sx, sy, _, _ = regression_tasks()
    phi = fastmaml.adapt(model, fastmaml.params_of(model), sx[0], sy[0], F.mse_loss, lr=0.1, steps=3)
    theta = list(model.parameters())
    for _ in range(3):
        g = torch.autograd.grad(F.mse_loss(mlp_forward(theta, sx[0]), sy[0]), theta, create_graph=True)
        theta = [p - 0.1 * gi for p, gi in zip(theta, g)]
    for (name, a), b in zip(phi.items(), theta):
        torch.testing.assert_close(a, b, msg=lambda m: f"{name}: {m}")
    # second order: the adapted params stay connected to the model's
    assert phi["0.weight"].grad_fn is not None


def test_adapt_first_order_detaches_the_gradients():
    model = tiny_mlp()
    sx, sy, _, _ = regression_tasks()
    phi = fastmaml.adapt(model, fastmaml.params_of(model), sx[0], sy[0], F.mse_loss, lr=0.1, steps=1, first_order=True)
    grads = torch.autograd.grad(phi["0.weight"].sum(), list(model.parameters()), allow_unused=True)
    torch.testing.assert_close(grads[0], torch.ones_like(grads[0]))  # d(p - lr*g)/dp with g constant
    # the other params do not reach 0.weight (one fused node for all tensors may report zeros)
    assert all(g is None or not g.any() for g in grads[1:])


def test_functional_forward_uses_given_params_and_falls_back_to_the_model():
    model = tiny_mlp()
    x = torch.randn(4, 2, dtype=torch.float64)
    zero_head = {"4.weight": torch.zeros(1, 8, dtype=torch.float64)}
    out = fastmaml.functional_forward(model, zero_head, x)
    torch.testing.assert_close(out, model[4].bias.expand(4, 1))


def test_backend_selection():
    assert fastmaml.get_backend() in ("auto", "reference", "foreach", "native", "triton")
    with pytest.raises(ValueError, match="set_backend: name must be one of"):
        fastmaml.set_backend("cuda-magic")
    with fastmaml.use_backend("reference"):
        assert fastmaml.get_backend() == "reference"
