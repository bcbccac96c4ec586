import pytest
import torch
import torch.nn.functional as Fn

from fastmaml import ANIL, BOIL
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


def reference(model, adapted, sx, sy, qx, qy, lr, steps, first_order):
    """Unrolled autograd adapting only the tensors whose index is in `adapted`."""
    p = leaves(model)
    total = 0
    for t in range(sx.shape[0]):
        phi = list(p)
        for _ in range(steps):
            wrt = [phi[i] for i in adapted]
            g = torch.autograd.grad(Fn.mse_loss(mlp(phi, sx[t]), sy[t]), wrt, create_graph=not first_order)
            for i, gi in zip(adapted, g):
                phi[i] = phi[i] - lr * gi
        total = total + Fn.mse_loss(mlp(phi, qx[t]), qy[t])
    loss = total / sx.shape[0]
    return loss, torch.autograd.grad(loss, p)


@pytest.mark.parametrize("cls, adapted", [(ANIL, [2, 3]), (BOIL, [0, 1])])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("batching", ["loop", "vmap"])
def test_meta_gradient_matches_unrolled_reference(cls, adapted, first_order, batching):
    model = tiny()
    learner = cls(model, inner_lr=0.3, inner_steps=2, first_order=first_order, batching=batching)
    data = batch()
    loss, grads = grads_of(learner, *data)
    ref_loss, ref = reference(model, adapted, *data, lr=0.3, steps=2, first_order=first_order)
    torch.testing.assert_close(loss, ref_loss)
    assert_close_all(grads, ref, what="grads")


def test_default_head_and_explicit_head():
    model = tiny()
    assert ANIL(model).adapt_names == ["2.weight", "2.bias"]
    assert BOIL(model).adapt_names == ["0.weight", "0.bias"]
    assert ANIL(model, head="0").adapt_names == ["0.weight", "0.bias"]
    assert BOIL(model, head="*.bias").adapt_names == ["0.weight", "2.weight"]


def test_bad_head_is_named():
    with pytest.raises(ValueError, match="head: 'fc'"):
        ANIL(tiny(), head="fc")
    with pytest.raises(ValueError, match="BOIL needs a body"):
        BOIL(tiny(), head=["0", "2"])


def test_loop_and_vmap_agree():
    data = batch(tasks=4)
    out = []
    for batching in ("loop", "vmap"):
        out.append(grads_of(ANIL(tiny(), inner_lr=0.2, inner_steps=3, batching=batching), *data)[1])
    assert_close_all(out[0], out[1], what="loop vs vmap")


@pytest.mark.parametrize("cls", [ANIL, BOIL])
def test_learns_sine(cls):
    lr = 0.01 if cls is BOIL else 0.05
    learner = cls(sine_net(), inner_lr=lr, inner_steps=5, batching="vmap")
    pre, post = learns(learner)
    assert post <= 0.5 * pre, (pre, post)


@pytest.mark.parametrize("cls", [ANIL, BOIL])
def test_second_order_hvp_matches_autograd(cls):
    data = batch()
    grads = [grads_of(cls(tiny(), inner_lr=0.3, inner_steps=2, batching="loop", second_order=mode), *data)[1]
             for mode in ("autograd", "hvp")]
    assert_close_all(grads[1], grads[0], what=f"{cls.__name__} hvp vs autograd")


def test_fomaml_keeps_second_order():
    from fastmaml import FOMAML
    assert FOMAML(tiny(), second_order="autograd").second_order == "autograd"
    with pytest.raises(ValueError, match="needs first_order=False"):
        FOMAML(tiny(), second_order="hvp").meta_loss(*batch(), Fn.mse_loss)
