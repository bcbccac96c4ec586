"""The explicit gradients of Linear/ReLU chains (fastmaml/execution/chain.py) against the task loop and
finite differences, in float64; and the models, losses and data it must leave to autograd."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastmaml
from fastmaml.execution import chain as chain_mod
from fastmaml.execution.batched.plan import plan_of, supports
from fastmaml.ops import chain as chain_ops, native

pytestmark = pytest.mark.skipif(native.import_error is not None, reason=f"fastmaml._C not built: {native.import_error}")
LR = 0.3


class FunctionalRelu(nn.Module):
    """ReLU as a function (torch.relu) and as a method between Linear layers."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(2, 6), nn.Linear(6, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.c(self.b(torch.relu(self.a(x))).relu())


class FRelu(nn.Module):  # F.relu: fx records it with inplace=False
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(2, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.b(F.relu(self.a(x)))


def mlp(dims, bias=True, relu=True, last_relu=False):
    """Linear layers of widths `dims`, ReLU between them; `bias` a bool or one per layer."""
    biases = [bias] * (len(dims) - 1) if isinstance(bias, bool) else bias
    mods = []
    for d_in, d_out, b in zip(dims, dims[1:], biases):
        mods += [nn.Linear(d_in, d_out, bias=b)] + ([nn.ReLU()] if relu else [])
    if relu and not last_relu:
        mods.pop()
    return nn.Sequential(*mods)


CHAINS = {
    "sine": lambda: mlp((1, 8, 8, 1)),  # one input, one output: the outer-product and reduction forms
    "some_bias": lambda: mlp((2, 6, 5, 3), bias=(True, False, True)),
    "no_bias": lambda: mlp((3, 5, 2), bias=False),
    "linear_only": lambda: mlp((2, 4, 3), relu=False),
    "relu_last": lambda: mlp((2, 5, 2), last_relu=True),
    "width_one": lambda: mlp((2, 1, 3)),
    "functional_relu": FunctionalRelu,
    "F_relu": FRelu,
}


def make(name):
    torch.manual_seed(0)
    return CHAINS[name]().double() if name in CHAINS else name().double()


def tasks(model, tasks=4, support=6, query=5):
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    d_in, d_out = linears[0].in_features, linears[-1].out_features
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    return r(tasks, support, d_in), r(tasks, support, d_out), r(tasks, query, d_in), r(tasks, query, d_out)


def meta_grad(learner, batch, loss_fn, batching):
    learner.batching = batching
    loss = learner.meta_loss(*batch, loss_fn)
    return loss, torch.autograd.grad(loss, [p for p in learner.parameters() if p.requires_grad])


def assert_matches_loop(learner_of, batch, loss_fn=F.mse_loss):
    loss, grads = meta_grad(learner_of(), batch, loss_fn, "loop")
    b_loss, b_grads = meta_grad(learner_of(), batch, loss_fn, "batched")
    torch.testing.assert_close(b_loss, loss, rtol=1e-10, atol=1e-12)
    for g, e in zip(b_grads, grads):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def explicit_used(learner, batch, loss_fn=F.mse_loss) -> bool:
    return loss_fn is F.mse_loss and chain_mod.explicit(plan_of(learner.module).chain, *batch) is not None


@pytest.mark.parametrize("name", CHAINS)
@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("first_order", [False, True])
def test_chain_matches_loop(name, steps, first_order):
    model = make(name)
    batch = tasks(model)
    learner = lambda: fastmaml.MAML(model, inner_lr=LR, inner_steps=steps, first_order=first_order)
    assert explicit_used(learner(), batch)
    assert_matches_loop(learner, batch)


def test_meta_sgd_rates_and_adapt_names():
    model = make("sine")
    batch = tasks(model)
    assert_matches_loop(lambda: fastmaml.MetaSGD(model, inner_lr=LR, inner_steps=3), batch)
    subset = ["0.weight", "4.bias"]
    learner = lambda: fastmaml.MAML(model, inner_lr=LR, inner_steps=3, adapt_names=subset)
    assert explicit_used(learner(), batch)
    assert_matches_loop(learner, batch)


@pytest.mark.parametrize("model", [
    lambda: nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)),  # curvature in the activation
    lambda: nn.Sequential(nn.ReLU(), nn.Linear(2, 4), nn.Linear(4, 1)),  # ReLU before any Linear
    lambda: nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.ReLU(), nn.Linear(4, 1)),
    lambda: nn.Sequential(nn.Linear(2, 4), nn.Identity(), nn.Linear(4, 1)),
])
def test_other_models_fall_back_to_autograd(model):
    model = make(model)
    assert supports(model) and plan_of(model).chain is None
    batch = tasks(model)
    learner = lambda: fastmaml.MAML(model, inner_lr=LR, inner_steps=2)
    assert not explicit_used(learner(), batch)
    assert_matches_loop(learner, batch)


def test_other_losses_and_data_fall_back_to_autograd():
    model = make("sine")
    batch = tasks(model)
    learner = lambda: fastmaml.MAML(model, inner_lr=LR, inner_steps=2)
    l1 = nn.L1Loss()
    assert not explicit_used(learner(), batch, l1)
    assert_matches_loop(learner, batch, l1)
    sx, sy, qx, qy = batch
    assert not explicit_used(learner(), (sx, sy, qx, qy[..., 0]))  # targets not shaped like the output
    assert not explicit_used(learner(), (sx, sy.requires_grad_(), qx, qy))


