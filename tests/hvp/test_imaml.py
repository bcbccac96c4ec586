"""IMAML: the implicit meta-gradient against a dense-Hessian solve in float64, its inner optimizers,
and learning on the sine family."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from fastmaml.algorithms.imaml import IMAML
from fastmaml.execution.taskmap import TaskMap
from fastmaml.tasks.sine import SineTasks
from tests.models import cnn_forward, image_tasks, regression_tasks, tiny_cnn, tiny_mlp


def _dense_meta_grad(im, batch, lam):
    """sum_t / T of (I + H_t / lam)^{-1} grad L_q at the inner solution, from dense Hessians; fixed
    (non-adapted) params get dL_q/dtheta_f - H_{f,a} x / lam."""
    model = im.module
    theta = dict(model.named_parameters())
    sx, sy, qx, qy = batch
    phi = im.solve_inner(TaskMap(im.module, True), theta, sx, sy, F.mse_loss, {})
    names = list(theta)
    shapes = [theta[n].shape for n in names]

    def unflat(f):
        parts = torch.split(f, [s.numel() for s in shapes])
        return {n: x.view(s) for n, x, s in zip(names, parts, shapes)}

    idx = torch.cat([torch.full((theta[n].numel(),), n in phi) for n in names])
    T = sx.shape[0]
    total = 0
    for t in range(T):
        flat = torch.cat([(phi[n][t] if n in phi else theta[n]).detach().flatten() for n in names])
        H = torch.autograd.functional.hessian(lambda f, t=t: F.mse_loss(functional_call(model, unflat(f), (sx[t],)), sy[t]), flat)
        gq = torch.autograd.functional.jacobian(lambda f, t=t: F.mse_loss(functional_call(model, unflat(f), (qx[t],)), qy[t]),
                                                flat)
        x = torch.linalg.solve(torch.eye(int(idx.sum()), dtype=H.dtype) + H[idx][:, idx] / lam, gq[idx])
        full = torch.empty_like(flat)
        full[idx] = x
        full[~idx] = gq[~idx] - H[~idx][:, idx] @ x / lam
        total = total + full / T
    return unflat(total)


@pytest.mark.parametrize("optimizer", [None, torch.optim.Adam], ids=["fused-sgd", "adam"])
@pytest.mark.parametrize("subset", [False, True], ids=["all", "adapt_names"])
def test_matches_dense_hessian_solve(optimizer, subset):
    lam = 2.0
    names = ["0.weight", "0.bias", "4.weight"] if subset else None
    im = IMAML(tiny_mlp(), lam=lam, inner_lr=0.05, inner_steps=15, inner_optimizer=optimizer, cg_steps=60,
               cg_tol=1e-12, adapt_names=names, batching="vmap")
    batch = regression_tasks()
    im.zero_grad()
    loss = im.meta_loss(*batch, F.mse_loss)
    loss.backward()
    assert im.last_cg_report.all_converged
    expected = _dense_meta_grad(im, batch, lam)
    for n, p in im.module.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], atol=1e-10, rtol=1e-8, msg=lambda m, n=n: f"{n}: {m}")


def test_loss_value_is_the_query_loss_after_adaptation():
    im = IMAML(tiny_mlp(), lam=1.0, inner_lr=0.05, inner_steps=5, batching="loop")
    sx, sy, qx, qy = regression_tasks()
    loss = im.meta_loss(sx, sy, qx, qy, F.mse_loss, reduction="sum")
    expected = 0
    for t in range(sx.shape[0]):
        phi = im.adapt(sx[t], sy[t], F.mse_loss)
        expected = expected + F.mse_loss(im(qx[t], phi), qy[t])
    torch.testing.assert_close(loss.detach(), expected.detach(), atol=1e-12, rtol=1e-12)
    with torch.no_grad():
        assert not im.meta_loss(sx, sy, qx, qy, F.mse_loss).requires_grad


def test_optimizer_factory_and_errors():
    im = IMAML(tiny_mlp(), inner_steps=2, inner_optimizer=lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9))
    im.meta_loss(*regression_tasks(), F.mse_loss).backward()
    with pytest.raises(ValueError, match="lam must be a finite number > 0"):
        IMAML(tiny_mlp(), lam=0.0)
    with pytest.raises(TypeError, match="inner_optimizer must be None"):
        IMAML(tiny_mlp(), inner_optimizer="adam")
    with pytest.raises(ValueError, match="on_cg_fail must be one of"):
        IMAML(tiny_mlp(), on_cg_fail="never")


def test_cg_budget_shortfall_is_reported():
    im = IMAML(tiny_mlp(), lam=0.01, inner_steps=2, cg_steps=1, cg_tol=1e-12, on_cg_fail="warn")
    with pytest.warns(RuntimeWarning, match="not converged"):
        im.meta_loss(*regression_tasks(), F.mse_loss).backward()
    assert not im.last_cg_report.all_converged


def test_learns_on_sine():
    """A short meta-training run at the defaults: post-adaptation MSE at most half the pre-adaptation MSE."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1, 40), torch.nn.ReLU(), torch.nn.Linear(40, 40), torch.nn.ReLU(),
                                torch.nn.Linear(40, 1))
    im = IMAML(model, on_cg_fail="ignore", on_inner_fail="ignore", batching="vmap")
    opt = torch.optim.Adam(im.parameters(), lr=3e-3)
    tasks = SineTasks(k_shot=10, q_query=10, seed=0)
    for _ in range(200):
        opt.zero_grad()
        im.meta_loss(*tasks.sample(8).tensors(), F.mse_loss).backward()
        opt.step()
    test = SineTasks(k_shot=10, q_query=50, seed=123).sample(20)
    sx, sy, qx, qy = test.tensors()
    with torch.no_grad():
        pre = torch.stack([F.mse_loss(im(qx[t]), qy[t]) for t in range(20)]).mean()
        post = im.meta_loss(sx, sy, qx, qy, F.mse_loss)
    assert post <= 0.5 * pre, f"post-adaptation MSE {post:.3f} vs pre-adaptation {pre:.3f}"


