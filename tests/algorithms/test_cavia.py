import pytest
import torch
import torch.nn.functional as Fn
from torch import nn

from fastmaml.algorithms.cavia import CAVIA
from tests.algorithms._algo_helpers import DT, assert_close_all, batch, grads_of, learns, leaves


def model_input(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(1 + 2, 3), nn.Tanh(), nn.Linear(3, 1)).to(DT)


def model_hidden(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(1, 3), nn.Tanh(), nn.Linear(3 + 2, 1)).to(DT)


def reference(model, at_input, sx, sy, qx, qy, lr, steps, first_order):
    p = leaves(model)

    def f(x, c):
        if at_input:
            x = torch.cat([x, c.expand(x.shape[0], 2)], -1)
        h = torch.tanh(x @ p[0].T + p[1])
        if not at_input:
            h = torch.cat([h, c.expand(h.shape[0], 2)], -1)
        return h @ p[2].T + p[3]

    total = 0
    for t in range(sx.shape[0]):
        c = torch.zeros(2, dtype=DT, requires_grad=True)
        for _ in range(steps):
            (g,) = torch.autograd.grad(Fn.mse_loss(f(sx[t], c), sy[t]), c, create_graph=not first_order)
            c = c - lr * g
        total = total + Fn.mse_loss(f(qx[t], c), qy[t])
    loss = total / sx.shape[0]
    return loss, torch.autograd.grad(loss, p)


@pytest.mark.parametrize("at_input", [True, False])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("batching", ["loop", "vmap"])
def test_meta_gradient_matches_unrolled_reference(at_input, first_order, batching):
    model = model_input() if at_input else model_hidden()
    learner = CAVIA(model, num_context=2, inner_lr=0.5, inner_steps=2, first_order=first_order,
                    context_at=None if at_input else "2", batching=batching)
    data = batch()
    loss, grads = grads_of(learner, *data)
    ref_loss, ref = reference(model, at_input, *data, lr=0.5, steps=2, first_order=first_order)
    torch.testing.assert_close(loss, ref_loss)
    assert_close_all(grads, ref, what="grads")


def test_context_starts_at_zero_and_only_it_adapts():
    learner = CAVIA(model_input(), num_context=2, inner_lr=0.5)
    sx, sy, qx, _ = (t[0] for t in batch(tasks=1))
    phi = learner.adapt(sx, sy, Fn.mse_loss)
    assert learner.adapt_names == ["cavia.context"]
    assert torch.count_nonzero(phi["cavia.context"]) > 0
    assert all(phi[n] is p for n, p in learner.module.named_parameters())
    assert learner(qx).shape == (5, 1) and learner(qx, phi).shape == (5, 1)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="num_context"):
        CAVIA(model_input(), num_context=0)
    with pytest.raises(ValueError, match="context_at: model has no submodule 'fc'"):
        CAVIA(model_input(), context_at="fc")


def test_learns_sine():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1 + 4, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))
    learner = CAVIA(net, num_context=4, inner_lr=1.0, inner_steps=2, batching="vmap")
    pre, post = learns(learner, lr=1e-2, iters=200)
    assert post <= 0.5 * pre, (pre, post)
