"""`fastmaml.compile(learner, cuda_graphs=True)`: Inductor's graph replayed as CUDA graphs.

Here (CPU) the option reaches Inductor, which declines CUDA graphs for a CPU graph (its skip
counter says so), the meta-gradient is the loop path's, and the step leaves its inputs as they
were (NOTE: [compiled buffers]: a graph changing its inputs could not be replayed). On a GPU
(bench/gpu's test section) the step is replayed as CUDA graphs, no skip allowed, batch norm
included, and what it returns survives the next replay (NOTE: [cuda graph outputs]): gradients
accumulated over meta-steps without zeroing, the losses of a meta_loss whose backward runs after
another meta-step, and the running statistics are the loop path's."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastmaml
from fastmaml.execution import compiled
from fastmaml.tasks.sine import SineTasks, sine_mlp

TOL = 1e-10


def batches(device, tasks=3):
    sampler = SineTasks(k_shot=5, q_query=4, seed=0, dtype=torch.float64)
    return [tuple(t.to(device) for t in sampler.sample(tasks).tensors()) for _ in range(2)]


def rel_diff(a, b) -> float:
    scale = max(y.abs().max().item() for y in b)
    return max((x - y).abs().max().item() for x, y in zip(a, b)) / max(scale, 1e-30)


def skips() -> int:
    from torch._dynamo.utils import counters

    return counters["inductor"]["cudagraph_skips"]


def accumulated_grads(learner, batch_list):
    """.grad after meta_backward on each batch, without zeroing in between."""
    for p in learner.parameters():
        p.grad = None
    for batch in batch_list:
        learner.meta_backward(*batch, F.mse_loss)
    return [p.grad.clone() for p in learner.parameters()]


MODELS = {
    "mlp": lambda: sine_mlp(hidden=8),
    "batch-norm": lambda: nn.Sequential(nn.Linear(1, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1)),
}


def run_against_loop(device, model_name="mlp"):
    torch.manual_seed(0)
    model = MODELS[model_name]().double().to(device)
    first, second = batches(device)
    loop = fastmaml.MAML(copy.deepcopy(model), inner_lr=0.1, inner_steps=1, batching="loop")
    graphed = fastmaml.compile(fastmaml.MAML(model, inner_lr=0.1, inner_steps=1), cuda_graphs=True)
    before = skips()
    got = accumulated_grads(graphed, [first, second, first])  # the graph replays with .grad still held
    assert graphed.batching_used == "compiled"
    assert rel_diff(got, accumulated_grads(loop, [first, second, first])) <= TOL
    # meta_loss: its gradient waits in HandGradLosses while another meta-step replays the graph
    losses = [graphed.meta_loss(*b, F.mse_loss) for b in (first, second)]
    want = [loop.meta_loss(*b, F.mse_loss) for b in (first, second)]
    for p in graphed.parameters():
        p.grad = None
    (losses[0] + 2 * losses[1]).backward()
    for p in loop.parameters():
        p.grad = None
    (want[0] + 2 * want[1]).backward()
    assert torch.allclose(torch.stack(losses), torch.stack(want), rtol=1e-12, atol=0)
    assert rel_diff([p.grad for p in graphed.parameters()], [p.grad for p in loop.parameters()]) <= TOL
    for (name, b), want_b in zip(graphed.module.named_buffers(), loop.module.buffers()):
        assert torch.allclose(b.double(), want_b.double(), rtol=0, atol=1e-12), f"buffer {name} differs"
    declined = skips() - before
    # the CUDA-graph step is a step of its own: compiled without, the learner has not compiled this shape
    assert compiled.is_compiled(graphed, first, F.mse_loss)
    assert not compiled.is_compiled(fastmaml.compile(graphed), first, F.mse_loss)
    return declined


def test_cuda_graphs_option_reaches_inductor_on_cpu():
    """On the CPU Inductor declines CUDA graphs (counted as a skip): the option arrived; the
    meta-gradient is the loop path's; the user is told once that CUDA graphs need a CUDA device."""
    with pytest.warns(RuntimeWarning, match="not on a CUDA device") as caught:
        assert run_against_loop(torch.device("cpu")) >= 1
    told = [w for w in caught if "CUDA device" in str(w.message)]
    assert len(told) == 1 and told[0].filename == __file__, "warned once, at the user's line"


def test_the_step_leaves_its_inputs_as_they_were():
    """NOTE: [compiled buffers]: batch norm's running statistics come back as outputs (changed), the
    buffers given are not changed in place."""
    learner = fastmaml.MAML(MODELS["batch-norm"]().double(), inner_lr=0.1)
    batch = batches("cpu")[0]
    run = compiled._compiled(learner, F.mse_loss, None, True, "aot_eager", False)
    buffers = {n: b.clone() for n, b in learner.module.named_buffers()}
    before = {n: (b.clone(), b._version) for n, b in buffers.items()}
    meta = {n: p.detach() for n, p in learner.named_parameters()}
    grads, losses, new_buffers = run(meta, buffers, torch.full((3,), 1 / 3, dtype=torch.float64), *batch)
    assert set(grads) == set(meta) and losses.shape == (3,)
    for n, (b, version) in before.items():
        assert buffers[n]._version == version and torch.equal(buffers[n], b), f"{n} changed in place"
    assert not torch.equal(new_buffers["1.running_mean"], before["1.running_mean"][0])
    assert new_buffers["1.num_batches_tracked"] == 3 * 2  # 3 tasks, a support and a query forward each


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_replay_on_cuda(monkeypatch):
    """On a GPU nothing is skipped (a skip raises), with batch norm's running statistics too, and the
    outputs outlive the next replay. (One model: each compiles for tens of seconds in bench/gpu's
    budgeted test section; the MLP's graph is the same without the buffers.)"""
    import torch._inductor.config

    monkeypatch.setattr(torch._inductor.config.triton, "cudagraph_or_error", True)
    assert run_against_loop(torch.device("cuda"), "batch-norm") == 0


@pytest.mark.parametrize("kwargs, match", [
    ({"cuda_graphs": 1}, "cuda_graphs must be True or False"),
    ({"cuda_graphs": True, "backend": "aot_eager"}, "cuda_graphs=True needs backend='inductor'"),
    ({"cuda_graphs": True, "backend": "aoti"}, "cuda_graphs=True needs backend='inductor'"),
])
def test_cuda_graphs_bad_arguments_say_what_is_expected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fastmaml.compile(fastmaml.MAML(sine_mlp(hidden=8)), **kwargs)


@pytest.mark.parametrize("backend", ["aot_eager", "aoti"])
def test_the_compiled_functions_check_the_backend_too(backend):
    batch = batches("cpu")[0]
    with pytest.raises(ValueError, match="cuda_graphs=True needs backend='inductor'"):
        compiled.compiled_task_losses(fastmaml.MAML(sine_mlp(hidden=8).double()), *batch, F.mse_loss,
                                      backend=backend, cuda_graphs=True)
