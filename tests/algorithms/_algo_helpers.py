"""Shared pieces of the algorithm tests: a tiny float64 model, task batches, an independent
unrolled-autograd reference, and the short sine meta-training run of the learning tests."""

from __future__ import annotations

import torch
import torch.nn.functional as Fn
from torch import nn

from fastmaml.tasks.sine import SineTasks, sine_mlp

DT = torch.float64


def tiny(seed=0, d_in=1, hidden=3, d_out=1, act=nn.Tanh):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), act(), nn.Linear(hidden, d_out)).to(DT)


def batch(tasks=3, k=4, q=5, d_in=1, seed=1, dtype=DT):
    g = torch.Generator().manual_seed(seed)
    sx = torch.randn(tasks, k, d_in, generator=g, dtype=dtype)
    qx = torch.randn(tasks, q, d_in, generator=g, dtype=dtype)
    a = torch.rand(tasks, 1, 1, generator=g, dtype=dtype) + 0.5
    return sx, a * torch.sin(sx.sum(-1, keepdim=True)), qx, a * torch.sin(qx.sum(-1, keepdim=True))


def mlp(p, x):
    """The tiny model written out by hand: p = [w1, b1, w2, b2]."""
    return torch.tanh(x @ p[0].T + p[1]) @ p[2].T + p[3]


def leaves(model):
    return [p.detach().clone().requires_grad_() for p in model.parameters()]


def grads_of(learner, sx, sy, qx, qy, wrt=None):
    loss = learner.meta_loss(sx, sy, qx, qy, Fn.mse_loss)
    wrt = list(learner.parameters()) if wrt is None else wrt
    return loss, torch.autograd.grad(loss, wrt, allow_unused=True)


def assert_close_all(actual, expected, atol=1e-9, rtol=1e-7, what=""):
    assert len(actual) == len(expected), what
    for i, (a, e) in enumerate(zip(actual, expected)):
        if e is None:
            assert a is None or torch.count_nonzero(a) == 0, f"{what}[{i}]: expected no gradient"
            continue
        a = torch.zeros_like(e) if a is None else a
        torch.testing.assert_close(a, e, atol=atol, rtol=rtol, msg=lambda m: f"{what}[{i}]: {m}")


def learns(learner, lr=1e-2, iters=100, tasks=10, train_step=None, seed=0, slow=(), slow_lr=1e-3):
    """Meta-train on the sine family (Adam, `lr`; `slow` parameters, e.g. learned inner rates, at
    `slow_lr`), then return (pre, post): mean query MSE over 100 held-out tasks before and after
    adaptation."""
    torch.manual_seed(seed)
    stream = SineTasks(k_shot=10, q_query=10, seed=seed)
    slow = list(slow)
    slow_ids = {id(p) for p in slow}
    groups = [{"params": [p for p in learner.parameters() if id(p) not in slow_ids], "lr": lr}]
    if slow:
        groups.append({"params": slow, "lr": slow_lr})
    opt = torch.optim.Adam(groups)
    for _ in range(iters):
        b = stream.sample(tasks)
        opt.zero_grad()
        if train_step is None:
            learner.meta_loss(*b.tensors(), Fn.mse_loss).backward()
        else:
            train_step(b)
        opt.step()
    return evaluate(learner)


def evaluate(learner):
    ev = SineTasks(k_shot=10, q_query=10, seed=12345).sample(100)
    with torch.no_grad():  # per task: a model with batch norm sees one task at a time
        pre = torch.stack([Fn.mse_loss(learner(x), y) for x, y in zip(ev.query_x, ev.query_y)]).mean().item()
    post = learner.meta_loss(*ev.tensors(), Fn.mse_loss).item()
    return pre, post


def sine_net(hidden=40):
    torch.manual_seed(0)
    return sine_mlp(hidden)
