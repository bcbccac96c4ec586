"""second_order="hvp" (fastmaml/execution/hvp_mode.py): the same meta-gradient as unrolled
autograd, in float64, for MAML and Meta-SGD."""

import copy

import pytest
import torch
import torch.nn.functional as F

from fastmaml import MAML, MAMLpp, MetaSGD
from tests.models import image_tasks, regression_tasks, tiny_cnn, tiny_mlp

CASES = {
    "mlp": (tiny_mlp, regression_tasks, F.mse_loss, ["0.weight", "0.bias"]),
    "cnn-bn": (tiny_cnn, image_tasks, F.cross_entropy, ["4.weight"]),
}


def _meta_grads(learner, batch, loss_fn):
    learner.zero_grad()
    loss = learner.meta_loss(*batch, loss_fn)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in learner.named_parameters()}


def _pair(cls, make, adapt_names, batching, **kwargs):
    base = make()
    ref = cls(copy.deepcopy(base), inner_lr=0.1, inner_steps=3, adapt_names=adapt_names, batching=batching, **kwargs)
    hvp = cls(copy.deepcopy(base), inner_lr=0.1, inner_steps=3, adapt_names=adapt_names, batching=batching, **kwargs)
    hvp.second_order = "hvp"
    if cls is MetaSGD:  # distinct learned rates, the same in both
        with torch.no_grad():
            for a, b in zip(ref.lrs.values(), hvp.lrs.values()):
                a.uniform_(0.05, 0.15, generator=torch.Generator().manual_seed(a.numel()))
                b.copy_(a)
    return ref, hvp


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("cls,kwargs", [(MAML, {}), (MetaSGD, {}), (MetaSGD, {"per": "layer"})],
                         ids=["maml", "metasgd", "metasgd-layer"])
@pytest.mark.parametrize("subset", [False, True], ids=["all", "adapt_names"])
def test_equals_unrolled_autograd(case, cls, kwargs, subset):
    make, tasks, loss_fn, names = CASES[case]
    ref, hvp = _pair(cls, make, names if subset else None, "vmap", **kwargs)
    batch = tasks()
    loss_ref, g_ref = _meta_grads(ref, batch, loss_fn)
    loss_hvp, g_hvp = _meta_grads(hvp, batch, loss_fn)
    torch.testing.assert_close(loss_hvp, loss_ref, atol=1e-12, rtol=0)
    assert set(g_hvp) == set(g_ref)
    for n in g_ref:
        torch.testing.assert_close(g_hvp[n], g_ref[n], atol=1e-8, rtol=0, msg=lambda m, n=n: f"{n}: {m}")
    for (n, a), (_, b) in zip(ref.module.named_buffers(), hvp.module.named_buffers()):
        torch.testing.assert_close(b, a, atol=1e-12, rtol=0, msg=lambda m, n=n: f"buffer {n}: {m}")


def test_task_loop_and_hvp_loop_method():
    """batching="loop" and HVPs by double backward give the same meta-gradient."""
    ref, hvp = _pair(MetaSGD, tiny_mlp, None, "loop")
    hvp.hvp_method = "loop"
    batch = regression_tasks()
    _, g_ref = _meta_grads(ref, batch, F.mse_loss)
    _, g_hvp = _meta_grads(hvp, batch, F.mse_loss)
    assert hvp.batching_used == "loop"
    for n in g_ref:
        torch.testing.assert_close(g_hvp[n], g_ref[n], atol=1e-8, rtol=0)


def test_constructor_argument_and_evaluation():
    maml = MAML(tiny_mlp(), inner_lr=0.1, inner_steps=2, second_order="hvp")
    assert maml.second_order == "hvp"
    batch = regression_tasks()
    with torch.no_grad():  # evaluation takes the ordinary path, no graph
        loss = maml.meta_loss(*batch, F.mse_loss)
    assert not loss.requires_grad
    with pytest.raises(ValueError, match="second_order must be one of"):
        MAML(tiny_mlp(), second_order="fast")


def test_refuses_what_it_does_not_cover():
    batch = regression_tasks()
    fo = MAML(tiny_mlp(), first_order=True, second_order="hvp")
    with pytest.raises(ValueError, match="needs first_order=False"):
        fo.meta_loss(*batch, F.mse_loss)
    pp = MAMLpp(tiny_mlp(), inner_steps=2)
    pp.second_order = "hvp"
    with pytest.raises(ValueError, match="supports MAML and Meta-SGD"):
        pp.meta_loss(*batch, F.mse_loss)
