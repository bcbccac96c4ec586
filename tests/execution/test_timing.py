"""fastmaml/execution/timing.py: the choices made by timing (batching="auto", evaluation's "auto")
wait for a CUDA device before and after the work they time (its launches return at once), and time
the CPU with the caller's clock."""

import importlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastmaml
from fastmaml.execution import auto, timing
from fastmaml.tasks.sine import SineTasks

evaluate = importlib.import_module("fastmaml.train.evaluate")  # the module (fastmaml.train.evaluate is also a function)


def test_cpu_work_is_timed_by_the_callers_clock():
    ticks, calls = iter([1.0, 3.5]), []
    seconds = timing.device_seconds(lambda: calls.append("work"), torch.device("cpu"), lambda: next(ticks))
    assert seconds == 2.5 and calls == ["work"]


def test_cuda_work_is_waited_for_before_and_after(monkeypatch):
    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append(("wait", device)))
    cuda = torch.device("cuda", 0)
    seconds = timing.device_seconds(lambda: events.append("work"), cuda, cpu_clock=lambda: pytest.fail("CPU clock"))
    assert events == [("wait", cuda), "work", ("wait", cuda)] and seconds >= 0


class _NotBatched(nn.Module):
    """A model the task-batched layers do not cover (a product of two activations), so auto times vmap
    and the loop."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(1, 8)
        self.out = nn.Linear(8, 1)

    def forward(self, x):
        h = self.lin(x)
        return self.out(h * h.sigmoid())


def test_auto_and_evaluation_time_through_device_seconds(monkeypatch):
    devices = []

    def recording(work, device, cpu_clock=None):
        devices.append(device)
        work()
        return 1.0

    monkeypatch.setattr(auto, "device_seconds", recording)
    monkeypatch.setattr(evaluate, "device_seconds", recording)
    batch = SineTasks(k_shot=5, q_query=4, seed=0).sample(3).tensors()
    learner = fastmaml.MAML(_NotBatched(), inner_lr=0.1, batching="auto")
    learner.meta_loss(*batch, F.mse_loss).backward()
    assert learner.batching_used in ("vmap", "loop") and len(devices) == 4  # vmap and loop, twice each
    evaluate.fastest_mode(learner, batch[0], batch[1], batch[2], F.mse_loss, [1])
    assert len(devices) > 4 and set(devices) == {torch.device("cpu")}
