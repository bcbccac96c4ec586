import pytest
import torch
import torch.nn.functional as Fn

from fastmaml import MetaSGD
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


def reference(model, lrs, sx, sy, qx, qy, steps, first_order):
    """Plain unrolled autograd: phi <- phi - lr * g, per-param rate tensors."""
    p = leaves(model)
    a = [lr.detach().clone().requires_grad_() for lr in lrs]
    total = 0
    for t in range(sx.shape[0]):
        phi = p
        for _ in range(steps):
            g = torch.autograd.grad(Fn.mse_loss(mlp(phi, sx[t]), sy[t]), phi, create_graph=not first_order)
            phi = [w - r * gi for w, r, gi in zip(phi, a, g)]
        total = total + Fn.mse_loss(mlp(phi, qx[t]), qy[t])
    loss = total / sx.shape[0]
    return loss, torch.autograd.grad(loss, p + a)


@pytest.mark.parametrize("per", ["element", "layer"])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("batching", ["loop", "vmap"])
def test_meta_gradient_matches_unrolled_reference(per, first_order, batching):
    model = tiny()
    learner = MetaSGD(model, inner_lr=0.1, inner_steps=2, first_order=first_order, per=per, batching=batching)
    with torch.no_grad():  # distinct rates so a mix-up of names would show
        for i, r in enumerate(learner.lrs.values()):
            r.add_(0.01 * (i + 1) * torch.rand_like(r))
    data = batch()
    loss, grads = grads_of(learner, *data)
    lrs = [learner.lrs[k] for k in learner._keys.values()]
    ref_loss, ref = reference(model, lrs, *data, steps=2, first_order=first_order)
    torch.testing.assert_close(loss, ref_loss)
    params = list(model.parameters())
    order = params + lrs
    by_id = dict(zip(map(id, learner.parameters()), grads))
    assert_close_all([by_id[id(t)] for t in order], ref, what="grads")


def test_rate_shapes_and_names():
    model = tiny()
    e = MetaSGD(model, per="element")
    assert set(e.lrs) == {"0__weight", "0__bias", "2__weight", "2__bias"}
    assert e.inner_rates(0)["0.weight"].shape == model[0].weight.shape
    layer = MetaSGD(tiny(), per="layer")
    assert all(r.shape == (1,) for r in layer.inner_rates(0).values())


def test_bad_per_is_named():
    with pytest.raises(ValueError, match="per must be one of"):
        MetaSGD(tiny(), per="row")


@pytest.mark.slow
def test_learns_sine():
    learner = MetaSGD(sine_net(), inner_lr=0.01, inner_steps=5, batching="vmap")
    pre, post = learns(learner, slow=learner.lrs.parameters(), slow_lr=1e-4)
    assert post <= 0.5 * pre, (pre, post)
