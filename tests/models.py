"""Tiny models for the tests, with hand-written forwards for independent checks."""

import torch
import torch.nn.functional as F
from torch import nn


def tiny_mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1)).double()


def mlp_forward(p: list, x):
    """tiny_mlp's forward with explicit weights, written without nn modules."""
    h = torch.tanh(F.linear(x, p[0], p[1]))
    h = torch.tanh(F.linear(h, p[2], p[3]))
    return F.linear(h, p[4], p[5])


def tiny_cnn() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)
    ).double()


def cnn_forward(p: list, x):
    """tiny_cnn's forward in training mode (batch statistics), without nn modules."""
    h = F.conv2d(x, p[0], p[1])
    h = F.batch_norm(h, None, None, p[2], p[3], training=True)
    return F.linear(F.relu(h).flatten(1), p[4], p[5])


def regression_tasks(tasks=3, support=5, query=6):
    g = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return r(tasks, support, 2), r(tasks, support, 1), r(tasks, query, 2), r(tasks, query, 1)


def image_tasks(tasks=3, support=6, query=6):
    g = torch.Generator().manual_seed(4)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    labels = lambda n: torch.randint(0, 3, (tasks, n), generator=g)  # noqa: E731
    return r(tasks, support, 1, 6, 6), labels(support), r(tasks, query, 1, 6, 6), labels(query)
