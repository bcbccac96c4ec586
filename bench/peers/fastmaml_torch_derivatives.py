"""fastmaml (batching "auto") with torch's own second derivatives of the task-batched convolution
and batch norm instead of fastmaml's hand-written ones (NOTE: [grouped conv double backward],
NOTE: [batch norm double backward]): the other side of that choice, for the GPU run
(bench/gpu/metastep.py; bench/bench_batched_derivatives.py asks the same in more detail)."""

from __future__ import annotations

from bench.peers import fastmaml as _fastmaml
from fastmaml.execution.batched import conv, norm

NAME = "fastmaml, torch's derivatives"
available = _fastmaml.available
version = _fastmaml.version


def make(model, cfg):
    inner = _fastmaml.make(model, cfg)

    def step(batch):
        conv.HAND_DERIVATIVE = norm.HAND_DERIVATIVE = False
        try:
            inner(batch)
        finally:
            conv.HAND_DERIVATIVE = norm.HAND_DERIVATIVE = True

    step.learner = inner.learner
    return step
