"""The compiled meta-step (fastmaml/execution/compiled.py) gives the loop path's meta-gradient, in
float64, for MAML (second and first order), Meta-SGD, L2F (forget form) and a model with batch
norm; the maths is checked with torch.compile's "aot_eager" backend (the same traced graph without
Inductor's code generation, seconds instead of a minute per graph), one test compiles with Inductor."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastmaml
from fastmaml.execution.compiled import compiled_task_losses, supported
from fastmaml.tasks.sine import SineTasks, sine_mlp

TOL = 1e-10


def sine_batch(tasks=3):
    return SineTasks(k_shot=5, q_query=4, seed=0, dtype=torch.float64).sample(tasks).tensors()


def bn_model():
    return nn.Sequential(nn.Linear(1, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1)).double()


def meta_grads(learner, losses):
    for p in learner.parameters():
        p.grad = None
    losses.backward()
    return [torch.zeros_like(p) if p.grad is None else p.grad for p in learner.parameters()]


def rel_diff(a, b) -> float:
    scale = max(y.abs().max().item() for y in b)
    return max((x - y).abs().max().item() for x, y in zip(a, b)) / max(scale, 1e-30)


CASES = {
    "maml-so-2": lambda m: fastmaml.MAML(m, inner_lr=0.1, inner_steps=2, batching="loop"),
    "maml-fo-2": lambda m: fastmaml.MAML(m, inner_lr=0.1, inner_steps=2, first_order=True, batching="loop"),
    "metasgd-2": lambda m: fastmaml.MetaSGD(m, inner_lr=0.1, inner_steps=2, batching="loop"),
    "l2f-2": lambda m: fastmaml.L2F(m, inner_lr=0.1, inner_steps=2, batching="loop"),
    "maml-adapt-head": lambda m: fastmaml.MAML(m, inner_lr=0.1, inner_steps=2, adapt_names=["2"], batching="loop"),
}


@pytest.mark.parametrize("case", CASES)
def test_meta_gradient_matches_loop(case):
    learner = CASES[case](sine_mlp(hidden=8).double())
    batch = sine_batch()
    want = meta_grads(learner, learner.meta_loss(*batch, F.mse_loss))
    losses = compiled_task_losses(learner, *batch, F.mse_loss, backend="aot_eager")
    got = meta_grads(learner, losses.mean())
    assert losses.shape == (3,)
    diff = rel_diff(got, want)
    assert diff <= TOL, f"{case}: compiled meta-gradient differs from the loop path's by {diff:.2e}"


def test_batch_norm_gradient_and_running_statistics_match_vmap():
    model = bn_model()
    batch = sine_batch()
    loop = fastmaml.MAML(copy.deepcopy(model), inner_lr=0.1, inner_steps=2, batching="vmap")
    want = meta_grads(loop, loop.meta_loss(*batch, F.mse_loss))
    learner = fastmaml.MAML(model, inner_lr=0.1, inner_steps=2)
    got = meta_grads(learner, compiled_task_losses(learner, *batch, F.mse_loss, backend="aot_eager").mean())
    assert rel_diff(got, want) <= TOL
    for (name, b), want_b in zip(learner.module.named_buffers(), loop.module.buffers()):
        assert torch.allclose(b.double(), want_b.double(), rtol=0, atol=1e-12), f"buffer {name} differs"


def test_weighted_losses_rerun_with_the_incoming_gradient():
    learner = fastmaml.MAML(sine_mlp(hidden=8).double(), inner_lr=0.1, inner_steps=1, batching="loop")
    batch = sine_batch()
    w = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    per_task = [learner.meta_loss(*(t[i:i + 1] for t in batch), F.mse_loss) for i in range(3)]
    want = meta_grads(learner, torch.stack(per_task) @ w)
    got = meta_grads(learner, compiled_task_losses(learner, *batch, F.mse_loss, backend="aot_eager") @ w)
    assert rel_diff(got, want) <= TOL


def test_no_grad_evaluates_first_order_losses():
    learner = fastmaml.MAML(sine_mlp(hidden=8).double(), inner_lr=0.1, inner_steps=2, batching="loop")
    batch = sine_batch()
    with torch.no_grad():
        want = learner.meta_loss(*batch, F.mse_loss)
        got = compiled_task_losses(learner, *batch, F.mse_loss, first_order=True, backend="aot_eager")
    assert not got.requires_grad
    assert torch.allclose(got.mean(), want, rtol=1e-12, atol=0)


def test_fastmaml_compile_hook_with_inductor():
    """The compile hook, with Inductor: second-order meta-gradient equal to the loop path's."""
    model = sine_mlp(hidden=8).double()
    batch = sine_batch()
    loop = fastmaml.MAML(copy.deepcopy(model), inner_lr=0.1, inner_steps=1, batching="loop")
    want = meta_grads(loop, loop.meta_loss(*batch, F.mse_loss))
    learner = fastmaml.compile(fastmaml.MAML(model, inner_lr=0.1, inner_steps=1))
    got = meta_grads(learner, learner.meta_loss(*batch, F.mse_loss, reduction="sum") / 3)
    assert learner.batching_used == "compiled"
    assert rel_diff(got, want) <= TOL


def test_unsupported_learners_say_why():
    learner = fastmaml.MAML(sine_mlp(hidden=8), second_order="hvp")
    assert "second_order='hvp'" in supported(learner)
    with pytest.raises(ValueError, match="second_order='hvp'"):
        fastmaml.compile(learner)
    assert "IMAML overrides" in supported(fastmaml.IMAML(sine_mlp(hidden=8)))


@pytest.mark.parametrize("chosen", ["reference", "native"])
def test_the_graph_has_the_reference_update_whatever_backend_is_chosen(chosen):
    """Inside the graph the update is the reference form, which Inductor fuses (not the opaque native
    op), under any backend choice outside; the choice is restored."""
    graphs = []

    def recording(gm, example_inputs):
        graphs.append(gm.print_readable(print_output=False))
        return gm.forward

    learner = fastmaml.MAML(sine_mlp(hidden=8).double(), inner_lr=0.1, batching="loop")
    batch = sine_batch()
    with fastmaml.use_backend(chosen):
        want = meta_grads(learner, learner.meta_loss(*batch, F.mse_loss))
        got = meta_grads(learner, compiled_task_losses(learner, *batch, F.mse_loss, backend=recording).mean())
        assert fastmaml.ops.get_backend() == chosen
    assert len(graphs) == 1 and "torch.ops.fastmaml" not in graphs[0] and "= child - mul" in graphs[0]
    assert rel_diff(got, want) <= TOL


def test_many_learners_each_get_their_own_compiled_step():
    """Dynamo keeps at most 8 graphs per code object: more learners than that must still compile."""
    batch = sine_batch()
    for i in range(9):
        learner = fastmaml.MAML(sine_mlp(hidden=8).double(), inner_lr=0.1 + i / 100, batching="loop")
        want = meta_grads(learner, learner.meta_loss(*batch, F.mse_loss))
        got = meta_grads(learner, compiled_task_losses(learner, *batch, F.mse_loss, backend="aot_eager").mean())
        assert rel_diff(got, want) <= TOL