def test_inner_report_is_the_proximal_gradient_norm():
    """last_inner_report: ||grad L_s(phi_t) + lam (phi_t - theta)|| / ||grad L_s(theta)|| per task, by hand."""
    lam = 2.0
    im = IMAML(tiny_mlp(), lam=lam, inner_lr=0.05, inner_steps=3, batching="vmap", on_inner_fail="ignore")
    sx, sy, qx, qy = regression_tasks()
    im.meta_loss(sx, sy, qx, qy, F.mse_loss)
    report = im.last_inner_report
    theta = dict(im.module.named_parameters())
    for t in range(sx.shape[0]):
        phi = {n: p.detach().clone().requires_grad_() for n, p in im.adapt(sx[t], sy[t], F.mse_loss).items()}
        g = torch.autograd.grad(F.mse_loss(functional_call(im.module, phi, (sx[t],)), sy[t]), list(phi.values()))
        g0 = torch.autograd.grad(F.mse_loss(im.module(sx[t]), sy[t]), list(theta.values()))
        res = torch.sqrt(sum(((gi + lam * (phi[n] - theta[n])) ** 2).sum() for gi, n in zip(g, phi)))
        start = torch.sqrt(sum((gi ** 2).sum() for gi in g0))
        torch.testing.assert_close(report.residual_norm[t], res.detach())
        torch.testing.assert_close(report.start_norm[t], start)
    assert torch.equal(report.stationary, report.relative_residual <= im.inner_tol)


