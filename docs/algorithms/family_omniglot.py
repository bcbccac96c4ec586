"""Omniglot 5-way 1-shot for MAML, L2F and WarpGrad at the same budget (docs/results.md, "Omniglot:
L2F and WarpGrad against MAML"): the library's Conv-4 and the small split of fastmaml train
(meta-train on images_background_small1 x 4 rotations, evaluate on three alphabets of
images_background_small2 never trained on), the same seed, iterations, tasks per meta-step, inner
rate and steps for every algorithm; held-out accuracy after 1 and 3 inner steps on fixed tasks.

    python docs/algorithms/family_omniglot.py --algo maml --seeds 0 --iters 300 --data-root ../shared/data/omniglot \
        --json docs/results/family_omniglot.jsonl
    python docs/algorithms/family_omniglot.py --table docs/results/family_omniglot.jsonl

Recipe: Conv-4 (64 channels, batch norm from the batch), inner lr 0.4, 1 inner step in training, 3 at
evaluation, 8 tasks a meta-step (5 query images a class), Adam 1e-3, meta-gradient clipped to norm 10.
MAML: second order. L2F: second order through its attenuator. WarpGrad: conv4(warp=True) (a 3x3
convolutional warp after each block's ReLU, identity at start: 4 x 64 x 64 x 9 more meta-parameters,
the task learner the same size), the paper's trajectory objective with a replay buffer of 64 points,
the warps at a third of the rate.
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F

import fastmaml
from fastmaml.models import conv4
from fastmaml.tasks.omniglot import load_split
from fastmaml.tasks.sampler import FewShotSampler
from fastmaml.train.evaluate import evaluate

LR, INNER_LR, TRAIN_STEPS, EVAL_STEPS = 1e-3, 0.4, 1, [1, 3]


def make(algo):
    if algo == "maml":
        return fastmaml.MAML(conv4(5), INNER_LR, TRAIN_STEPS, batching="loop"), []
    if algo == "l2f":
        return fastmaml.L2F(conv4(5), INNER_LR, TRAIN_STEPS, batching="loop"), []
    learner = fastmaml.WarpGrad(conv4(5, warp=True), INNER_LR, TRAIN_STEPS, warp_names="*.warp.*",
                                batching="loop", buffer_size=64)
    return learner, list(learner.warp_parameters())


def run(algo, seed, iters, tasks, root, eval_tasks):
    torch.manual_seed(seed)
    learner, slow = make(algo)
    rest = [p for p in learner.parameters() if all(p is not s for s in slow)]
    opt = torch.optim.Adam([{"params": rest, "lr": LR}] + ([{"params": slow, "lr": LR / 3}] if slow else []))
    data = load_split("small", "train", root=root)
    stream = FewShotSampler(data.images, data.labels, 5, 1, 5, seed=seed)
    for _ in range(iters):
        opt.zero_grad()
        learner.meta_loss(*stream.sample(tasks).tensors(), F.cross_entropy).backward()
        torch.nn.utils.clip_grad_norm_(learner.parameters(), 10.0)
        opt.step()
    test = load_split("small", "test", root=root)
    held_out = FewShotSampler(test.images, test.labels, 5, 1, 15, seed=1_000_003)
    return evaluate(learner, held_out, F.cross_entropy, "accuracy", eval_tasks, steps=EVAL_STEPS, batching="loop")


def table(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    print("| algorithm | seed | iterations × tasks | accuracy, 1 step | 3 steps | wall time |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        acc = {int(k): v for k, v in r["accuracy"].items()}
        print(f"| {r['algo']} | {r['seed']} | {r['iters']} × {r['tasks']} | "
              + " | ".join(f"{100 * acc[k][0]:.1f} ± {100 * acc[k][1]:.1f}" for k in EVAL_STEPS)
              + f" | {r['seconds'] / 60:.0f} min |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algo", choices=["maml", "l2f", "warpgrad"])
    p.add_argument("--table", metavar="JSONL", help="print the table of a --json file and exit")
    p.add_argument("--seeds", default="0")
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--eval-tasks", type=int, default=200)
    p.add_argument("--data-root", default=None)
    p.add_argument("--json", help="append one JSON line per seed to this file")
    args = p.parse_args()
    if args.table:
        return table(args.table)
    if args.algo is None:
        p.error("--algo is required")
    torch.set_num_threads(1)
    for seed in map(int, args.seeds.split(",")):
        start = time.perf_counter()
        res = run(args.algo, seed, args.iters, args.tasks, args.data_root, args.eval_tasks)
        acc = {c["inner_steps"]: (c["mean"], c["ci95"]) for c in res["curve"]}
        row = {"algo": args.algo, "seed": seed, "iters": args.iters, "tasks": args.tasks,
               "eval_tasks": args.eval_tasks, "accuracy": acc, "seconds": time.perf_counter() - start}
        print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
