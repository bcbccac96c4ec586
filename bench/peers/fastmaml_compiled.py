"""fastmaml's compiled meta-step (fastmaml/execution/compiled.py): fastmaml.compile(MAML(model)),
then meta_backward(...) (meta_loss(...).backward() in one call, the compiled meta-gradient written
into .grad without an autograd graph). Its first call per shape pays the compilation. The other
compiled peers (fastmaml_aoti, fastmaml_cuda_graphs) are this one with fastmaml.compile's options."""

from __future__ import annotations

import fastmaml as fm
from bench.peers import fastmaml as eager, zero_grads

NAME = "fastmaml compiled"
available, version = eager.available, eager.version


def make(model, cfg, **compile_options):
    learner = fm.compile(fm.MAML(model, inner_lr=cfg.inner_lr, inner_steps=cfg.steps, first_order=cfg.first_order),
                         **compile_options)
    loss_fn = cfg.loss_fn

    def step(batch):
        zero_grads(model)
        learner.meta_backward(*batch, loss_fn)

    step.learner = learner
    return step
