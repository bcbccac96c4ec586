"""The learn2learn face's MAML with a stateful inner optimizer (fastmaml's extension): the
meta-gradient through two differentiable Adam steps against a hand-written float64 Adam."""

import torch
import torch.nn.functional as F

import fastmaml.compat.learn2learn as l2l


def hand_adam_meta_grad(model, x, y, qx, qy, lr, steps, betas=(0.9, 0.999), eps=1e-8):
    params = list(model.parameters())
    fast, m, v = params, [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    for t in range(1, steps + 1):
        loss = F.mse_loss(torch.func.functional_call(model, dict(zip(dict(model.named_parameters()), fast)), x), y)
        grads = torch.autograd.grad(loss, fast, create_graph=True)
        m = [betas[0] * mi + (1 - betas[0]) * g for mi, g in zip(m, grads)]
        v = [betas[1] * vi + (1 - betas[1]) * g * g for vi, g in zip(v, grads)]
        fast = [p - lr * (mi / (1 - betas[0] ** t)) / ((vi / (1 - betas[1] ** t)).sqrt() + eps)
                for p, mi, vi in zip(fast, m, v)]
    query = F.mse_loss(torch.func.functional_call(model, dict(zip(dict(model.named_parameters()), fast)), qx), qy)
    return torch.autograd.grad(query, params)


def test_adam_inner_steps_match_a_hand_written_adam_in_float64():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    x, y, qx, qy = (torch.randn(6, 3).double(), torch.randn(6, 1).double(), torch.randn(9, 3).double(),
                    torch.randn(9, 1).double())
    maml = l2l.algorithms.MAML(model, lr=0.05, inner_optimizer="adam")
    for _ in range(2):  # every clone starts its moments afresh: both tasks see the same meta-gradient
        learner = maml.clone()
        for _ in range(2):
            learner.adapt(F.mse_loss(learner(x), y))
        got = torch.autograd.grad(F.mse_loss(learner(qx), qy), list(model.parameters()))
        want = hand_adam_meta_grad(model, x, y, qx, qy, 0.05, 2)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    assert maml.inner_state is None and learner.inner_state is not None and learner.inner_state.count == 2


def test_default_is_learn2learns_sgd_and_a_bad_name_is_refused():
    model = torch.nn.Linear(2, 1)
    assert l2l.algorithms.MAML(model, lr=0.1).inner_optimizer is None
    try:
        l2l.algorithms.MAML(model, lr=0.1, inner_optimizer="adagrad")
    except ValueError as err:
        assert "inner_optimizer must be one of" in str(err)
    else:
        raise AssertionError("an unknown inner optimizer was accepted")
