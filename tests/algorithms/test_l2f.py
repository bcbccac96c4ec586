import pytest
import torch
import torch.nn.functional as Fn

from fastmaml.algorithms.l2f import L2F
from tests.algorithms._algo_helpers import (
    assert_close_all,
    batch,
    grads_of,
    learns,
    leaves,
    mlp,
    sine_net,
    tiny,
)


def mlp3(net, x):
    w1, b1, w2, b2, w3, b3 = net
    return torch.relu(torch.relu(x @ w1.T + b1) @ w2.T + b2) @ w3.T + b3


def reference(learner, sx, sy, qx, qy, lr, steps, first_order):
    """theta~ = sigmoid(h(mean grad_l L_support(theta))) * theta, then plain SGD steps, by hand."""
    p = leaves(learner.module)
    net = [t.detach().clone().requires_grad_() for t in learner.attenuator.parameters()]
    total = 0
    for t in range(sx.shape[0]):
        g = torch.autograd.grad(Fn.mse_loss(mlp(p, sx[t]), sy[t]), p, create_graph=not first_order)
        stats = torch.stack([gi.mean() for gi in g])
        gamma = torch.sigmoid(mlp3(net, stats.detach() if first_order else stats))
        phi = [gamma[i] * w for i, w in enumerate(p)]
        for _ in range(steps):
            g = torch.autograd.grad(Fn.mse_loss(mlp(phi, sx[t]), sy[t]), phi, create_graph=not first_order)
            phi = [w - lr * gi for w, gi in zip(phi, g)]
        total = total + Fn.mse_loss(mlp(phi, qx[t]), qy[t])
    loss = total / sx.shape[0]
    return loss, torch.autograd.grad(loss, p + net)


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("batching", ["loop", "vmap"])
def test_meta_gradient_matches_unrolled_reference(first_order, batching):
    learner = L2F(tiny(), inner_lr=0.3, inner_steps=2, first_order=first_order, batching=batching, init_gamma=0.8)
    with torch.no_grad():  # a non-trivial attenuator
        learner.attenuator[4].weight.normal_()
    data = batch()
    loss, grads = grads_of(learner, *data)
    ref_loss, ref = reference(learner, *data, lr=0.3, steps=2, first_order=first_order)
    torch.testing.assert_close(loss, ref_loss)
    assert_close_all(grads, ref, what="grads")


def test_attenuation_is_per_layer_and_task_conditioned():
    learner = L2F(tiny(), inner_steps=3)
    with torch.no_grad():
        learner.attenuator[4].weight.normal_()
    sx, sy, _, _ = batch(tasks=2)
    p = learner.params()
    starts = [learner.attenuate(p, sx[t], sy[t], Fn.mse_loss) for t in range(2)]
    for start, gamma in starts:
        assert set(gamma) == set(p) and all(g.shape == () and 0 < g < 1 for g in gamma.values())
        for n in p:
            torch.testing.assert_close(start[n], gamma[n] * p[n])
    assert not torch.equal(starts[0][1]["0.weight"], starts[1][1]["0.weight"])
    trajectory = learner.inner_loop(p, sx[0], sy[0], Fn.mse_loss)
    assert len(trajectory) == 4 and torch.equal(trajectory[0]["0.weight"], starts[0][0]["0.weight"])


def test_bad_init_gamma_is_named():
    with pytest.raises(ValueError, match="init_gamma"):
        L2F(tiny(), init_gamma=1.0)


def test_learns_sine():
    learner = L2F(sine_net(), inner_lr=0.01, inner_steps=5, batching="vmap")
    pre, post = learns(learner)
    assert post <= 0.5 * pre, (pre, post)
