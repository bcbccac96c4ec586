"""MAML/FOMAML meta-gradients against independent float64 computations."""

import pytest
import torch
import torch.nn.functional as F

import fastmaml
from tests.models import cnn_forward, image_tasks, mlp_forward, regression_tasks, tiny_cnn, tiny_mlp

CASES = {
    "mlp": (tiny_mlp, mlp_forward, regression_tasks, F.mse_loss),
    "cnn_bn": (tiny_cnn, cnn_forward, image_tasks, F.cross_entropy),
}
LR = 0.3


def unrolled_meta_loss(forward, theta, batch, loss_fn, steps, adapt=None, first_order=False):
    """Plain unrolled autograd: the definition of the MAML meta-loss, written independently."""
    sx, sy, qx, qy = batch
    adapt = range(len(theta)) if adapt is None else adapt
    losses = []
    for t in range(sx.shape[0]):
        phi = list(theta)
        for _ in range(steps):
            loss = loss_fn(forward(phi, sx[t]), sy[t])
            grads = torch.autograd.grad(loss, [phi[i] for i in adapt], create_graph=not first_order)
            for i, g in zip(adapt, grads):
                phi[i] = phi[i] - LR * g
        losses.append(loss_fn(forward(phi, qx[t]), qy[t]))
    return torch.stack(losses).mean()


def meta_grad(maml, batch, loss_fn):
    loss = maml.meta_loss(*batch, loss_fn)
    return loss, torch.autograd.grad(loss, list(maml.parameters()))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("batching", ["loop", "vmap"])
def test_second_order_matches_unrolled_autograd(case, steps, batching):
    make, forward, data, loss_fn = CASES[case]
    model = make()
    batch = data()
    maml = fastmaml.MAML(model, inner_lr=LR, inner_steps=steps, batching=batching)
    loss, grads = meta_grad(maml, batch, loss_fn)
    theta = list(model.parameters())
    expected_loss = unrolled_meta_loss(forward, theta, batch, loss_fn, steps)
    expected = torch.autograd.grad(expected_loss, theta)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-10, atol=1e-12)
    for name, g, e in zip(dict(model.named_parameters()), grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-11, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("case", CASES)
def test_second_order_matches_finite_differences(case):
    make, _, data, loss_fn = CASES[case]
    model = make()
    batch = data()
    maml = fastmaml.MAML(model, inner_lr=LR, inner_steps=2, batching="loop")
    _, grads = meta_grad(maml, batch, loss_fn)
    params = list(model.parameters())
    eps = 1e-6
    for trial in range(3):
        direction = [torch.randn_like(p) for p in params]
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(eps * d)
            plus = maml.meta_loss(*batch, loss_fn).item()
            for p, d in zip(params, direction):
                p.sub_(2 * eps * d)
            minus = maml.meta_loss(*batch, loss_fn).item()
            for p, d in zip(params, direction):
                p.add_(eps * d)
        numeric = (plus - minus) / (2 * eps)
        analytic = sum((g * d).sum() for g, d in zip(grads, direction)).item()
        assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-8), f"direction {trial}"


