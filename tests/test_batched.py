"""The task-batched fast path (fastmaml/execution/batched/) against the task loop, in float64."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastmaml
from fastmaml.execution.batched import layers, plan, run
from tests.models import image_tasks, regression_tasks, tiny_cnn, tiny_mlp

LR = 0.3


def pool_cnn() -> nn.Module:
    """Conv-4-like: grouped conv, tracked batch norm, pooling, dropout (p=0), two linear layers."""
    torch.manual_seed(5)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.LeakyReLU(0.1), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False), nn.BatchNorm2d(4, affine=False), nn.ELU(),
        nn.AvgPool2d(3), nn.Identity(), nn.Dropout(0.0), nn.Flatten(),
        nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Sigmoid(), nn.Linear(6, 3),
    ).double()


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(6)
        self.inp = nn.Linear(2, 8)
        self.body = nn.Sequential(nn.Linear(8, 8), nn.Tanh())
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        return self.head(h + self.body(h))


CASES = {
    "mlp": (tiny_mlp, regression_tasks, F.mse_loss),
    "residual": (lambda: Residual().double(), regression_tasks, F.mse_loss),
    "cnn_bn": (tiny_cnn, image_tasks, F.cross_entropy),
    "cnn_pool": (pool_cnn, image_tasks, F.cross_entropy),
}


def _conv4():
    from fastmaml.models import conv4

    torch.manual_seed(7)
    return conv4(n_way=3, hidden=4, image_size=16).double()


def _conv4_tasks():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(3, 6, 1, 16, 16, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (3, 6), generator=g)
    return x, y, x.flip(1), y.flip(1)


CASES["conv4"] = (_conv4, _conv4_tasks, F.cross_entropy)


def meta_grad(learner, losses_of, batch, loss_fn):
    loss = losses_of(learner, batch, loss_fn)
    return loss, torch.autograd.grad(loss, [p for p in learner.parameters() if p.requires_grad])


def loop_loss(learner, batch, loss_fn):
    learner.batching = "loop"
    return learner.meta_loss(*batch, loss_fn)


def batched_loss(learner, batch, loss_fn):
    return run.task_losses(learner, *batch, loss_fn).mean()


def assert_same(learner_of, data, loss_fn):
    batch = data()
    a = learner_of()
    loss, grads = meta_grad(a, loop_loss, batch, loss_fn)
    b = learner_of()
    b_loss, b_grads = meta_grad(b, batched_loss, batch, loss_fn)
    torch.testing.assert_close(b_loss, loss, rtol=1e-10, atol=1e-12)
    names = [n for n, p in a.named_parameters() if p.requires_grad]
    for name, g, e in zip(names, b_grads, grads):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")
    return a, b


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("first_order", [False, True])
def test_matches_loop(case, steps, first_order):
    make, data, loss_fn = CASES[case]
    model = make()
    assert plan.supports(model), plan.why_not(model)
    assert_same(lambda: fastmaml.MAML(model, inner_lr=LR, inner_steps=steps, first_order=first_order),
                data, loss_fn)


@pytest.mark.parametrize("case", ["mlp", "cnn_pool"])
def test_adapt_names_subset(case):
    make, data, loss_fn = CASES[case]
    model = make()
    names = list(dict(model.named_parameters()))
    subset = [names[0], names[-1]]  # a weight and a bias, the other layers fixed in the inner loop
    assert_same(lambda: fastmaml.MAML(model, inner_lr=LR, inner_steps=2, adapt_names=subset), data, loss_fn)


@pytest.mark.parametrize("per", ["element", "layer"])
@pytest.mark.parametrize("first_order", [False, True])
def test_meta_sgd_rates(per, first_order):
    MetaSGD = getattr(fastmaml, "MetaSGD", None)
    if MetaSGD is None:
        pytest.skip("no MetaSGD")
    model = tiny_mlp()
    assert_same(lambda: MetaSGD(model, inner_lr=LR, inner_steps=2, first_order=first_order, per=per),
                regression_tasks, F.mse_loss)


def test_any_loss_fn_through_vmap():
    def huber(out, y):
        return F.smooth_l1_loss(out, y, beta=0.5) + 0.1 * out.abs().mean()

    model = tiny_mlp()
    assert_same(lambda: fastmaml.MAML(model, inner_lr=LR, inner_steps=2), regression_tasks, huber)


@pytest.mark.parametrize("loss_fn", [F.cross_entropy, nn.CrossEntropyLoss(), nn.CrossEntropyLoss(ignore_index=1)],
                         ids=["function", "module", "module-ignore-1"])
def test_cross_entropy_ignores_what_the_loss_ignores(loss_fn):
    """Targets equal to ignore_index (-100 by default, in support and query labels) count in
    neither the sum nor the mean, as F.cross_entropy task by task has it (issue #20)."""
    ignore = getattr(loss_fn, "ignore_index", -100)

    def data():
        sx, sy, qx, qy = image_tasks()
        sy, qy = sy.clone(), qy.clone()
        sy[0, :2] = ignore
        qy[1, ::2] = ignore
        return sx, sy, qx, qy

    assert_same(lambda: fastmaml.MAML(tiny_cnn(), inner_lr=LR, inner_steps=2), data, loss_fn)


def test_mse_with_targets_of_another_shape_broadcasts_as_f_mse_loss():
    """[T, N] targets against [T, N, 1] outputs: F.mse_loss broadcasts per task (with its warning);
    the batched MSE must give the loop's numbers, also when T == N (issue #20)."""
    def data():
        sx, sy, qx, qy = regression_tasks(tasks=5, support=5, query=5)
        return sx, sy[..., 0], qx, qy[..., 0]

    with pytest.warns(UserWarning, match="target size"):
        assert_same(lambda: fastmaml.MAML(tiny_mlp(), inner_lr=LR, inner_steps=2), data, F.mse_loss)


def test_zero_steps_and_unused_param():
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    assert_same(lambda: fastmaml.MAML(model, inner_lr=LR, inner_steps=0), regression_tasks, F.mse_loss)


def test_running_stats_updated_with_the_task_mean():
    """Tracked BatchNorm statistics: per-task updates, the module keeps their mean (as vmap)."""
    model = pool_cnn()
    batch = image_tasks()
    vm = fastmaml.MAML(model, inner_lr=LR, inner_steps=2, batching="vmap")
    start = {n: b.clone() for n, b in model.named_buffers()}
    vm.meta_loss(*batch, F.cross_entropy)
    expected = {n: b.clone() for n, b in model.named_buffers()}
    with torch.no_grad():
        for n, b in model.named_buffers():
            b.copy_(start[n])
    run.task_losses(fastmaml.MAML(model, inner_lr=LR, inner_steps=2), *batch, F.cross_entropy)
    tasks = batch[0].shape[0]
    for n, b in model.named_buffers():
        if n.endswith("num_batches_tracked"):  # counted as in the loop: one batch per task and forward
            assert b.item() == start[n].item() + 3 * tasks, n  # 2 support forwards and 1 query
            continue
        torch.testing.assert_close(b, expected[n], rtol=1e-10, atol=1e-12, msg=lambda m, n=n: f"{n}: {m}")


def test_eval_mode_uses_running_stats():
    model = pool_cnn()
    batch = image_tasks()
    model.eval()
    assert_same(lambda: fastmaml.MAML(model, inner_lr=LR, inner_steps=2), lambda: batch, F.cross_entropy)


def test_forward_matches_per_task_model():
    model = pool_cnn().eval()
    x = torch.randn(4, 5, 1, 6, 6, dtype=torch.float64)
    params = {n: p.detach() + 0.1 * torch.randn(4, *p.shape, dtype=p.dtype) for n, p in model.named_parameters()}
    buffers = {n: b.unsqueeze(0).expand(4, *b.shape).clone() for n, b in model.named_buffers()}
    out = layers.forward(model, params, x, buffers)
    for t in range(4):
        expected = torch.func.functional_call(model, {n: p[t] for n, p in params.items()}, (x[t],))
        torch.testing.assert_close(out[t], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("model, reason", [
    (nn.Sequential(nn.Linear(2, 2), nn.LSTM(2, 2)), "LSTM"),
    (nn.Sequential(nn.Conv2d(1, 1, 3, padding_mode="reflect", padding=1)), "padding_mode"),
    (nn.Sequential(nn.Flatten(0)), "example dimension"),
])
def test_unsupported_models_say_why(model, reason):
    assert not plan.supports(model)
    assert reason in plan.why_not(model)


def test_hooks_and_control_flow_are_refused():
    model = nn.Sequential(nn.Linear(2, 2))
    model[0].register_forward_hook(lambda m, i, o: o * 2)
    assert "hooks" in plan.why_not(model)

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x):
            return self.lin(x) if x.sum() > 0 else x

    assert "fx" in plan.why_not(Branchy())
    with pytest.raises(ValueError, match="not supported"):
        run.task_losses(fastmaml.MAML(Branchy()), *regression_tasks(), F.mse_loss)


def test_learners_overriding_a_replaced_hook_are_refused():
    assert run.why_not_learner(fastmaml.MAML(tiny_mlp())) is None

    class Custom(fastmaml.MAML):
        def task_forward(self, params, x, buffers, step):
            return super().task_forward(params, x, buffers, step)

    assert "overrides task_forward" in run.why_not_learner(Custom(tiny_mlp()))


def test_a_loss_that_is_not_a_scalar_is_refused():
    """loop and vmap fail on a non-scalar loss (autograd needs a scalar); the batched mode says so."""
    with pytest.raises(ValueError, match="loss_fn must return one number per task"):
        run.task_losses(fastmaml.MAML(tiny_mlp(), inner_lr=LR), *regression_tasks(), lambda out, y: (out - y).abs())
