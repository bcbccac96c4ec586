"""fastmaml under the user's torch.compile (fastmaml/execution/user_compile.py): a compiled model
and a compiled training step keep the second-order meta-gradient of the plain loop path (float64;
torch.compile's "aot_eager" backend: the same tracing and autograd as Inductor, without its code
generation)."""

import pytest
import torch
import torch.nn.functional as F

import fastmaml
from fastmaml.execution import user_compile
from fastmaml.tasks.sine import SineTasks, sine_mlp


@pytest.fixture
def problem():
    net = sine_mlp(hidden=8).double()
    batch = SineTasks(k_shot=5, q_query=4, seed=0, dtype=torch.float64).sample(3).tensors()
    learner = fastmaml.MAML(net, inner_lr=0.1, inner_steps=2, batching="loop")
    learner.meta_loss(*batch, F.mse_loss).backward()
    want = [p.grad.clone() for p in net.parameters()]
    for p in net.parameters():
        p.grad = None
    return net, batch, want


def assert_same(net, want):
    for (name, p), w in zip(net.named_parameters(), want):
        assert torch.allclose(p.grad, w, rtol=1e-12, atol=1e-14), f"{name}: meta-gradient differs"


@pytest.mark.parametrize("batching", ["loop", "auto"])
def test_compiled_model_runs_its_original_module(problem, batching, monkeypatch):
    net, batch, want = problem
    monkeypatch.setattr(user_compile, "_warned", False)
    with pytest.warns(RuntimeWarning, match="torch.compile'd; the meta-step runs its original module"):
        learner = fastmaml.MAML(torch.compile(net, backend="aot_eager"), inner_lr=0.1, inner_steps=2,
                                batching=batching)
    assert learner.module is net
    learner.meta_loss(*batch, F.mse_loss).backward()
    assert_same(net, want)


@pytest.mark.parametrize("batching", ["loop", "vmap", "auto"])
def test_compiled_training_step_keeps_second_order(problem, batching):
    net, batch, want = problem
    learner = fastmaml.MAML(net, inner_lr=0.1, inner_steps=2, batching=batching)

    @torch.compile(backend="aot_eager")
    def step(*batch):
        loss = learner.meta_loss(*batch, F.mse_loss)
        loss.backward()
        return loss

    step(*batch)
    assert_same(net, want)


def test_import_leaves_dynamo_unloaded():
    # user_compile's module docstring: importing torch._dynamo costs every `import fastmaml` ~1 s
    import subprocess
    import sys
    code = "import sys, fastmaml; print(sorted(m for m in ('torch._dynamo', 'torch._inductor') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"import fastmaml loaded {out.strip()}"
