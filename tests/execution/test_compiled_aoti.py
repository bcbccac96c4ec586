"""fastmaml.compile(learner, backend="aoti") (fastmaml/execution/aoti.py): the loop path's meta-gradient
in float64, its packages keyed as NOTE: [aoti keys] says (a changed setting compiles again, a second
learner of the same graph loads the package from disk), batch norm's running statistics as the vmap
path leaves them. Each AOTInductor compilation is a C++ build (tens of seconds here): few of them."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastmaml
from fastmaml.execution import aoti
from fastmaml.tasks.sine import SineTasks, sine_mlp

TOL = 1e-10


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTMAML_AOTI_CACHE", str(tmp_path / "aoti"))
    return tmp_path / "aoti"


def sine_batch(tasks=3):
    return SineTasks(k_shot=5, q_query=4, seed=0, dtype=torch.float64).sample(tasks).tensors()


def meta_grads(learner, loss):
    for p in learner.parameters():
        p.grad = None
    loss.backward()
    return [p.grad for p in learner.parameters()]


def rel_diff(a, b) -> float:
    scale = max(y.abs().max().item() for y in b)
    return max((x - y).abs().max().item() for x, y in zip(a, b)) / max(scale, 1e-30)


def source(learner) -> list[str]:
    return [step.fn.last_source for step in learner.execution_state.compiled.values()]


def test_meta_gradient_matches_loop_and_packages_are_keyed(empty_cache):
    model, batch = sine_mlp(hidden=8).double(), sine_batch()
    loop = fastmaml.MAML(copy.deepcopy(model), inner_lr=0.1, inner_steps=2, batching="loop")
    learner = fastmaml.compile(fastmaml.MAML(model, inner_lr=0.1, inner_steps=2), backend="aoti")
    want = meta_grads(loop, loop.meta_loss(*batch, F.mse_loss))
    got = meta_grads(learner, learner.meta_loss(*batch, F.mse_loss))
    assert learner.batching_used == "compiled" and source(learner) == ["compiled"]
    assert rel_diff(got, want) <= TOL
    meta_grads(learner, learner.meta_loss(*batch, F.mse_loss))
    assert source(learner) == ["memory"]
    # a second learner of the same shapes and settings: the package on disk, not a compilation
    twin = fastmaml.compile(fastmaml.MAML(copy.deepcopy(model), inner_lr=0.1, inner_steps=2), backend="aoti")
    assert rel_diff(meta_grads(twin, twin.meta_loss(*batch, F.mse_loss)), want) <= TOL
    assert source(twin) == ["disk"]
    # a changed setting is a new graph (the trace has inner_lr as a literal)
    learner.inner_lr = loop.inner_lr = 0.05
    want = meta_grads(loop, loop.meta_loss(*batch, F.mse_loss))
    assert rel_diff(meta_grads(learner, learner.meta_loss(*batch, F.mse_loss)), want) <= TOL
    assert source(learner) == ["compiled"]
    # without gradient: the losses only, a graph of their own
    with torch.no_grad():
        got_loss, want_loss = learner.meta_loss(*batch, F.mse_loss), loop.meta_loss(*batch, F.mse_loss)
    assert torch.allclose(got_loss, want_loss, rtol=1e-12, atol=0)
    # packages only: each compiled under a temporary name and renamed into place
    assert sorted(p.suffix for p in empty_cache.iterdir()) == [".pt2"] * 3


def test_batch_norm_running_statistics_match_vmap():
    model = nn.Sequential(nn.Linear(1, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1)).double()
    batch = sine_batch()
    vmap = fastmaml.MAML(copy.deepcopy(model), inner_lr=0.1, inner_steps=2, batching="vmap")
    want = meta_grads(vmap, vmap.meta_loss(*batch, F.mse_loss))
    learner = fastmaml.compile(fastmaml.MAML(model, inner_lr=0.1, inner_steps=2), backend="aoti")
    assert rel_diff(meta_grads(learner, learner.meta_loss(*batch, F.mse_loss)), want) <= TOL
    for (name, b), want_b in zip(learner.module.named_buffers(), vmap.module.buffers()):
        assert torch.allclose(b.double(), want_b.double(), rtol=0, atol=1e-12), f"buffer {name} differs"


def test_settings_key_sees_what_the_trace_reads():
    """NOTE: [aoti keys], without compiling: the key changes with a hyper-parameter, a training flag
    and an in-place change of a frozen parameter (a constant of the trace), and with nothing else."""
    learner = fastmaml.MAML(sine_mlp(hidden=8), inner_lr=0.1, inner_steps=2)
    learner.module[0].bias.requires_grad_(False)
    key = aoti.settings(learner)
    assert aoti.settings(learner) == key
    learner.module[2].weight.data.add_(1.0)  # an input: the package reads it at each call
    assert aoti.settings(learner) == key
    learner.inner_steps = 3
    assert aoti.settings(learner) != key
    learner.inner_steps = 2
    learner.eval()
    assert aoti.settings(learner) != key
    learner.train()
    assert aoti.settings(learner) == key
    with torch.no_grad():
        learner.module[0].bias.add_(1.0)
    assert aoti.settings(learner) != key
