"""A second-order Conv-4 meta-step in the batched mode with its dispatched ops counted: what the
tests of the batched layers' hand-written derivatives (test_batched_conv.py, test_batched_norm.py)
compare with torch's derivatives."""

import torch
import torch.nn.functional as F

import fastmaml
from bench._common import OpCounter
from fastmaml.models import conv4


def meta_step_ops(tasks: int, device: str = "cpu") -> OpCounter:
    torch.manual_seed(0)
    model = conv4(n_way=3, hidden=4, image_size=16).to(device)
    learner = fastmaml.MAML(model, inner_lr=0.1, inner_steps=1, batching="batched")
    x = torch.rand(tasks, 6, 1, 16, 16, device=device)
    y = torch.arange(3, device=device).repeat(tasks, 2)
    with OpCounter() as counter:
        learner.meta_loss(x, y, x, y, F.cross_entropy).backward()
    return counter
