"""NOTE: [buffer rule]: every mode leaves a model's buffers (BatchNorm running statistics and
num_batches_tracked) in the same state after a meta-step, so batching="auto" changes speed only."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastmaml
from tests.models import image_tasks

MODES = ["loop", "vmap", "batched"]


def bn_cnn(momentum=0.1) -> nn.Module:
    torch.manual_seed(5)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, momentum=momentum), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)
    ).double()


def state_after(make_learner, batch, backward=True):
    learner = make_learner()
    loss = learner.meta_loss(*batch, F.cross_entropy)
    if backward:
        loss.backward()
    return {n: b.clone() for n, b in learner.module.named_buffers()}, learner.batching_used


def expected_state(model, batch, steps):
    """The rule from one-task runs (where it has nothing to merge): the mean over tasks of each
    task's statistics, and the count raised by every task's forwards."""
    T = batch[0].shape[0]
    states = []
    for t in range(T):
        one = [x[t : t + 1] for x in batch]
        states.append(state_after(lambda: fastmaml.MAML(copy.deepcopy(model), inner_lr=0.1, inner_steps=steps,
                                                         batching="loop"), one)[0])
    out = {}
    for n, b in model.named_buffers():
        stacked = torch.stack([s[n] for s in states])
        out[n] = stacked.mean(0) if b.is_floating_point() else b + (stacked - b).sum(0)
    return out


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("second_order", ["autograd", "hvp"])
def test_every_mode_leaves_the_same_buffers(momentum, second_order):
    batch = image_tasks()
    steps = 2
    model = bn_cnn(momentum)
    modes = MODES if second_order == "autograd" else ["loop", "vmap"]
    if momentum is None:  # nn.BatchNorm reads num_batches_tracked with float(): not under vmap
        modes = [m for m in modes if m != "vmap"]
    states = {}
    for mode in modes:
        make = lambda mode=mode: fastmaml.MAML(copy.deepcopy(model), inner_lr=0.1, inner_steps=steps, batching=mode,
                                               second_order=second_order)
        states[mode], used = state_after(make, batch)
        assert used == mode
    expected = expected_state(model, batch, steps)
    T = batch[0].shape[0]
    for mode, state in states.items():
        for n, b in state.items():
            torch.testing.assert_close(b, expected[n], rtol=1e-10, atol=1e-12, msg=lambda m, n=n: f"{mode} {n}: {m}")
        assert int(state["1.num_batches_tracked"]) == T * (steps + 1)


def test_auto_evaluation_and_imaml_follow_the_rule():
    batch = image_tasks()
    model = bn_cnn()
    expected = expected_state(model, batch, 2)
    auto = fastmaml.MAML(copy.deepcopy(model), inner_lr=0.1, inner_steps=2)
    with torch.no_grad():
        auto.meta_loss(*batch, F.cross_entropy)
    for n, b in auto.module.named_buffers():
        torch.testing.assert_close(b, expected[n], rtol=1e-10, atol=1e-12)
    imaml = fastmaml.IMAML(copy.deepcopy(model), lam=2.0, inner_lr=0.1, inner_steps=2, on_cg_fail="ignore")
    imaml.meta_loss(*batch, F.cross_entropy).backward()
    counts = {n: int(b) for n, b in imaml.module.named_buffers() if not b.is_floating_point()}
    assert counts == {"1.num_batches_tracked": batch[0].shape[0] * 3}
