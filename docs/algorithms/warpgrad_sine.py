"""The measurements of docs/algorithms/warpgrad.md: WarpGrad meta-trained on sine as in the learning
tests, per task-stream seed: query MSE after / before adaptation and the warp layers' spectral norms;
--trace N also prints every N iterations the norms, the mean support loss over the inner steps on 8
probe tasks and the meta-gradient norms.

    python docs/algorithms/warpgrad_sine.py --face init  --iters 200 --seeds 0,1,2,3,4  # test_init.py
    python docs/algorithms/warpgrad_sine.py --face class --iters 150 --tasks 10          # test_mtnet_warpgrad.py
    python docs/algorithms/warpgrad_sine.py --warp-lr 3e-3 --iters 150 --trace 10 --seeds 0
"""

import argparse
import time

import torch
import torch.nn.functional as F

import fastmaml
from fastmaml.tasks.sine import SineTasks, sine_mlp


def mse(state):
    return F.mse_loss(state["model"](state["data"]), state["target"])


def norms(learner):
    return " ".join(f"{torch.linalg.matrix_norm(w.detach().nan_to_num(), 2).item():.2f}"
                    for w in learner.warp_parameters())


def support_curve(learner, probe):
    losses = torch.zeros(learner.inner_steps + 1)
    for t in range(probe.support_x.shape[0]):
        x, y = probe.support_x[t], probe.support_y[t]
        for k, phi in enumerate(learner.inner_loop(learner.params(), x, y, F.mse_loss)):
            losses[k] += F.mse_loss(learner(x, phi), y).item() / probe.support_x.shape[0]
    return " ".join(f"{v:.2f}" for v in losses.tolist())


def run(args, seed):
    torch.manual_seed(0)
    model = sine_mlp(40)  # the tests' sine_net: one initialisation, the task stream varies
    if args.face == "init":
        init = fastmaml.Init(model, mse, mse, inner_learning_rate=0.01, inner_loop=5, use_warp=True)
        learner = init.learner
    else:
        learner = fastmaml.WarpGrad(model, inner_lr=0.01, inner_steps=5, batching="vmap")
    warps = learner.warp_parameters()
    rest = [p for p in learner.parameters() if all(p is not w for w in warps)]
    opt = torch.optim.Adam([{"params": rest, "lr": args.lr}, {"params": warps, "lr": args.warp_lr}])
    stream, probe = SineTasks(seed=seed), SineTasks(seed=999).sample(8)
    for it in range(args.iters):
        b = stream.sample(args.tasks)
        opt.zero_grad()
        if args.face == "init":
            for t in range(args.tasks):
                init.optimize(b.support_x[t], b.support_y[t], b.query_x[t], b.query_y[t])
        else:
            learner.meta_loss(*b.tensors(), F.mse_loss).backward()
        if args.trace and it % args.trace == 0:
            grad = [torch.cat([p.grad.flatten() for p in ps if p.grad is not None]).norm().item() for ps in (rest, warps)]
            print(f"  it {it:4d}  |warp|_2 {norms(learner)}  support loss by step {support_curve(learner, probe)}"
                  f"  meta-grad init {grad[0]:.3g} warp {grad[1]:.3g}")
        opt.step()
    ev = SineTasks(seed=12345).sample(100)
    with torch.no_grad():
        pre = torch.stack([F.mse_loss(learner(x), y) for x, y in zip(ev.query_x, ev.query_y)]).mean().item()
    post = learner.meta_loss(*ev.tensors(), F.mse_loss).item()
    return pre, post, norms(learner)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--face", choices=("init", "class"), default="init")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--tasks", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warp-lr", type=float, default=1e-3)
    p.add_argument("--trace", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    for seed in map(int, args.seeds.split(",")):
        start = time.perf_counter()
        pre, post, warp = run(args, seed)
        print(f"seed {seed}: query MSE before {pre:.3f} after {post:.3f} ratio {post / pre:.3f}  |warp|_2 {warp}"
              f"  ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
