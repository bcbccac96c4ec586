"""`MetaLearner.meta_backward` adds the meta-gradient of `meta_loss(...)` to `.grad`, in float64
equal to `meta_loss(...).backward()` on the loop path, in every mode: the compiled mode's direct
hand-over (NOTE: [direct meta-gradient] in fastmaml/execution/compiled.py; checked with torch.compile's
"aot_eager" backend, the same traced graph without Inductor's code generation), its fallback through
autograd when a parameter has a hook, the eager modes and learners with their own meta_loss."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastmaml
from fastmaml.execution import compiled
from fastmaml.tasks.sine import SineTasks, sine_mlp

TOL = 1e-10


def sine_batch(tasks=3):
    return SineTasks(k_shot=5, q_query=4, seed=0, dtype=torch.float64).sample(tasks).tensors()


def grads_of(learner):
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in learner.parameters()]


def rel_diff(a, b) -> float:
    scale = max(y.abs().max().item() for y in b)
    return max((x - y).abs().max().item() for x, y in zip(a, b)) / max(scale, 1e-30)


def reference(learner, batch, reduction="mean"):
    """(loss, grads) of meta_loss(...).backward() on the loop path, on a copy."""
    loop = copy.deepcopy(learner)
    loop.batching = "loop"
    loss = loop.meta_loss(*batch, F.mse_loss, reduction=reduction)
    loss.backward()
    return loss.detach(), grads_of(loop), loop


def no_autograd_hand_over(monkeypatch):
    """Fail the test if the compiled step's meta-gradient goes through the autograd node."""
    class Refuse:
        @staticmethod
        def apply(*args):
            raise AssertionError("the compiled mode took the autograd hand-over, not the direct one")
    monkeypatch.setattr(compiled, "HandGradLosses", Refuse)


LEARNERS = {
    "maml-so-2": lambda: fastmaml.MAML(sine_mlp(hidden=8).double(), inner_lr=0.1, inner_steps=2),
    "maml-fo-1": lambda: fastmaml.MAML(sine_mlp(hidden=8).double(), inner_lr=0.1, first_order=True),
    "metasgd-2": lambda: fastmaml.MetaSGD(sine_mlp(hidden=8).double(), inner_lr=0.1, inner_steps=2),
    "l2f-1": lambda: fastmaml.L2F(sine_mlp(hidden=8).double(), inner_lr=0.1),
    "batch-norm": lambda: fastmaml.MAML(nn.Sequential(nn.Linear(1, 8), nn.BatchNorm1d(8), nn.ReLU(),
                                                      nn.Linear(8, 1)).double(), inner_lr=0.1, inner_steps=2),
}


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("case", LEARNERS)
def test_compiled_direct_meta_gradient_matches_the_loop(case, reduction, monkeypatch):
    learner = LEARNERS[case]()
    batch = sine_batch()
    want_loss, want, loop = reference(learner, batch, reduction)
    fastmaml.compile(learner, backend="aot_eager")
    no_autograd_hand_over(monkeypatch)
    loss = learner.meta_backward(*batch, F.mse_loss, reduction=reduction)
    assert learner.batching_used == "compiled"
    assert not loss.requires_grad and torch.allclose(loss, want_loss, rtol=1e-12, atol=0)
    diff = rel_diff(grads_of(learner), want)
    assert diff <= TOL, f"{case}: direct meta-gradient differs from the loop's by {diff:.2e}"
    for (name, b), want_b in zip(learner.module.named_buffers(), loop.module.buffers()):
        assert torch.allclose(b.double(), want_b.double(), rtol=0, atol=1e-12), f"buffer {name} differs"


def test_compiled_direct_meta_gradient_accumulates_like_backward(monkeypatch):
    learner = LEARNERS["maml-so-2"]()
    batch = sine_batch()
    _, want, _ = reference(learner, batch)
    fastmaml.compile(learner, backend="aot_eager")
    no_autograd_hand_over(monkeypatch)
    before = [torch.randn_like(p) for p in learner.parameters()]
    for p, g in zip(learner.parameters(), before):
        p.grad = g.clone()
    learner.meta_backward(*batch, F.mse_loss)
    assert rel_diff(grads_of(learner), [g + w for g, w in zip(before, want)]) <= TOL


def test_a_parameter_hook_takes_the_autograd_hand_over_and_runs():
    learner = LEARNERS["maml-so-2"]()
    batch = sine_batch()
    _, want, _ = reference(learner, batch)
    fastmaml.compile(learner, backend="aot_eager")
    seen = []
    first = next(learner.parameters())
    first.register_hook(lambda g: seen.append(g.clone()))
    learner.meta_backward(*batch, F.mse_loss)
    assert len(seen) == 1 and rel_diff([seen[0]], want[:1]) <= TOL
    assert rel_diff(grads_of(learner), want) <= TOL


@pytest.mark.parametrize("make", [
    lambda: fastmaml.MAML(sine_mlp(hidden=8).double(), inner_lr=0.1, inner_steps=2, batching="batched"),
    lambda: fastmaml.MAML(sine_mlp(hidden=8).double(), inner_lr=0.1, inner_steps=2, batching="vmap"),
    lambda: fastmaml.MAML(sine_mlp(hidden=8).double(), inner_lr=0.1, inner_steps=2, second_order="hvp"),
    lambda: fastmaml.MAMLpp(sine_mlp(hidden=8).double(), inner_lr=0.1, inner_steps=2),
    lambda: fastmaml.IMAML(sine_mlp(hidden=8).double(), inner_lr=0.1, inner_steps=2),
], ids=["batched", "vmap", "hvp", "maml++", "imaml"])
def test_eager_modes_and_own_meta_losses_match_backward(make):
    learner = make()
    twin = copy.deepcopy(learner)
    batch = sine_batch()
    want_loss = twin.meta_loss(*batch, F.mse_loss)
    want_loss.backward()
    loss = learner.meta_backward(*batch, F.mse_loss)
    assert not loss.requires_grad and torch.allclose(loss, want_loss.detach(), rtol=1e-12, atol=0)
    assert rel_diff(grads_of(learner), grads_of(twin)) <= TOL


def test_bad_calls_say_what_is_wrong():
    learner = LEARNERS["maml-so-2"]()
    batch = sine_batch()
    with torch.no_grad(), pytest.raises(RuntimeError, match="meta_backward .* torch.no_grad"):
        learner.meta_backward(*batch, F.mse_loss)
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum', got 'max'"):
        learner.meta_backward(*batch, F.mse_loss, reduction="max")
    with pytest.raises(ValueError, match="support_x"):
        learner.meta_backward(batch[0][0], *batch[1:], F.mse_loss)
