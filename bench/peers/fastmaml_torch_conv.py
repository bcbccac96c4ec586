"""fastmaml (batching "auto") with torch's own second derivative of the task-batched convolution
instead of fastmaml's hand-written one (NOTE: [grouped conv double backward]): the other side of
that choice, for the GPU run (bench/gpu/metastep.py) and bench/bench_conv_derivative.py's question."""

from __future__ import annotations

from bench.peers import fastmaml as _fastmaml
from fastmaml.execution.batched import conv

NAME = "fastmaml, torch's conv derivative"
available = _fastmaml.available
version = _fastmaml.version


def make(model, cfg):
    inner = _fastmaml.make(model, cfg)

    def step(batch):
        conv.HAND_DERIVATIVE = False
        try:
            inner(batch)
        finally:
            conv.HAND_DERIVATIVE = True

    step.learner = inner.learner
    return step
