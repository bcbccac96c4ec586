"""The three-seed sine runs of docs/results.md ("The family on three seeds"): meta-train one
algorithm on the sine family per seed (the seed draws the initialisation and the task stream), then
report the query MSE over 100 held-out tasks before adaptation and after 1 and 5 inner steps.

    python docs/algorithms/family_sine.py --algo l2f --seeds 0,1,2 --iters 2000
    python docs/algorithms/family_sine.py --algo warpgrad --seeds 0,1,2 --iters 2000 --json out.jsonl
    python docs/algorithms/family_sine.py --table out.jsonl          # the markdown table of docs/results.md

Recipe (RECIPES below): MLP 1-40-40-1, inner lr 0.01, 5 inner steps in training, 10 tasks a
meta-step (K = 10 support, 10 query points), Adam; the learned inner-loop machinery (ALFA's
generator and per-step values, MT-net's T-layers and mask logits, WarpGrad's warp layers) at its
own, smaller rate; every
meta-gradient clipped to norm 10.
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F

import fastmaml
from fastmaml.tasks.sine import SineTasks, sine_mlp


class ALFAAllSteps(fastmaml.ALFA):
    """ALFA trained on the query loss after every inner step, uniformly weighted (MAML++'s multi-step
    loss without its annealing): the 5-step recipe whose first step must also do well. Evaluation
    (`every_step = False`) scores the last step only, as for every other algorithm."""
    every_step = True

    def task_loss(self, trajectory, query_x, query_y, loss_fn, buffers):
        if not self.every_step:
            return super().task_loss(trajectory, query_x, query_y, loss_fn, buffers)
        return sum(self.query_loss(p, query_x, query_y, loss_fn, buffers, None) for p in trajectory[1:]) / (len(trajectory) - 1)


# algo -> (constructor, Adam rate, rate of the slow group, slow group)
RECIPES = {  # constructors of (model, inner steps)
    "maml": (lambda m, k: fastmaml.MAML(m, 0.01, k, batching="vmap"), 3e-3, None, lambda a: []),
    "l2f": (lambda m, k: fastmaml.L2F(m, 0.01, k, batching="vmap"), 3e-3, None, lambda a: []),
    "alfa": (lambda m, k: fastmaml.ALFA(m, 0.01, k, batching="vmap"), 3e-3, 3e-4,
             lambda a: [*a.generator.parameters(), a.alpha0, a.beta0]),
    "alfa-msl": (lambda m, k: ALFAAllSteps(m, 0.01, k, batching="vmap"), 3e-3, 3e-4,
                 lambda a: [*a.generator.parameters(), a.alpha0, a.beta0]),
    "mtnet": (lambda m, k: fastmaml.MTNet(m, 0.01, k, mask="sampled", batching="vmap"), 3e-3, 3e-4,
              lambda a: [*(dict(a.module.named_parameters())[n] for n in a.transform_names), *a.mask_logits.values()]),
    "warpgrad": (lambda m, k: fastmaml.WarpGrad(m, 0.01, k, batching="vmap", buffer_size=100), 3e-3, 1e-3,
                 lambda a: a.warp_parameters()),
}


def query_mse(learner, ev, steps):
    saved, learner.inner_steps = learner.inner_steps, steps
    learner.every_step = False  # ALFAAllSteps: the loss after the last step
    try:
        if steps == 0:
            with torch.no_grad():
                return torch.stack([F.mse_loss(learner(x), y) for x, y in zip(ev.query_x, ev.query_y)]).mean().item()
        return learner.meta_loss(*ev.tensors(), F.mse_loss).item()
    finally:
        learner.inner_steps = saved


def run(algo, seed, iters, tasks, inner_steps):
    make, lr, slow_lr, slow_of = RECIPES[algo]
    torch.manual_seed(seed)
    learner = make(sine_mlp(40), inner_steps)
    slow = list(slow_of(learner))
    rest = [p for p in learner.parameters() if all(p is not s for s in slow)]
    opt = torch.optim.Adam([{"params": rest, "lr": lr}] + ([{"params": slow, "lr": slow_lr}] if slow else []))
    stream = SineTasks(k_shot=10, q_query=10, seed=seed)
    for _ in range(iters):
        opt.zero_grad()
        learner.meta_loss(*stream.sample(tasks).tensors(), F.mse_loss).backward()
        torch.nn.utils.clip_grad_norm_(learner.parameters(), 10.0)
        opt.step()
    ev = SineTasks(k_shot=10, q_query=10, seed=12345).sample(100)
    return {k: query_mse(learner, ev, k) for k in (0, 1, 5)}


def fmt(v):
    return f"{v:.3f}" if v < 1000 else f"{v:.2g}"  # a diverged run: its order of magnitude (or inf)


def table(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    print("| algorithm | inner steps (training) | seed | iterations | query MSE, 0 steps | 1 step | 5 steps "
          "| ratio 1 step / 0 | ratio 5 steps / 0 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in sorted(rows, key=lambda r: (list(RECIPES).index(r["algo"]), r.get("inner_steps", 5), r["seed"])):
        m = r["mse"]
        cells = [m["0"], m["1"], m["5"], r["ratio_1"], r["ratio_5"]]
        print(f"| {r['algo']} | {r.get('inner_steps', 5)} | {r['seed']} | {r['iters']} | "
              + " | ".join(fmt(v) for v in cells) + " |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algo", choices=list(RECIPES))
    p.add_argument("--table", metavar="JSONL", help="print the table of a --json file and exit")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--tasks", type=int, default=10)
    p.add_argument("--inner-steps", type=int, default=5, help="inner steps in training")
    p.add_argument("--json", help="append one JSON line per seed to this file")
    args = p.parse_args()
    if args.table:
        return table(args.table)
    if args.algo is None:
        p.error("--algo is required")
    torch.set_num_threads(1)
    for seed in map(int, args.seeds.split(",")):
        start = time.perf_counter()
        mse = run(args.algo, seed, args.iters, args.tasks, args.inner_steps)
        row = {"algo": args.algo, "seed": seed, "iters": args.iters, "inner_steps": args.inner_steps, "mse": mse,
               "ratio_1": mse[1] / mse[0], "ratio_5": mse[5] / mse[0], "seconds": time.perf_counter() - start}
        print(f"{args.algo} seed {seed}: MSE 0 steps {mse[0]:.3f}, 1 step {mse[1]:.3f}, 5 steps {mse[5]:.3f}; "
              f"ratio 1 step {row['ratio_1']:.3f}, 5 steps {row['ratio_5']:.3f} ({row['seconds']:.0f} s)", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
