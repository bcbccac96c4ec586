"""learn2learn 0.2.0, as its maml_sine example: maml.clone() per task, learner.adapt(loss) per
inner step, the mean query loss backward. MAML(first_order=...) for both orders."""

from __future__ import annotations

from bench.peers import installed_peer, zero_grads

NAME = "learn2learn"
_lib, available, version = installed_peer("learn2learn")


def make(model, cfg):
    maml = _lib().MAML(model, lr=cfg.inner_lr, first_order=cfg.first_order)
    loss_fn = cfg.loss_fn

    def step(batch):
        zero_grads(model)
        xs, ys, xq, yq = batch
        total = 0.0
        for t in range(xs.shape[0]):
            learner = maml.clone()
            for _ in range(cfg.steps):
                learner.adapt(loss_fn(learner(xs[t]), ys[t]))
            total = total + loss_fn(learner(xq[t]), yq[t])
        (total / xs.shape[0]).backward()

    return step
