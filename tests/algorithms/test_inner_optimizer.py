"""MetaLearner(inner_optimizer=...): the meta-gradient of MAML with Adam / RMSprop / momentum in the
inner loop against the same inner loop written out with plain torch ops (float64), in the loop,
vmap and batched modes; the default ("sgd") unchanged bit for bit; the hvp mode refuses it by name."""

import pytest
import torch
import torch.nn.functional as Fn
from torch import nn
from torch.func import functional_call

import fastmaml
from fastmaml.ops.optim import InnerAdam, InnerRMSprop, InnerSGD

DT = torch.float64


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1)).to(DT)
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g, dtype=DT)  # noqa: E731
    return model, (r(3, 5, 2), r(3, 5, 1), r(3, 6, 2), r(3, 6, 1))


def _written_out(model, batch, make_torch_opt, steps, lr):
    """Each task: the inner loop with torch.optim's rule applied by hand, differentiably."""
    xs, ys, xq, yq = batch
    names = [n for n, _ in model.named_parameters()]
    total = 0
    for t in range(xs.shape[0]):
        params = list(model.parameters())
        state = make_torch_opt()
        for k in range(steps):
            loss = Fn.mse_loss(functional_call(model, dict(zip(names, params)), (xs[t],)), ys[t])
            grads = torch.autograd.grad(loss, params, create_graph=True)
            params = state(params, grads, k, lr)
        total = total + Fn.mse_loss(functional_call(model, dict(zip(names, params)), (xq[t],)), yq[t])
    return torch.autograd.grad(total / xs.shape[0], list(model.parameters()))


def adam_rule(b1=0.9, b2=0.999, eps=1e-8):
    m, v = {}, {}

    def step(params, grads, k, lr):
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            m[i] = b1 * m.get(i, torch.zeros_like(p)) + (1 - b1) * g
            v[i] = b2 * v.get(i, torch.zeros_like(p)) + (1 - b2) * (g * g)
            d = (m[i] / (1 - b1 ** (k + 1))) / ((v[i] / (1 - b2 ** (k + 1))).sqrt() + eps)
            out.append(p - lr * d)
        return out
    return step


def momentum_rule(mu=0.9):
    b = {}

    def step(params, grads, k, lr):
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            b[i] = g if i not in b else mu * b[i] + g
            out.append(p - lr * b[i])
        return out
    return step


def rms_rule(alpha=0.99, eps=1e-8):
    v = {}

    def step(params, grads, k, lr):
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            v[i] = alpha * v.get(i, torch.zeros_like(p)) + (1 - alpha) * (g * g)
            out.append(p - lr * g / (v[i].sqrt() + eps))
        return out
    return step


CASES = {"adam": ("adam", adam_rule), "momentum": ("momentum", momentum_rule), "rmsprop": ("rmsprop", rms_rule),
         "adam-object": (InnerAdam(betas=(0.8, 0.9), eps=1e-3), lambda: adam_rule(0.8, 0.9, 1e-3))}


@pytest.mark.parametrize("batching", ["loop", "vmap", "batched"])
@pytest.mark.parametrize("case", CASES)
def test_meta_gradient_equals_written_out(case, batching):
    choice, rule = CASES[case]
    model, batch = _setup()
    learner = fastmaml.MAML(model, inner_lr=0.05, inner_steps=3, batching=batching, inner_optimizer=choice)
    got = torch.autograd.grad(learner.meta_loss(*batch, Fn.mse_loss), list(model.parameters()))
    want = _written_out(model, batch, rule, 3, 0.05)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_default_is_plain_sgd_bit_for_bit():
    model, batch = _setup()
    plain = fastmaml.MAML(model, inner_lr=0.05, inner_steps=2, batching="loop")
    named = fastmaml.MAML(model, inner_lr=0.05, inner_steps=2, batching="loop", inner_optimizer=InnerSGD())
    assert plain.inner_optimizer is None and named.inner_optimizer is None
    a = torch.autograd.grad(plain.meta_loss(*batch, Fn.mse_loss), list(model.parameters()))
    b = torch.autograd.grad(named.meta_loss(*batch, Fn.mse_loss), list(model.parameters()))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_refusals_name_the_choice():
    model, _ = _setup()
    with pytest.raises(ValueError, match="inner_optimizer must be one of"):
        fastmaml.MAML(model, inner_optimizer="adagrad")
    learner = fastmaml.MAML(model, inner_optimizer=InnerRMSprop(), second_order="hvp")
    with pytest.raises(Exception, match="inner_optimizer"):
        learner.meta_loss(*_setup()[1], Fn.mse_loss)
