"""Plain PyTorch written the obvious way with torch.func: the one-task inner loop by
torch.func.grad, all tasks by torch.func.vmap, one backward of the mean query loss. First order
takes the inner gradients at detached parameters."""

from __future__ import annotations

import torch
from torch.func import functional_call, grad, vmap

from bench.peers import zero_grads

NAME = "torch.func vmap"


def available():
    return None


def version():
    return torch.__version__


def meta_loss_fn(model, cfg):
    """meta_loss(params, sx, sy, qx, qy) -> [T] query losses after cfg.steps inner steps, by
    grad for the inner steps and vmap over tasks (bench/peers/torch_compile.py compiles it)."""
    loss_fn = cfg.loss_fn

    def support_loss(params, x, y):
        return loss_fn(functional_call(model, params, (x,)), y)

    def task_loss(params, xs, ys, xq, yq):
        phi = params
        for _ in range(cfg.steps):
            at = {n: p.detach() for n, p in phi.items()} if cfg.first_order else phi
            grads = grad(support_loss)(at, xs, ys)
            phi = {n: p - cfg.inner_lr * grads[n] for n, p in phi.items()}
        return loss_fn(functional_call(model, phi, (xq,)), yq)

    return vmap(task_loss, in_dims=(None, 0, 0, 0, 0), randomness="different")


def make(model, cfg):
    batched = meta_loss_fn(model, cfg)

    def step(batch):
        zero_grads(model)
        batched(dict(model.named_parameters()), *batch).mean().backward()

    return step
