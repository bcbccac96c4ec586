import pytest
import torch
import torch.nn.functional as Fn
from torch import nn

import fastmaml
from tests.algorithms._algo_helpers import assert_close_all, batch, tiny


def test_kata_verification_and_same_gradient_as_maml():
    model = tiny()
    sx, sy, qx, qy = (t[0] for t in batch(tasks=1))
    fast = fastmaml.maml_inner_update(model, sx, sy, Fn.mse_loss, 0.1)
    assert isinstance(fast, nn.Sequential) and fast is not model
    assert all(not isinstance(t, nn.Parameter) and t.requires_grad for t in (fast[0].weight, fast[2].bias))
    loss = fastmaml.maml_outer_update(model, fast, qx, qy, Fn.mse_loss)
    assert next(model.parameters()).grad is not None  # the kata's own check
    kata = [p.grad.clone() for p in model.parameters()]

    model.zero_grad()
    maml = fastmaml.MAML(model, inner_lr=0.1, inner_steps=1, batching="loop")
    ref = maml.meta_loss(sx[None], sy[None], qx[None], qy[None], Fn.mse_loss)
    ref.backward()
    torch.testing.assert_close(loss, ref.detach())
    assert_close_all(kata, [p.grad for p in model.parameters()], what="kata vs MAML")


def test_fast_model_is_the_adapted_model_and_original_unchanged():
    model = tiny()
    before = [p.detach().clone() for p in model.parameters()]
    sx, sy, qx, _ = (t[0] for t in batch(tasks=1))
    fast = fastmaml.maml_inner_update(model, sx, sy, Fn.mse_loss, 0.1)
    g = torch.autograd.grad(Fn.mse_loss(model(sx), sy), list(model.parameters()))
    phi = {n: p - 0.1 * gi for (n, p), gi in zip(model.named_parameters(), g)}
    torch.testing.assert_close(fast(qx), torch.func.functional_call(model, phi, (qx,)))
    assert_close_all([p.detach() for p in model.parameters()], before)


def test_outer_update_accumulates_over_tasks():
    model = tiny()
    data = batch(tasks=2)
    for t in range(2):
        fast = fastmaml.maml_inner_update(model, data[0][t], data[1][t], Fn.mse_loss, 0.1)
        fastmaml.maml_outer_update(model, fast, data[2][t], data[3][t], Fn.mse_loss)
    kata = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    (2 * fastmaml.MAML(model, inner_lr=0.1, batching="loop").meta_loss(*data, Fn.mse_loss)).backward()
    assert_close_all(kata, [p.grad for p in model.parameters()])


def test_bad_inputs_are_named():
    model = tiny()
    sx, sy, qx, qy = (t[0] for t in batch(tasks=1))
    with pytest.raises(ValueError, match="inner_lr"):
        fastmaml.maml_inner_update(model, sx, sy, Fn.mse_loss, -0.1)
    with pytest.raises(ValueError, match="support_x has 4 examples but support_y has 3"):
        fastmaml.maml_inner_update(model, sx, sy[:3], Fn.mse_loss, 0.1)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        fastmaml.maml_inner_update(lambda x: x, sx, sy, Fn.mse_loss, 0.1)
    with pytest.raises(ValueError, match="not connected"):
        fastmaml.maml_outer_update(model, tiny(seed=3).requires_grad_(False), qx, qy, Fn.mse_loss)
    with pytest.raises(ValueError, match="does not depend on original_model"):
        fastmaml.maml_outer_update(model, tiny(seed=3), qx, qy, Fn.mse_loss)


def test_inner_update_chains_and_equals_two_steps():
    model = tiny()
    sx, sy, qx, qy = (t[0] for t in batch(tasks=1))
    fast = fastmaml.maml_inner_update(model, sx, sy, Fn.mse_loss, 0.1)
    assert len(list(fast.parameters())) == 4
    fast2 = fastmaml.maml_inner_update(fast, sx, sy, Fn.mse_loss, 0.1)
    loss = fastmaml.maml_outer_update(model, fast2, qx, qy, Fn.mse_loss)
    kata = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ref = fastmaml.MAML(model, inner_lr=0.1, inner_steps=2, batching="loop").meta_loss(
        sx[None], sy[None], qx[None], qy[None], Fn.mse_loss)
    ref.backward()
    torch.testing.assert_close(loss, ref.detach())
    assert_close_all(kata, [p.grad for p in model.parameters()], what="chained kata vs 2-step MAML")


def test_inner_update_leaves_the_models_batch_norm_statistics_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 1)).double()
    before = {n: b.clone() for n, b in model.named_buffers()}
    sx, sy, qx, qy = (t[0] for t in batch(tasks=1))
    fast = fastmaml.maml_inner_update(model, sx, sy, Fn.mse_loss, 0.1)
    for n, b in model.named_buffers():
        assert torch.equal(b, before[n]), n
    assert not torch.equal(fast[1].running_mean, before["1.running_mean"])  # the copy's own statistics moved
    fastmaml.maml_outer_update(model, fast, qx, qy, Fn.mse_loss)
    assert all(p.grad is not None for p in model.parameters())
