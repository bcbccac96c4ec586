import pytest
import torch
import torch.nn.functional as Fn

from fastmaml import Reptile
from tests.algorithms._algo_helpers import (
    assert_close_all,
    batch,
    learns,
    leaves,
    mlp,
    sine_net,
    tiny,
)


def reference_direction(model, sx, sy, lr, steps):
    """theta - mean_t phi_t with plain SGD steps."""
    p = leaves(model)
    phis = []
    for t in range(sx.shape[0]):
        phi = [w.detach().requires_grad_() for w in p]
        for _ in range(steps):
            g = torch.autograd.grad(Fn.mse_loss(mlp(phi, sx[t]), sy[t]), phi)
            phi = [(w - lr * gi).detach().requires_grad_() for w, gi in zip(phi, g)]
        phis.append(phi)
    return [w.detach() - torch.stack([phi[i].detach() for phi in phis]).mean(0) for i, w in enumerate(p)]


@pytest.mark.parametrize("batching", ["loop", "vmap"])
def test_step_is_reptile_update(batching):
    model = tiny()
    sx, sy, _, _ = batch()
    before = [p.detach().clone() for p in model.parameters()]
    direction = reference_direction(model, sx, sy, lr=0.1, steps=3)
    Reptile(model, inner_lr=0.1, inner_steps=3, batching=batching).step(sx, sy, Fn.mse_loss, outer_lr=0.5)
    assert_close_all([p.detach() for p in model.parameters()],
                     [b - 0.5 * d for b, d in zip(before, direction)], what="theta")


def test_meta_grad_writes_direction_and_accumulates():
    model = tiny()
    sx, sy, _, _ = batch()
    direction = reference_direction(model, sx, sy, lr=0.1, steps=2)
    learner = Reptile(model, inner_lr=0.1, inner_steps=2, batching="loop")
    loss = learner.meta_grad(sx, sy, Fn.mse_loss)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert_close_all([p.grad for p in model.parameters()], direction, what="grad")
    learner.meta_grad(sx, sy, Fn.mse_loss)
    assert_close_all([p.grad for p in model.parameters()], [2 * d for d in direction], what="accumulated grad")
    # With SGD(lr=eps) an optimizer step is exactly the Reptile step.
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = None
    learner.meta_grad(sx, sy, Fn.mse_loss)
    torch.optim.SGD(model.parameters(), lr=0.3).step()
    assert_close_all([p.detach() for p in model.parameters()], [b - 0.3 * d for b, d in zip(before, direction)])


def test_bad_outer_lr_is_named():
    sx, sy, _, _ = batch()
    with pytest.raises(ValueError, match="outer_lr"):
        Reptile(tiny()).step(sx, sy, Fn.mse_loss, outer_lr=-1.0)


def test_learns_sine():
    learner = Reptile(sine_net(), inner_lr=0.02, inner_steps=5, batching="vmap")

    def train_step(b):  # Reptile trains on the task's whole data (support and query)
        learner.meta_grad(torch.cat([b.support_x, b.query_x], 1), torch.cat([b.support_y, b.query_y], 1), Fn.mse_loss)

    pre, post = learns(learner, train_step=train_step, iters=150)
    assert post <= 0.5 * pre, (pre, post)
