"""Plain PyTorch written the obvious way: a loop over tasks, torch.func.functional_call and
torch.autograd.grad(create_graph=not first_order), p - lr * g per parameter."""

from __future__ import annotations

import torch
from torch.func import functional_call

from bench.peers import zero_grads

NAME = "torch.func loop"


def available():
    return None


def version():
    return torch.__version__


def make(model, cfg):
    loss_fn = cfg.loss_fn

    def step(batch):
        zero_grads(model)
        xs, ys, xq, yq = batch
        params = dict(model.named_parameters())
        total = 0.0
        for t in range(xs.shape[0]):
            phi = params
            for _ in range(cfg.steps):
                loss = loss_fn(functional_call(model, phi, (xs[t],)), ys[t])
                grads = torch.autograd.grad(loss, list(phi.values()), create_graph=not cfg.first_order)
                phi = {n: p - cfg.inner_lr * g for (n, p), g in zip(phi.items(), grads)}
            total = total + loss_fn(functional_call(model, phi, (xq[t],)), yq[t])
        (total / xs.shape[0]).backward()

    return step
