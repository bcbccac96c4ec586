"""Buffers (BatchNorm running statistics) over a batch of tasks: ONE rule for every mode.

NOTE: [buffer rule] Each task runs from its own copy of the module's buffers (a batch norm in
training mode updates its running statistics in place at every forward: the inner steps and the
query), and afterwards the module keeps

    floating-point buffers (running_mean, running_var)  <- the mean over tasks of the tasks' copies
    integer buffers (num_batches_tracked)               <- its count + the batches every task saw

so after a meta-step the statistics are the tasks' average and the count is what a task loop
counts, whatever the mode ("loop", "vmap", "batched", "hvp", iMAML): `batching="auto"` changes the
speed, never the model's state. tests/test_buffers.py checks every mode against the loop.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from fastmaml.functional import Params


def task_copies(module: nn.Module, tasks: int) -> Params:
    """A copy of each buffer per task, stacked on a leading task dimension."""
    return stacked(dict(module.named_buffers()), tasks)


def stacked(buffers: Params, tasks: int) -> Params:
    """A copy of each of `buffers` per task, stacked on a leading task dimension."""
    return {n: b.unsqueeze(0).expand(tasks, *b.shape).clone() for n, b in buffers.items()}


def merge(module: nn.Module, copies: Params) -> None:
    """The module's buffers after the tasks ran on `copies` (NOTE: [buffer rule])."""
    if not copies:  # a model without buffers (the walk below would cost more than the sine step's update)
        return
    assign(module, merged(dict(module.named_buffers()), copies))


def merged(buffers: Params, copies: Params) -> Params:
    """What `buffers` become after the tasks ran on `copies` (NOTE: [buffer rule]), as new tensors:
    the functional form, for a compiled step that returns the buffers rather than changing them."""
    with torch.no_grad():
        return {n: copies[n].mean(0) if b.is_floating_point() else b + (copies[n] - b).sum(0)
                for n, b in buffers.items()}


def assign(module: nn.Module, values: Params) -> None:
    """The module's buffers set to `values` (by name), in place."""
    if not values:
        return
    with torch.no_grad():
        for name, b in module.named_buffers():
            b.copy_(values[name])


def for_recompute(module: nn.Module) -> Params | None:
    """Buffers for recomputing a loss already run (HVPs): in training mode batch norm normalises
    with batch statistics and does not read its running statistics, so None for each (nothing is
    updated twice); in eval mode the module's own, which are only read."""
    if module.training:
        # a None buffer is one the forward does not read (functional_call leaves nothing in its place)
        return cast(Params, {n: None for n, _ in module.named_buffers()})
    return None
