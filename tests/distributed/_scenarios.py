"""Scenarios run both by one process (DistContext(): a no-op) and by each rank of a torchrun job:
the results must agree. Also the script torchrun launches:

    torchrun --standalone --nproc_per_node=2 tests/distributed/_scenarios.py OUT_DIR [SCENARIO]

Each rank writes OUT_DIR/rank<r>.pt.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as Fn
from torch import nn

from fastmaml import MAML, MetaSGD, Reptile, distributed
from fastmaml.tasks.sine import SineTasks, sine_mlp

META_BATCH = 5   # 3 + 2 over two ranks: uneven on purpose
STEPS = 3


def sine_net(seed=0):
    torch.manual_seed(seed)
    return sine_mlp(hidden=16, layers=2).double()


def bn_net(seed=0):
    """A model with running statistics (floating buffers), run under vmap."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(1, 8, bias=False), nn.BatchNorm1d(8, track_running_stats=True), nn.ReLU(),
                         nn.Linear(8, 1)).double()


def params_of(learner):
    return {n: p.detach().clone() for n, p in learner.named_parameters()}


def grads_of(learner):
    return {n: None if p.grad is None else p.grad.detach().clone() for n, p in learner.named_parameters()}


def train(ctx, learner, optimizer, seed, steps=STEPS):
    """`steps` meta-steps through ctx.meta_step; returns the first meta-gradient, the losses and
    the final parameters and buffers."""
    tasks = SineTasks(k_shot=4, q_query=4, seed=seed, dtype=torch.float64)
    first, losses = None, []
    for _ in range(steps):
        shard = ctx.shard(tasks.sample(META_BATCH))
        losses.append(ctx.meta_step(learner, shard, Fn.mse_loss))
        if first is None:
            first = grads_of(learner)
        optimizer.step()
    return {"grad": first, "losses": torch.tensor(losses, dtype=torch.float64), "params": params_of(learner),
            "buffers": {n: b.clone() for n, b in learner.named_buffers()}}


def scenario_maml(ctx):
    maml = MAML(sine_net(), inner_lr=0.05, inner_steps=2, batching="loop")  # second order
    return train(ctx, maml, torch.optim.Adam(maml.parameters(), lr=1e-2), seed=1)


def scenario_maml_vmap_bn(ctx):
    maml = MAML(bn_net(), inner_lr=0.05, inner_steps=1, batching="vmap")
    return train(ctx, maml, torch.optim.Adam(maml.parameters(), lr=1e-2), seed=2)


def scenario_metasgd(ctx):
    learner = MetaSGD(sine_net(), inner_lr=0.05, inner_steps=1, batching="loop")
    return train(ctx, learner, torch.optim.SGD(learner.parameters(), lr=1e-2), seed=3)


def scenario_reptile_meta_grad(ctx):
    learner = Reptile(sine_net(), inner_lr=0.02, inner_steps=3, adapt_names=["0", "2"], batching="loop")
    return train(ctx, learner, torch.optim.SGD(learner.parameters(), lr=0.5), seed=4)


def scenario_reptile_outer_step(ctx):
    learner = Reptile(sine_net(), inner_lr=0.02, inner_steps=3, batching="loop")
    tasks = SineTasks(k_shot=4, q_query=4, seed=5, dtype=torch.float64)
    losses = []
    for _ in range(STEPS):
        shard = ctx.shard(tasks.sample(META_BATCH))
        if ctx.enabled:
            losses.append(ctx.outer_step(learner, shard, Fn.mse_loss, outer_lr=0.5))
        else:  # the learner's own in-place step over the whole batch
            sx, sy, _, _ = shard.tensors()
            losses.append(float(learner.step(sx, sy, Fn.mse_loss, outer_lr=0.5)))
    return {"losses": torch.tensor(losses, dtype=torch.float64), "params": params_of(learner)}


def scenario_trainer(ctx, run_dir=None):
    from fastmaml.train import MetaTrainer

    maml = MAML(sine_net(), inner_lr=0.05, inner_steps=1, batching="loop")
    tasks = SineTasks(k_shot=4, q_query=4, seed=6, dtype=torch.float64)
    trainer = MetaTrainer(maml, tasks, Fn.mse_loss, metric="mse", meta_lr=1e-2, meta_batch=META_BATCH,
                          iterations=STEPS, eval_tasks=None, log_every=1, run_dir=run_dir, progress=False,
                          dist=ctx)
    trainer.fit()
    return {"params": params_of(maml), "losses": torch.tensor([r["loss"] for r in trainer.logger.records
                                                               if r["kind"] == "train"], dtype=torch.float64)}


SCENARIOS = {name[len("scenario_"):]: fn for name, fn in globals().items() if name.startswith("scenario_")}


def run_all(ctx, names=None, run_dir=None):
    out = {}
    for name in names or SCENARIOS:
        fn = SCENARIOS[name]
        out[name] = fn(ctx, run_dir) if name == "trainer" else fn(ctx)
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    out_dir = sys.argv[1]
    names = sys.argv[2].split(",") if len(sys.argv) > 2 else None
    ctx = distributed.init_from_env("cpu", timeout=60)
    results = run_all(ctx, names, run_dir=os.path.join(out_dir, "run"))  # the same for every rank, as with the CLI
    results["stats"] = dict(ctx.stats)
    torch.save(results, os.path.join(out_dir, f"rank{ctx.rank}.pt"))
    ctx.destroy()
