"""torch.compile of the plain torch.func meta-step: the meta-gradient function
grad(mean over tasks of vmap(task_loss)), inner torch.func.grad steps included (the same
task_loss as bench/peers/torchfunc_vmap.py), compiled whole with the default Inductor backend,
fullgraph and static shapes (one graph per shape and dtype). The meta-gradient is written into
.grad. Its first call per shape pays the compilation (bench_peers reports that step apart)."""

from __future__ import annotations

import torch
from torch.func import grad

from bench.peers import torchfunc_vmap, zero_grads

NAME = "torch.compile(torch.func)"


def available():
    return None


def version():
    return torch.__version__


def make(model, cfg, mode=None):
    """The step; `mode`: torch.compile's (None: the default, what the peer measures)."""
    batched = torchfunc_vmap.meta_loss_fn(model, cfg)
    meta_grad = torch.compile(grad(lambda params, *batch: batched(params, *batch).mean()),
                              fullgraph=True, dynamic=False, mode=mode)
    named = list(model.named_parameters())

    def step(batch):
        zero_grads(model)
        grads = meta_grad({n: p.detach() for n, p in named}, *batch)
        for n, p in named:
            p.grad = grads[n]

    return step
