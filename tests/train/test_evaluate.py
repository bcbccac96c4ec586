"""Batched evaluation (fastmaml/train/evaluate.py) scores exactly what adapting one task at a time
with learner.adapt scores, whichever way adapts the batch (task-batched layers, vmap, the loop, or
"auto"'s fastest), for an MLP, a Conv-4 with batch norm, and a model that neither the batched layers
nor vmap run (the loop takes over)."""

import math
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastmaml.algorithms import MAML
from fastmaml.models import Conv4, mlp
from fastmaml.tasks import FewShotSampler, SineTasks
from fastmaml.train.evaluate import evaluate, query_metric


class Branchy(nn.Module):
    """Data-dependent control flow: torch.func.vmap refuses it."""

    def __init__(self):
        super().__init__()
        self.net = mlp(1, 1, hidden=8)

    def forward(self, x):
        return self.net(x) if bool(x.sum() > -1e9) else -self.net(x)


def sine(model_fn):
    torch.manual_seed(0)
    return MAML(model_fn(), inner_lr=0.05, inner_steps=2), lambda: SineTasks(5, 4, seed=3), F.mse_loss, "mse"


def images():
    torch.manual_seed(0)
    labels = torch.arange(12).repeat_interleave(6)
    x = torch.rand(labels.numel(), 1, 8, 8, generator=torch.Generator().manual_seed(1)) + labels.view(-1, 1, 1, 1) * 0.05
    learner = MAML(Conv4(3, hidden=4, image_size=8, blocks=2), inner_lr=0.3, inner_steps=1)
    return learner, lambda: FewShotSampler(x, labels, 3, 1, 2, classes=range(8, 12), seed=1), F.cross_entropy, "accuracy"


def one_at_a_time(learner, tasks, loss_fn, metric, num_tasks, steps, batch):
    scores = {s: [] for s in steps}
    losses = {s: [] for s in steps}
    done = 0
    while done < num_tasks:
        n = min(batch, num_tasks - done)
        sx, sy, qx, qy = tasks.sample(n).tensors()
        for t in range(n):
            for s in steps:
                phi = learner.adapt(sx[t], sy[t], loss_fn, steps=s, first_order=True)
                with torch.no_grad():
                    out = learner(qx[t], phi)
                scores[s].append(query_metric(metric, out, qy[t]))
                losses[s].append(float(loss_fn(out, qy[t])))
        done += n
    return scores, losses


@pytest.mark.parametrize("case, batching", [("mlp", "auto"), ("mlp", "vmap"), ("mlp", "batched"), ("conv4-batchnorm", "auto"),
                                            ("conv4-batchnorm", "vmap"), ("conv4-batchnorm", "batched"),
                                            ("no-vmap", "auto"), ("no-vmap", "loop")])
def test_batched_evaluation_scores_like_one_task_at_a_time(case, batching):
    learner, tasks, loss_fn, metric = {"mlp": lambda: sine(lambda: mlp(1, 1, hidden=16)),
                                       "conv4-batchnorm": images, "no-vmap": lambda: sine(Branchy)}[case]()
    steps = [0, 1, 3]
    out = evaluate(learner, tasks(), loss_fn, metric, num_tasks=7, steps=steps, batch=3, batching=batching)
    scores, losses = one_at_a_time(learner, tasks(), loss_fn, metric, 7, steps, 3)
    for c in out["curve"]:
        s = c["inner_steps"]
        want = sum(scores[s]) / len(scores[s])
        assert math.isclose(c["mean"], want, rel_tol=1e-5, abs_tol=1e-6), f"{case}, {s} steps: {c['mean']} != {want}"
        assert math.isclose(c["loss"], sum(losses[s]) / len(losses[s]), rel_tol=1e-4), f"{case}, {s} steps: loss"


def test_progress_bar_counts_tasks_on_a_terminal_only(capsys, monkeypatch):
    learner, tasks, loss_fn, metric = sine(lambda: mlp(1, 1, hidden=8))
    evaluate(learner, tasks(), loss_fn, metric, num_tasks=5, batch=2, progress=True)
    assert "evaluate" not in capsys.readouterr().err  # a log or a pipe gets no bar
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    evaluate(learner, tasks(), loss_fn, metric, num_tasks=5, batch=2, progress=True)
    assert "5/5" in capsys.readouterr().err


def test_unknown_or_impossible_batching_is_refused():
    learner, tasks, loss_fn, metric = sine(Branchy)
    with pytest.raises(ValueError, match="batching must be one of"):
        evaluate(learner, tasks(), loss_fn, metric, num_tasks=2, batching="fast")
    with pytest.raises(ValueError, match="not supported by the task-batched layers"):
        evaluate(learner, tasks(), loss_fn, metric, num_tasks=2, batching="batched")