def test_inner_report_on_a_batch_norm_cnn():
    """The same residual on a conv net with batch norm (batch statistics, as Conv-4), by hand with
    cnn_forward and a hand-written proximal gradient descent: the report is right where BN couples
    the examples and the buffers are per-task copies."""
    lam, lr, steps = 5.0, 0.05, 4
    im = IMAML(tiny_cnn(), lam=lam, inner_lr=lr, inner_steps=steps, batching="loop", on_inner_fail="ignore",
               on_cg_fail="ignore")
    sx, sy, qx, qy = image_tasks()
    im.meta_loss(sx, sy, qx, qy, F.cross_entropy)
    report = im.last_inner_report
    theta = [p.detach() for p in im.module.parameters()]

    def grad(p, t):
        p = [q.clone().requires_grad_() for q in p]
        return torch.autograd.grad(F.cross_entropy(cnn_forward(p, sx[t]), sy[t]), p)

    for t in range(sx.shape[0]):
        phi = theta
        for _ in range(steps):
            phi = [q - lr * (g + lam * (q - q0)) for q, g, q0 in zip(phi, grad(phi, t), theta)]
        res = torch.sqrt(sum(((g + lam * (q - q0)) ** 2).sum() for q, g, q0 in zip(phi, grad(phi, t), theta)))
        start = torch.sqrt(sum((g ** 2).sum() for g in grad(theta, t)))
        torch.testing.assert_close(report.residual_norm[t], res)
        torch.testing.assert_close(report.start_norm[t], start)


def test_unsolved_inner_problem_warns():
    im = IMAML(tiny_mlp(), inner_steps=0)
    with pytest.warns(RuntimeWarning, match="0 of 3 tasks stationary"):
        im.meta_loss(*regression_tasks(), F.mse_loss)
    with pytest.raises(ValueError, match="on_inner_fail must be one of"):
        IMAML(tiny_mlp(), on_inner_fail="never")


