"""The learn2learn face's further parts against learn2learn 0.2.0 itself (skipped when it is not
installed; bench/install_peers.sh installs it): GBML, the free update functions and
LearnableOptimizer to 1e-10 in float64, and the task transforms drawing the very same tasks from
the same `random` seed."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import fastmaml.compat.learn2learn as fl2l
from tests.compat._compat_helpers import DT, MODELS, assert_rel, learn2learn_parts, make

LR = 0.1


@pytest.fixture(scope="module")
def l2l():
    return learn2learn_parts()


def scale(lib):
    return lambda p: lib.nn.Scale(p.shape, alpha=0.5).to(DT)


def gbml_grads(lib, kind, first_order, adapt_transform):
    model, (xs, ys, xq, yq), loss_fn = make(kind)
    gbml = lib.algorithms.GBML(model, transform=scale(lib), lr=LR, first_order=first_order,
                               adapt_transform=adapt_transform)
    learner = gbml.clone()
    for _ in range(3):
        learner.adapt(loss_fn(learner(xs), ys))
    loss_fn(learner(xq), yq).backward()
    return [p.grad for p in model.parameters()] + [a.grad for a in gbml.compute_update.parameters()]


@pytest.mark.parametrize("first_order, adapt_transform", [(False, False), (False, True), (True, False)])
@pytest.mark.parametrize("kind", MODELS)
def test_gbml(l2l, kind, first_order, adapt_transform):
    want = gbml_grads(l2l, kind, first_order, adapt_transform)
    got = gbml_grads(fl2l, kind, first_order, adapt_transform)
    assert_rel(got, want, "GBML meta-gradient (params, then alphas)")


def test_gbml_first_order_with_adapt_transform_runs():
    """learn2learn 0.2.0 frees the loss's graph before differentiating it a second time here."""
    grads = gbml_grads(fl2l, "mlp", True, True)
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("how", ["maml_update", "update_module", "DifferentiableSGD"])
@pytest.mark.parametrize("kind", MODELS)
def test_free_updates(l2l, kind, how):
    def run(lib):
        model, (xs, ys, xq, yq), loss_fn = make(kind)
        learner = lib.clone_module(model)
        for _ in range(2):
            grads = torch.autograd.grad(loss_fn(learner(xs), ys), list(learner.parameters()), create_graph=True)
            if how == "maml_update":
                learner = lib.algorithms.maml.maml_update(learner, LR, grads)
            elif how == "update_module":
                learner = lib.update_module(learner, updates=[-LR * g for g in grads])
            else:
                lib.optim.DifferentiableSGD(LR)(learner, grads)
        loss_fn(learner(xq), yq).backward()
        return [p.grad for p in model.parameters()]

    assert_rel(run(fl2l), run(l2l), f"{how} meta-gradient vs learn2learn")


def test_learnable_optimizer(l2l):
    def run(lib):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).to(DT)
        x, y = torch.randn(8, 3, dtype=DT), torch.randn(8, 1, dtype=DT)
        metaopt = lib.optim.LearnableOptimizer(model, scale(lib), lr=0.1)
        outer = torch.optim.SGD(metaopt.parameters(), lr=0.05)
        for _ in range(3):
            metaopt.zero_grad()
            outer.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            outer.step()
            metaopt.step()
        return [p.detach() for p in model.parameters()] + [a.detach() for a in metaopt.parameters()]

    assert_rel(run(fl2l), run(l2l), "parameters and rates after 3 hypergradient steps")


@pytest.mark.parametrize("fused", [False, True])
def test_task_transforms_draw_the_same_tasks(l2l, fused):
    x = torch.randn(40, 3)
    y = torch.arange(8).repeat_interleave(5)

    def tasks(lib):
        meta = lib.data.MetaDataset(TensorDataset(x, y))
        t = lib.data.transforms
        pick = [t.FusedNWaysKShots(meta, n=3, k=2)] if fused else [t.NWays(meta, 3), t.KShots(meta, 2)]
        taskset = lib.data.Taskset(meta, pick + [t.LoadData(meta), t.RemapLabels(meta), t.ConsecutiveLabels(meta)])
        random.seed(0)
        return [taskset.sample() for _ in range(20)]

    for (xa, ya), (xb, yb) in zip(tasks(fl2l), tasks(l2l)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
