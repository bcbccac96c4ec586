"""fastmaml: MAML(model).meta_loss(...).backward(), batching "auto" (the task-batched fast path
where it covers the model)."""

from __future__ import annotations

import fastmaml as fm
from bench.peers import zero_grads

NAME = "fastmaml"


def available():
    return None


def version():
    return fm.__version__ if hasattr(fm, "__version__") else "dev"


def make(model, cfg):
    learner = fm.MAML(model, inner_lr=cfg.inner_lr, inner_steps=cfg.steps, first_order=cfg.first_order)
    loss_fn = cfg.loss_fn

    def step(batch):
        zero_grads(model)
        learner.meta_loss(*batch, loss_fn).backward()

    step.learner = learner
    return step
