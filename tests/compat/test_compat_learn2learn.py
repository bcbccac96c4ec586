import pytest
import torch
from torch import nn

import fastmaml.compat.learn2learn as fl2l
from tests.compat._compat_helpers import (
    DT,
    MODELS,
    assert_rel,
    buffers,
    make,
    peer,
    reference_meta_grads,
    sgd_step,
    unrolled,
)

LR = 0.1


def maml_loop(MAML, kind, steps, first_order, lr=LR):
    """learn2learn's own usage: clone, adapt on the support loss, backward the query loss."""
    model, (xs, ys, xq, yq), loss_fn = make(kind)
    learner = MAML(model, lr=lr, first_order=first_order).clone()
    for _ in range(steps):
        learner.adapt(loss_fn(learner(xs), ys))
    loss_fn(learner(xq), yq).backward()
    return [p.grad for p in model.parameters()], model


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("kind", MODELS)
def test_maml_matches_unrolled(kind, steps, first_order):
    got, model = maml_loop(fl2l.MAML, kind, steps, first_order)
    want, ref_model = reference_meta_grads(kind, steps, first_order)
    assert_rel(got, want, "meta-gradient")
    # learn2learn's buffer rule: the clone updated the original model's running statistics in place
    assert_rel(buffers(model), buffers(ref_model), "buffers")


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("kind", MODELS)
def test_maml_matches_learn2learn(kind, steps, first_order):
    l2l = peer("learn2learn")
    want, peer_model = maml_loop(l2l.MAML, kind, steps, first_order)
    got, model = maml_loop(fl2l.MAML, kind, steps, first_order)
    assert_rel(got, want, "meta-gradient vs learn2learn")
    assert_rel(buffers(model), buffers(peer_model), "buffers vs learn2learn")


def metasgd_loop(MetaSGD, kind, steps, first_order):
    model, (xs, ys, xq, yq), loss_fn = make(kind)
    meta = MetaSGD(model, lr=LR, first_order=first_order)
    with torch.no_grad():  # distinct per-element rates, so a mix-up of rates shows
        for i, lr in enumerate(meta.lrs):
            lr.mul_(1 + 0.1 * torch.rand(lr.shape, generator=torch.Generator().manual_seed(i), dtype=DT))
    learner = meta.clone()
    for _ in range(steps):
        learner.adapt(loss_fn(learner(xs), ys))
    loss_fn(learner(xq), yq).backward()
    return [p.grad for p in model.parameters()] + [lr.grad for lr in meta.lrs], meta


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("kind", MODELS)
def test_metasgd_matches_unrolled(kind, steps, first_order):
    got, meta = metasgd_loop(fl2l.MetaSGD, kind, steps, first_order)
    model, task, loss_fn = make(kind)
    theta = list(model.parameters())
    lrs = [lr.detach().clone().requires_grad_() for lr in meta.lrs]

    def step(params, grads, state):
        return [p - a * g for p, a, g in zip(params, lrs, grads)]

    qloss, _ = unrolled(model, theta, task, loss_fn, steps, first_order, step)
    assert_rel(got, torch.autograd.grad(qloss, theta + lrs), "meta-gradient (params, then lrs)")


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("kind", MODELS)
def test_metasgd_matches_learn2learn(kind, steps, first_order):
    l2l = peer("learn2learn")
    want, _ = metasgd_loop(l2l.MetaSGD, kind, steps, first_order)
    got, _ = metasgd_loop(fl2l.MetaSGD, kind, steps, first_order)
    assert_rel(got, want, "meta-gradient vs learn2learn (params, then lrs)")


def test_clone_of_adapted_learner_keeps_the_graph():
    """clone() of an adapted learner starts from its adapted weights; gradients reach theta."""
    model, (xs, ys, xq, yq), loss_fn = make("mlp")
    learner = fl2l.MAML(model, lr=LR).clone()
    learner.adapt(loss_fn(learner(xs), ys))
    second = learner.clone()
    second.adapt(loss_fn(second(xs), ys))
    loss_fn(second(xq), yq).backward()
    want, _ = reference_meta_grads("mlp", 2, False)
    assert_rel([p.grad for p in model.parameters()], want, "meta-gradient")