def test_finite_differences_see_the_second_order_term():
    """The check above can fail: the first-order gradient differs from the finite difference."""
    make, _, data, loss_fn = CASES["mlp"]
    model = make()
    batch = data()
    fo = fastmaml.MAML(model, inner_lr=LR, inner_steps=2, first_order=True, batching="loop")
    so = fastmaml.MAML(model, inner_lr=LR, inner_steps=2, batching="loop")
    _, g_fo = meta_grad(fo, batch, loss_fn)
    _, g_so = meta_grad(so, batch, loss_fn)
    assert max((a - b).abs().max().item() for a, b in zip(g_fo, g_so)) > 1e-4


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("batching", ["loop", "vmap"])
def test_first_order_is_the_query_gradient_at_the_adapted_params(case, steps, batching):
    make, forward, data, loss_fn = CASES[case]
    model = make()
    batch = data()
    maml = fastmaml.MAML(model, inner_lr=LR, inner_steps=steps, first_order=True, batching=batching)
    _, grads = meta_grad(maml, batch, loss_fn)
    sx, sy, qx, qy = batch
    expected = [torch.zeros_like(p) for p in model.parameters()]
    for t in range(sx.shape[0]):
        phi = [p.detach().clone().requires_grad_() for p in model.parameters()]
        for _ in range(steps):
            g = torch.autograd.grad(loss_fn(forward(phi, sx[t]), sy[t]), phi)
            phi = [(p - LR * gi).detach().requires_grad_() for p, gi in zip(phi, g)]
        q = torch.autograd.grad(loss_fn(forward(phi, qx[t]), qy[t]), phi)
        expected = [e + qi / sx.shape[0] for e, qi in zip(expected, q)]
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("first_order", [False, True])
def test_vmap_and_loop_agree(case, first_order):
    make, _, data, loss_fn = CASES[case]
    model = make()
    batch = data()
    out = {}
    for batching in ("loop", "vmap"):
        maml = fastmaml.MAML(model, inner_lr=LR, inner_steps=2, first_order=first_order, batching=batching)
        out[batching] = meta_grad(maml, batch, loss_fn)
        assert maml.batching_used == batching
    torch.testing.assert_close(out["loop"][0], out["vmap"][0], rtol=1e-12, atol=1e-12)
    for a, b in zip(out["loop"][1], out["vmap"][1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("batching", ["loop", "vmap"])
def test_adapt_names_restricts_adaptation_to_the_head(batching):
    make, forward, data, loss_fn = CASES["mlp"]
    model = make()
    batch = data()
    maml = fastmaml.MAML(model, inner_lr=LR, inner_steps=3, adapt_names=["4"], batching=batching)
    assert maml.adapt_names == ["4.weight", "4.bias"]
    phi = maml.adapt(batch[0][0], batch[1][0], loss_fn)
    for name, p in model.named_parameters():
        if name.startswith("4."):
            assert not torch.equal(phi[name], p), name
        else:
            assert phi[name] is p, f"{name} was adapted"
    loss, grads = meta_grad(maml, batch, loss_fn)
    theta = list(model.parameters())
    expected = torch.autograd.grad(unrolled_meta_loss(forward, theta, batch, loss_fn, 3, adapt=[4, 5]), theta)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-11)


def test_sum_reduction_is_tasks_times_mean():
    make, _, data, loss_fn = CASES["mlp"]
    maml = fastmaml.MAML(make(), inner_lr=LR)
    batch = data()
    mean = maml.meta_loss(*batch, loss_fn)
    total = maml.meta_loss(*batch, loss_fn, reduction="sum")
    torch.testing.assert_close(total, mean * batch[0].shape[0])


def test_auto_batching_reports_its_choice_and_keeps_state():
    model = tiny_cnn()
    batch = image_tasks()
    maml = fastmaml.MAML(model, inner_lr=LR, batching="auto")
    before = {n: b.clone() for n, b in model.named_buffers()}
    ref = fastmaml.MAML(tiny_cnn(), inner_lr=LR, batching="loop")
    loss = maml.meta_loss(*batch, F.cross_entropy)
    assert maml.batching_used in ("batched", "loop", "vmap")
    torch.testing.assert_close(loss, ref.meta_loss(*batch, F.cross_entropy))
    # the measurement's meta-steps did not touch the running statistics: one real step did
    after = dict(model.named_buffers())
    assert after["1.num_batches_tracked"].item() == before["1.num_batches_tracked"].item() + 2 * batch[0].shape[0]


def test_buffers_pass_through_unadapted():
    model = tiny_cnn()
    maml = fastmaml.MAML(model, inner_lr=LR, inner_steps=2)
    sx, sy, _, _ = image_tasks()
    phi = maml.adapt(sx[0], sy[0], F.cross_entropy)
    assert set(phi) == set(dict(model.named_parameters()))
    assert model[1].num_batches_tracked.item() == 2  # two support forwards, buffers updated as usual


def test_forward_with_and_without_params():
    model = tiny_mlp()
    maml = fastmaml.MAML(model, inner_lr=LR)
    x = torch.randn(4, 2, dtype=torch.float64)
    torch.testing.assert_close(maml(x), model(x))
    sx, sy, _, _ = regression_tasks()
    phi = maml.adapt(sx[0], sy[0], F.mse_loss)
    assert not torch.allclose(maml(x, phi), model(x))
