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


def reference(learner, sx, sy, qx, qy, lr, steps, first_order):
    """phi <- gamma * phi - lr * g, gamma = sigmoid(MLP_k([mean g_l..., mean phi_l...])) by hand."""
    p = leaves(learner.module)
    nets = [[t.detach().clone().requires_grad_() for t in net.parameters()] for net in learner.forget_nets]
    total = 0
    for t in range(sx.shape[0]):
        phi = p
        for k in range(steps):
            g = torch.autograd.grad(Fn.mse_loss(mlp(phi, sx[t]), sy[t]), phi, create_graph=not first_order)
            stats = torch.stack([gi.mean() for gi in g] + [w.mean() for w in phi])
            if first_order:
                stats = stats.detach()
            w1, b1, w2, b2 = nets[k]
            gamma = torch.sigmoid(torch.relu(stats @ w1.T + b1) @ w2.T + b2)
            phi = [gamma[i] * w - lr * gi for i, (w, gi) in enumerate(zip(phi, g))]
        total = total + Fn.mse_loss(mlp(phi, qx[t]), qy[t])
    loss = total / sx.shape[0]
    return loss, torch.autograd.grad(loss, p + [w for net in nets for w in net])


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("batching", ["loop", "vmap"])
def test_meta_gradient_matches_unrolled_reference(first_order, batching):
    learner = L2F(tiny(), inner_lr=0.3, inner_steps=2, first_order=first_order, batching=batching, init_gamma=0.8)
    with torch.no_grad():
        for net in learner.forget_nets:  # non-trivial attenuators
            net[2].weight.normal_()
    data = batch()
    loss, grads = grads_of(learner, *data)
    ref_loss, ref = reference(learner, *data, lr=0.3, steps=2, first_order=first_order)
    torch.testing.assert_close(loss, ref_loss)
    assert_close_all(grads, ref, what="grads")


def test_gammas_are_per_layer_in_unit_interval():
    learner = L2F(tiny(), inner_steps=3)
    assert len(learner.forget_nets) == 3
    p = learner.params()
    gam = learner.inner_gammas(0, p, {n: torch.ones_like(t) for n, t in p.items()})
    assert set(gam) == set(p) and all(g.shape == () and 0 < g < 1 for g in gam.values())


def test_bad_init_gamma_is_named():
    with pytest.raises(ValueError, match="init_gamma"):
        L2F(tiny(), init_gamma=1.0)


def test_learns_sine():
    learner = L2F(sine_net(), inner_lr=0.01, inner_steps=5, batching="vmap")
    pre, post = learns(learner)
    assert post <= 0.5 * pre, (pre, post)
