"""batching="auto" and the compiled meta-step (NOTE: [auto compiled] in fastmaml/execution/auto.py):
"compiled" only for a learner given a horizon, the compilation counted against it, a step already
compiled reused, the decision recorded with its reasons; meta-gradients equal to the loop path's in
float64. The step times are injected (auto.step_seconds replaced): no test reads a real time. The
compiled steps use torch.compile's "aot_eager" backend (the same graph without Inductor's code
generation, tests/execution/test_compiled.py)."""

import copy

import pytest
import torch
import torch.nn.functional as F

import fastmaml
from fastmaml import execution
from fastmaml.execution import auto, compiled
from fastmaml.tasks.sine import SineTasks, sine_mlp

TOL = 1e-10


def sine_batch(tasks=3):
    return SineTasks(k_shot=5, q_query=4, seed=0, dtype=torch.float64).sample(tasks).tensors()


def meta_grads(learner, batch):
    for p in learner.parameters():
        p.grad = None
    learner.meta_loss(*batch, F.mse_loss).backward()
    return [p.grad.clone() for p in learner.parameters()]


def rel_diff(a, b) -> float:
    scale = max(y.abs().max().item() for y in b)
    return max((x - y).abs().max().item() for x, y in zip(a, b)) / max(scale, 1e-30)


def pair(**compile_kwargs):
    """(the loop learner, an "auto" learner with the same weights given to fastmaml.compile)."""
    model = sine_mlp(hidden=8).double()
    loop = fastmaml.MAML(copy.deepcopy(model), inner_lr=0.1, inner_steps=2, batching="loop")
    learner = fastmaml.compile(fastmaml.MAML(model, inner_lr=0.1, inner_steps=2), backend="aot_eager", **compile_kwargs)
    return loop, learner


@pytest.fixture
def step_ms(monkeypatch):
    """Injected step times: `step_ms["compiled"] = 1.0` makes a compiled meta-step take 1 ms."""
    times = {"batched": 2.0, "vmap": 2.0, "loop": 2.0, "compiled": 1.0}
    monkeypatch.setattr(auto, "step_seconds", lambda learner, mode, *args, **kwargs: times[mode] / 1e3)
    return times


@pytest.fixture
def no_compiling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("compiled although it should not have")
    monkeypatch.setattr(compiled, "_build", refuse)


def test_auto_picks_compiled_when_a_long_horizon_pays_for_it(step_ms):
    loop, learner = pair(expected_steps=10**6)
    assert learner.batching == "auto"
    batch = sine_batch()
    want = meta_grads(loop, batch)
    got = meta_grads(learner, batch)
    assert learner.batching_used == "compiled"
    assert rel_diff(got, want) <= TOL
    choice = learner.execution_state.last_compile_choice
    assert choice.mode == "compiled" and choice.eager == "batched" and choice.horizon == 10**6
    assert choice.compile_s is not None and choice.compile_s > 0 and learner.execution_state.compile_seconds
    assert "'compiled': 1 ms a meta-step against 2 ms 'batched'" in choice.reason
    assert execution.explain(learner)["auto"] == choice.reason
    again = meta_grads(learner, batch)  # the choice is kept for the signature: decided once
    assert list(learner.execution_state.compile_choice.values()) == [choice]
    assert rel_diff(again, want) <= TOL


def test_auto_never_compiles_without_a_horizon(step_ms, no_compiling):
    model = sine_mlp(hidden=8).double()
    loop = fastmaml.MAML(copy.deepcopy(model), inner_lr=0.1, inner_steps=2, batching="loop")
    learner = fastmaml.MAML(model, inner_lr=0.1, inner_steps=2)  # "auto", not opted in
    batch = sine_batch()
    assert rel_diff(meta_grads(learner, batch), meta_grads(loop, batch)) <= TOL
    assert learner.batching_used == "batched"
    assert learner.execution_state.compiled == {} and learner.execution_state.compile_choice == {}
    assert "no horizon" in execution.explain(learner)["auto"]


