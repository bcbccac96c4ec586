"""higher (facebookresearch/higher), as its maml-omniglot example: per task innerloop_ctx(model,
SGD, copy_initial_weights=False), diffopt.step(loss) per inner step, query loss backward. First
order: the inner gradients are detached by diffopt.step's grad_callback."""

from __future__ import annotations

import torch

from bench.peers import installed_peer, zero_grads

NAME = "higher"
_lib, available, version = installed_peer("higher")


def make(model, cfg):
    higher = _lib()
    loss_fn = cfg.loss_fn
    inner_opt = torch.optim.SGD(model.parameters(), lr=cfg.inner_lr)
    callback = (lambda grads: [None if g is None else g.detach() for g in grads]) if cfg.first_order else None

    def step(batch):
        zero_grads(model)
        xs, ys, xq, yq = batch
        for t in range(xs.shape[0]):
            with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fmodel, diffopt):
                for _ in range(cfg.steps):
                    diffopt.step(loss_fn(fmodel(xs[t]), ys[t]), grad_callback=callback)
                (loss_fn(fmodel(xq[t]), yq[t]) / xs.shape[0]).backward()

    return step