def test_defaults_converge_on_sine_at_initialisation():
    """The defaults' claim (docs/imaml.md, "Defaults"): CG converges and the inner problem is
    stationary on >= 90% of 25 sine tasks at the MLP's initialisation."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1, 40), torch.nn.ReLU(), torch.nn.Linear(40, 40), torch.nn.ReLU(),
                                torch.nn.Linear(40, 1))
    im = IMAML(model, on_cg_fail="ignore", on_inner_fail="ignore", batching="vmap")
    im.meta_loss(*SineTasks(k_shot=10, q_query=10, seed=0).sample(25).tensors(), F.mse_loss).backward()
    assert int(im.last_cg_report.converged.sum()) >= 23, im.last_cg_report.summary()
    assert int(im.last_inner_report.stationary.sum()) >= 23, im.last_inner_report.summary()


def test_defaults_are_per_kind_of_model():
    """lam and cg_damping left at None: DEFAULTS["conv"] for a model with a convolution (Conv-4),
    DEFAULTS["mlp"] otherwise; a value given wins."""
    from fastmaml.algorithms.imaml import DEFAULTS
    from fastmaml.models import conv4

    assert DEFAULTS["conv"] != DEFAULTS["mlp"]
    for model, kind in ((conv4(5, hidden=4), "conv"), (tiny_cnn(), "conv"), (tiny_mlp(), "mlp")):
        im = IMAML(model)
        assert (im.lam, im.cg_damping) == (DEFAULTS[kind]["lam"], DEFAULTS[kind]["cg_damping"]), kind
    im = IMAML(conv4(5, hidden=4), lam=3.0, cg_damping=0.0)
    assert (im.lam, im.cg_damping) == (3.0, 0.0)


def _prox_objective(model, theta, flat_phi, x, y, lam, unflat):
    return F.mse_loss(functional_call(model, unflat(flat_phi), (x,)), y) + 0.5 * lam * (flat_phi - theta).pow(2).sum()


def _flat_helpers(model):
    theta = dict(model.named_parameters())
    names, shapes = list(theta), [p.shape for p in theta.values()]

    def unflat(f):
        return {n: v.view(s) for n, v, s in zip(names, torch.split(f, [s.numel() for s in shapes]), shapes)}

    return torch.cat([p.detach().flatten() for p in theta.values()]), unflat


def test_inner_descent_undoes_steps_that_raise_the_objective():
    """At inner_lr 1 plain gradient descent on the proximal objective diverges (the sine NaNs of
    docs/imaml.md, "Training stability"); the safeguarded descent undoes a task's step that raised its
    objective and halves its rate. Against a hand-written float64 loop, task by task; then the
    meta-gradient at that inner solution against the dense solve."""
    lam, lr, steps = 2.0, 1.0, 8
    im = IMAML(tiny_mlp(), lam=lam, inner_lr=lr, inner_steps=steps, cg_steps=60, cg_tol=1e-12, batching="vmap",
               on_inner_fail="ignore")
    batch = regression_tasks(tasks=4)
    sx, sy = batch[:2]
    theta, unflat = _flat_helpers(im.module)
    im.zero_grad()
    im.meta_loss(*batch, F.mse_loss).backward()
    rates = im.last_inner_report.inner_lr
    phi = im.solve_inner(TaskMap(im.module, True), dict(im.module.named_parameters()), sx, sy, F.mse_loss, {})
    for t in range(sx.shape[0]):
        def obj_grad(f, t=t):
            f = f.detach().requires_grad_()
            o = _prox_objective(im.module, theta, f, sx[t], sy[t], lam, unflat)
            return o.detach(), torch.autograd.grad(o, f)[0]

        point, rate, saved, plain = theta.clone(), lr, None, theta.clone()
        for _ in range(steps):
            o, g = obj_grad(point)
            if saved is not None and not o <= saved[2]:
                point, g, o, rate = saved[0], saved[1], saved[2], rate / 2
            saved = (point, g, o)
            point = point - rate * g
            plain = plain - lr * obj_grad(plain)[1]
        if not obj_grad(point)[0] <= saved[2]:
            point, rate = saved[0], rate / 2
        assert obj_grad(plain)[0] > obj_grad(theta)[0]          # unguarded, the objective rises
        assert obj_grad(point)[0] < obj_grad(theta)[0] and rate < lr
        got = torch.cat([phi[n][t].flatten() for n in phi])
        torch.testing.assert_close(got, point, atol=1e-12, rtol=1e-10)
        assert rates[t].item() == rate
    assert im.last_cg_report.all_converged
    expected = _dense_meta_grad(im, batch, lam)
    for n, p in im.module.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], atol=1e-10, rtol=1e-8, msg=lambda m, n=n: f"{n}: {m}")


def test_cg_breakdown_gives_a_finite_meta_gradient():
    """lam 0.3: I + H/lam is indefinite and CG breaks down on every task; each task contributes the CG
    iterate of smallest residual (NOTE: [cg breakdown]), checked against a hand-written float64 CG
    on the dense system; a meta-step later the loss is finite."""
    lam, cg_steps = 0.3, 20
    im = IMAML(tiny_mlp(), lam=lam, inner_lr=0.05, inner_steps=5, cg_steps=cg_steps, cg_tol=1e-12, batching="vmap",
               on_inner_fail="ignore", on_cg_fail="ignore")
    batch = regression_tasks(tasks=4)
    sx, sy, qx, qy = batch
    _, unflat = _flat_helpers(im.module)
    im.zero_grad()
    im.meta_loss(*batch, F.mse_loss).backward()
    assert im.last_cg_report.breakdown.all()
    phi = im.solve_inner(TaskMap(im.module, True), dict(im.module.named_parameters()), sx, sy, F.mse_loss, {})
    T, expected = sx.shape[0], 0
    for t in range(T):
        flat = torch.cat([phi[n][t].flatten() for n in phi])
        H = torch.autograd.functional.hessian(lambda f, t=t: F.mse_loss(functional_call(im.module, unflat(f), (sx[t],)), sy[t]), flat)
        gq = torch.autograd.functional.jacobian(lambda f, t=t: F.mse_loss(functional_call(im.module, unflat(f), (qx[t],)), qy[t]), flat)
        A = torch.eye(flat.numel(), dtype=flat.dtype) + H / lam
        x, r, p = torch.zeros_like(gq), gq.clone(), gq.clone()
        best, best_res = x, gq.norm()
        for _ in range(cg_steps):
            if not p @ A @ p > 0:
                break
            alpha = (r @ r) / (p @ A @ p)
            x, r_new = x + alpha * p, r - alpha * (A @ p)
            p, r = r_new + (r_new @ r_new) / (r @ r) * p, r_new
            if (A @ x - gq).norm() < best_res:
                best, best_res = x, (A @ x - gq).norm()
        expected = expected + best / T
    got = torch.cat([p.grad.flatten() for p in im.module.parameters()])
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-8)
    torch.optim.SGD(im.parameters(), lr=0.1).step()
    assert torch.isfinite(im.meta_loss(*batch, F.mse_loss))