def test_a_short_horizon_does_not_pay_for_a_compilation(step_ms, no_compiling):
    loop, learner = pair(expected_steps=1000)  # 1000 x 2 ms x 35% = 0.7 s, less than COMPILE_S
    batch = sine_batch()
    assert rel_diff(meta_grads(learner, batch), meta_grads(loop, batch)) <= TOL
    assert learner.batching_used == "batched"
    choice = learner.execution_state.last_compile_choice
    assert choice.mode == "batched" and choice.compile_s is None
    assert "not compiled" in choice.reason and "less than a compilation's 60 s" in choice.reason


def test_compiled_but_slower_keeps_the_eager_mode(step_ms):
    step_ms["compiled"] = 3.0
    loop, learner = pair(expected_steps=10**6)
    batch = sine_batch()
    assert rel_diff(meta_grads(learner, batch), meta_grads(loop, batch)) <= TOL
    assert learner.batching_used == "batched"
    choice = learner.execution_state.last_compile_choice
    assert choice.mode == "batched" and choice.compile_s > 0
    assert "'batched': 2 ms a meta-step against 3 ms compiled" in choice.reason


def test_a_step_compiled_for_the_shape_is_reused_whatever_the_horizon(step_ms):
    loop, learner = pair()  # always "compiled": compiles for this shape
    batch = sine_batch()
    want = meta_grads(loop, batch)
    assert rel_diff(meta_grads(learner, batch), want) <= TOL and learner.batching_used == "compiled"
    assert compiled.is_compiled(learner, batch, F.mse_loss)
    assert not compiled.is_compiled(learner, sine_batch(tasks=4), F.mse_loss)
    fastmaml.compile(learner, backend="aot_eager", expected_steps=10)  # far too short to pay for compiling
    assert rel_diff(meta_grads(learner, batch), want) <= TOL
    choice = learner.execution_state.last_compile_choice
    assert learner.batching_used == "compiled" and choice.compile_s == 0 and "already compiled" in choice.reason


class Branching(torch.nn.Module):
    """A model whose forward branches on a value: no single graph (fullgraph=True fails)."""

    def __init__(self):
        super().__init__()
        self.net = sine_mlp(hidden=8)

    def forward(self, x):
        y = self.net(x)
        return y if float(y.detach().sum()) < 1e9 else -y


def test_a_model_that_does_not_compile_keeps_the_eager_mode(step_ms):
    model = Branching().double()
    loop = fastmaml.MAML(copy.deepcopy(model), inner_lr=0.1, inner_steps=1, batching="loop")
    learner = fastmaml.compile(fastmaml.MAML(model, inner_lr=0.1, inner_steps=1), backend="aot_eager",
                               expected_steps=10**6)
    batch = sine_batch()
    assert rel_diff(meta_grads(learner, batch), meta_grads(loop, batch)) <= TOL
    choice = learner.execution_state.last_compile_choice
    assert learner.batching_used == choice.mode != "compiled"
    assert "compiling the meta-step failed" in choice.reason
    assert not compiled.is_compiled(learner, batch, F.mse_loss)


def test_evaluation_never_compiles_under_auto(step_ms, no_compiling):
    loop, learner = pair(expected_steps=10**6)
    batch = sine_batch()
    with torch.no_grad():
        got, want = learner.meta_loss(*batch, F.mse_loss), loop.meta_loss(*batch, F.mse_loss)
    assert learner.batching_used == "batched" and learner.execution_state.compile_choice == {}
    assert torch.allclose(got, want, rtol=1e-12, atol=0)


def test_an_uncovered_learner_is_weighed_without_compiling(step_ms, no_compiling):
    learner = fastmaml.MAML(sine_mlp(hidden=8).double(), inner_lr=0.1, inner_steps=1)
    learner.execution_state.compile_horizon = 10**6  # as fastmaml.compile would set it, then:
    learner.second_order = "hvp"
    choice = auto.weigh_compiled(learner, sine_batch(), F.mse_loss, "vmap", 10**6, execution._losses_in)
    assert choice.mode == "vmap" and "does not cover" in choice.reason and "second_order='hvp'" in choice.reason


@pytest.mark.parametrize("bad", [0, -3, 1.5, True, "many"])
def test_expected_steps_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match="expected_steps"):
        fastmaml.compile(fastmaml.MAML(sine_mlp(hidden=8)), expected_steps=bad)