def test_clone_leaves_the_model_and_other_clones_alone():
    model, (xs, ys, _, _), loss_fn = make("mlp")
    maml = fl2l.MAML(model, lr=LR)
    theta = [p.detach().clone() for p in model.parameters()]
    a, b = maml.clone(), maml.clone()
    a.adapt(loss_fn(a(xs), ys))
    assert all(isinstance(p, nn.Parameter) for p in model.parameters())
    assert_rel(model.parameters(), theta, "model after a clone adapted")
    assert_rel(b.parameters(), theta, "another clone")
    assert not any(isinstance(p, nn.Parameter) for p in a.parameters())


def test_adapt_on_the_wrapper_itself_rewrites_the_model_as_learn2learn_does():
    model, (xs, ys, xq, yq), loss_fn = make("mlp")
    theta = list(model.parameters())
    maml = fl2l.MAML(model, lr=LR)
    maml.adapt(loss_fn(maml(xs), ys))
    qloss, _ = unrolled(make("mlp")[0], theta, (xs, ys, xq, yq), loss_fn, 1, False, sgd_step(LR))
    assert_rel([loss_fn(maml(xq), yq)], [qloss], "query loss")


def test_tied_weights_stay_tied():
    torch.manual_seed(0)
    enc = nn.Linear(3, 3).to(DT)
    model = nn.Sequential(enc, nn.Tanh(), enc).to(DT)
    x, y = torch.randn(4, 3, dtype=DT), torch.randn(4, 3, dtype=DT)
    learner = fl2l.MAML(model, lr=LR).clone()
    learner.adapt(((learner(x) - y) ** 2).mean())
    assert learner.module[0].weight is learner.module[2].weight
    assert len(list(learner.parameters())) == 2


def test_allow_nograd_and_allow_unused():
    model, (xs, ys, _, _), loss_fn = make("mlp")
    model[0].weight.requires_grad_(False)
    frozen = model[0].weight
    with pytest.raises(RuntimeError, match="allow_nograd=True"):
        fl2l.MAML(model, lr=LR).clone().adapt(loss_fn(model(xs), ys))
    learner = fl2l.MAML(model, lr=LR, allow_nograd=True).clone()
    learner.adapt(loss_fn(learner(xs), ys))
    assert learner.module[0].weight is frozen
    assert learner.module[0].bias is not model[0].bias

    model, (xs, ys, _, _), loss_fn = make("mlp")
    learner = fl2l.MAML(model, lr=LR, allow_unused=True).clone()
    learner.adapt(loss_fn(learner.module[:2](xs).sum(1, keepdim=True), ys))  # only layer 0 used
    assert learner.module[2].weight is model[2].weight
    assert learner.module[0].weight is not model[0].weight


def test_learner_forwards_attributes_and_the_face_names_what_it_lacks():
    model, _, _ = make("cnn")
    model.n_way = 3
    learner = fl2l.MAML(model, lr=LR).clone()
    assert learner.n_way == 3 and learner.module[1].num_features == 4
    assert fl2l.algorithms.MAML is fl2l.MAML
    with pytest.raises(AttributeError, match="has no 'gym': it provides GBML, MAML, "):
        fl2l.gym  # noqa: B018
    with pytest.raises(TypeError, match="lr must be a number"):
        fl2l.MAML(model, lr="0.1")


def test_tensor_lr_is_differentiable():
    model, (xs, ys, xq, yq), loss_fn = make("mlp")
    lr = torch.tensor(LR, dtype=DT, requires_grad=True)
    learner = fl2l.MAML(model, lr=lr).clone()
    learner.adapt(loss_fn(learner(xs), ys))
    loss_fn(learner(xq), yq).backward()
    lr2 = torch.tensor(LR, dtype=DT, requires_grad=True)
    theta = list(make("mlp")[0].parameters())
    qloss, _ = unrolled(make("mlp")[0], theta, (xs, ys, xq, yq), loss_fn, 1, False,
                        lambda ps, gs, s: [p - lr2 * g for p, g in zip(ps, gs)])
    assert_rel([lr.grad], torch.autograd.grad(qloss, [lr2]), "d loss / d lr")