def chain_op(chain, x, y, name="chain_loss_and_grad"):
    """The op as a function of the parameters (gradient order), its outputs flat."""
    op = getattr(torch.ops.fastmaml, name)

    def fn(*ps):
        out = op(x, y, *chain.split(ps), chain.flags)
        return out if isinstance(out, torch.Tensor) else (out[0], *out[1])
    return fn


def test_chain_ops_backward_against_finite_differences():
    """The ops' whole VJP (Hessian-vector product and the losses' own term) by gradcheck, and its
    own derivative (the recomputing backward) by gradgradcheck."""
    model = make("some_bias")
    chain = plan_of(model).chain
    sx, sy, _, _ = tasks(model)
    params = [p.detach().expand(sx.shape[0], *p.shape).clone().requires_grad_() for p in model.parameters()]
    fn = chain_op(chain, sx, sy)
    assert torch.autograd.gradcheck(fn, params)
    assert torch.autograd.gradcheck(chain_op(chain, sx, sy, "chain_loss"), params)
    small = [p[:2, :2] if p.dim() == 2 else p[:2, :2, :2] for p in params]  # 2 tasks, 2 units: cheap
    sfn = chain_op(chain_mod.Chain(chain.layers, 2, 2), sx[:2, :, :2], sy[:2, :, :2])
    assert torch.autograd.gradgradcheck(sfn, [p.detach().clone().requires_grad_() for p in small])
    # Some outputs unused (None cotangents) and no cotangent on the losses:
    _, gw, gb = fn(*params)[:3]
    got = torch.autograd.grad((gw * gw).sum() + gb.sum(), params, allow_unused=True)
    loss = F.mse_loss(torch.stack([torch.func.functional_call(model, dict(zip(dict(model.named_parameters()), p)), x)
                                   for *p, x in zip(*params, sx)]), sy, reduction="none").flatten(1).mean(1).sum()
    ew, eb = torch.autograd.grad(loss, params[:2], create_graph=True)
    want = torch.autograd.grad((ew * ew).sum() + eb.sum(), params, allow_unused=True)
    for g, e in zip(got, want):
        torch.testing.assert_close(g, torch.zeros_like(g) if e is None else e, rtol=1e-10, atol=1e-12)


def test_chain_ops_bad_input():
    model = make("some_bias")
    chain = plan_of(model).chain
    sx, sy, _, _ = tasks(model)
    ps = [p.detach().expand(sx.shape[0], *p.shape).clone() for p in model.parameters()]
    weights, biases = chain.split(ps)
    op = torch.ops.fastmaml.chain_loss_and_grad
    with pytest.raises(RuntimeError, match="layers has 2 entries but weights has 3"):
        op(sx, sy, weights, biases, chain.flags[:2])
    with pytest.raises(RuntimeError, match=r"biases\[1\] and layers\[1\] disagree"):
        op(sx, sy, weights, [biases[0], biases[0], biases[2]], chain.flags)
    with pytest.raises(RuntimeError, match=r"weights\[1\] must be \[4, out, 6\], got \[4, 5, 5\]"):
        op(sx, sy, [weights[0], weights[1][:, :, :5], weights[2]], biases, chain.flags)
    with pytest.raises(RuntimeError, match=r"biases\[2\] must be \[4, 3\]"):
        op(sx, sy, weights, [biases[0], None, biases[2][:, :2]], chain.flags)
    with pytest.raises(RuntimeError, match=r"y must be \[4, 6, 3\]"):
        op(sx, sy[..., :2], weights, biases, chain.flags)
    with pytest.raises(RuntimeError, match="x must be"):
        op(sx[0], sy, weights, biases, chain.flags)
    with pytest.raises(RuntimeError, match="x and y must not require grad"):
        op(sx.clone().requires_grad_(), sy, weights, biases, chain.flags)


@pytest.mark.parametrize("backend", ["reference", "foreach"])
def test_the_backend_choice_switches_the_chain_ops(backend):
    """use_backend obeys for the chain ops too: a backend the chain family lacks runs its reference
    (plain autograd), with the same meta-gradient as the loop."""
    model = make("sine")
    batch = tasks(model)
    learner = lambda: fastmaml.MAML(model, inner_lr=LR, inner_steps=2)
    assert chain_ops.resolve_backend(torch.device("cpu")) == "native"
    with fastmaml.use_backend(backend):
        assert chain_ops.resolve_backend(torch.device("cpu")) == "reference"
        assert explicit_used(learner(), batch)
        assert_matches_loop(learner, batch)


def test_third_order_through_the_meta_gradient():
    """create_graph on the meta-gradient: the backwards recompute with autograd on, so a function of
    the meta-gradient differentiates exactly as through the loop path."""
    model = make("sine")
    batch = tasks(model)
    out = []
    for batching in ("loop", "batched"):
        learner = fastmaml.MAML(model, inner_lr=LR, inner_steps=2, batching=batching)
        grads = torch.autograd.grad(learner.meta_loss(*batch, F.mse_loss), list(model.parameters()), create_graph=True)
        out.append(torch.autograd.grad(sum((g * g).sum() for g in grads), list(model.parameters())))
    for g, e in zip(*out[::-1]):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def test_chain_node_releases_what_it_saved():
    """A second backward through the ops' node without retain_graph raises, as for ATen's nodes."""
    model = make("sine")
    chain = plan_of(model).chain
    sx, sy, _, _ = tasks(model)
    params = [p.detach().expand(sx.shape[0], *p.shape).clone().requires_grad_() for p in model.parameters()]
    losses, *grads = chain_op(chain, sx, sy)(*params)
    total = losses.sum() + sum((g * g).sum() for g in grads)
    assert losses.grad_fn.name() == "ChainLossAndGradBackward"
    total.backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        total.backward()
