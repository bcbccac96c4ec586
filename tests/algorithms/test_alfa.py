import pytest
import torch
import torch.nn.functional as Fn

from fastmaml import ALFA, MAML
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
from tests.algorithms.test_l2f import mlp3


def reference(learner, sx, sy, qx, qy, steps, first_order):
    """phi <- beta * phi - alpha * g, (alpha, beta) = (alpha0_k, beta0_k) * g(tau_k), by hand."""
    p = leaves(learner.module)
    net = [t.detach().clone().requires_grad_() for t in learner.generator.parameters()]
    a0, b0 = (t.detach().clone().requires_grad_() for t in (learner.alpha0, learner.beta0))
    total = 0
    for t in range(sx.shape[0]):
        phi = p
        for k in range(steps):
            g = torch.autograd.grad(Fn.mse_loss(mlp(phi, sx[t]), sy[t]), phi, create_graph=not first_order)
            tau = torch.stack([gi.mean() for gi in g] + [w.mean() for w in phi])
            out = mlp3(net, tau.detach() if first_order else tau)
            alpha, beta = a0[k] * out[:4], b0[k] * out[4:]
            phi = [beta[i] * w - alpha[i] * gi for i, (w, gi) in enumerate(zip(phi, g))]
        total = total + Fn.mse_loss(mlp(phi, qx[t]), qy[t])
    loss = total / sx.shape[0]
    return loss, torch.autograd.grad(loss, p + net + [a0, b0])


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("batching", ["loop", "vmap"])
def test_meta_gradient_matches_unrolled_reference(first_order, batching):
    learner = ALFA(tiny(), inner_lr=0.3, inner_steps=2, first_order=first_order, batching=batching)
    with torch.no_grad():  # a non-trivial generator and per-step values
        learner.generator[4].weight.normal_(0, 0.3)
        learner.alpha0.uniform_(0.1, 0.4)
        learner.beta0.uniform_(0.8, 1.0)
    data = batch()
    loss, grads = grads_of(learner, *data)
    ref_loss, ref = reference(learner, *data, steps=2, first_order=first_order)
    torch.testing.assert_close(loss, ref_loss)
    assert_close_all(grads, _order(learner, ref), what="grads")


def _order(learner, ref):
    """The reference's [model, generator, alpha0, beta0] in learner.parameters() order."""
    by_id = {}
    model, gen = list(learner.module.parameters()), list(learner.generator.parameters())
    for t, g in zip(model + gen + [learner.alpha0, learner.beta0], ref):
        by_id[id(t)] = g
    return [by_id[id(t)] for t in learner.parameters()]


def test_starts_as_maml():
    data = batch()
    alfa = ALFA(tiny(), inner_lr=0.3, inner_steps=2)
    maml = MAML(tiny(), inner_lr=0.3, inner_steps=2)
    torch.testing.assert_close(alfa.meta_loss(*data, Fn.mse_loss), maml.meta_loss(*data, Fn.mse_loss))


def test_learns_sine():
    # The generator and the per-step values at a tenth of the initialisation's rate: alpha0 starts
    # at 0.01, which one Adam step at 1e-2 would double or zero (at one rate: ratio 0.80).
    learner = ALFA(sine_net(), inner_lr=0.01, inner_steps=5, batching="vmap")
    slow = [*learner.generator.parameters(), learner.alpha0, learner.beta0]
    pre, post = learns(learner, slow=slow, slow_lr=1e-3)
    assert post <= 0.5 * pre, (pre, post)
