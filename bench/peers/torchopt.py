"""TorchOpt 0.7.3. Second order as its few-shot maml_omniglot example: MetaSGD(model).step(loss)
per inner step, query loss backward, recover_state_dict per task. MetaSGD always differentiates
with create_graph=True, so first order uses TorchOpt's functional API instead: torchopt.sgd,
autograd.grad without a graph, apply_updates(inplace=False), torch.func.functional_call."""

from __future__ import annotations

import torch
from torch.func import functional_call

from bench.peers import installed_peer, zero_grads

NAME = "torchopt"
_lib, available, version = installed_peer("torchopt")


def make(model, cfg):
    torchopt = _lib()
    loss_fn = cfg.loss_fn
    if cfg.first_order:
        names = [n for n, _ in model.named_parameters()]
        sgd = torchopt.sgd(lr=cfg.inner_lr)

        def step(batch):
            zero_grads(model)
            xs, ys, xq, yq = batch
            total = 0.0
            for t in range(xs.shape[0]):
                params = tuple(model.parameters())
                state = sgd.init(params)
                for _ in range(cfg.steps):
                    loss = loss_fn(functional_call(model, dict(zip(names, params)), (xs[t],)), ys[t])
                    grads = torch.autograd.grad(loss, params)
                    updates, state = sgd.update(grads, state, inplace=False)
                    params = torchopt.apply_updates(params, updates, inplace=False)
                total = total + loss_fn(functional_call(model, dict(zip(names, params)), (xq[t],)), yq[t])
            (total / xs.shape[0]).backward()

        return step

    inner_opt = torchopt.MetaSGD(model, lr=cfg.inner_lr)

    def step(batch):
        zero_grads(model)
        xs, ys, xq, yq = batch
        net_state = torchopt.extract_state_dict(model, by="reference", detach_buffers=True)
        opt_state = torchopt.extract_state_dict(inner_opt, by="reference")
        for t in range(xs.shape[0]):
            for _ in range(cfg.steps):
                inner_opt.step(loss_fn(model(xs[t]), ys[t]))
            (loss_fn(model(xq[t]), yq[t]) / xs.shape[0]).backward()
            torchopt.recover_state_dict(model, net_state)
            torchopt.recover_state_dict(inner_opt, opt_state)

    return step
