"""iMAML at its defaults against the pre-trained baseline on sine (docs/results.md, "iMAML against
the pre-trained baseline"): the baseline of `fastmaml demo` (issue 5), the same MLP 1-40-40-1 trained
by plain regression on the same task stream (support and query points of every task, Adam 1e-3,
meta-batch 25, as many steps). Both are then adapted on the K = 10 support points of 100 held-out
tasks (100 query points each) in two ways: iMAML's own inner loop (30 gradient steps of 0.01 on the
proximal loss, lam 20) and plain SGD at 0.01 for 1 and 10 steps (the demo's fine-tuning). The
figure of merit is iMAML's query MSE after its inner loop over the baseline's best of those.

    python docs/imaml_baseline.py --seeds 0,1,2 --iters 3000 --json docs/results/imaml_baseline.jsonl
"""

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

import fastmaml
from fastmaml.algorithms.imaml import IMAML
from fastmaml.functional import functional_forward
from fastmaml.tasks.sine import SineTasks, sine_mlp

META_BATCH, META_LR, SGD_LR = 25, 1e-3, 0.01


def sgd_mse(net, batch, steps):
    """Mean query MSE after `steps` plain SGD steps on each task's support set."""
    sx, sy, qx, qy = batch.tensors()
    out = []
    for t in range(sx.shape[0]):
        phi = {n: p.detach().requires_grad_() for n, p in net.named_parameters()}
        for _ in range(steps):
            loss = F.mse_loss(functional_forward(net, phi, sx[t]), sy[t])
            grads = dict(zip(phi, torch.autograd.grad(loss, list(phi.values()))))
            phi = {n: p.detach().requires_grad_() for n, p in fastmaml.inner_update(phi, grads, SGD_LR).items()}
        with torch.no_grad():
            out.append(F.mse_loss(functional_forward(net, phi, qx[t]), qy[t]).item())
    return sum(out) / len(out)


def proximal_mse(net, batch):
    """Mean query MSE after iMAML's inner loop at its defaults (no meta-gradient)."""
    with torch.no_grad():
        return IMAML(net, on_cg_fail="ignore", on_inner_fail="ignore").meta_loss(*batch.tensors(), F.mse_loss).item()


def run(seed, iters, every):
    torch.manual_seed(seed)
    imaml = IMAML(sine_mlp(), on_cg_fail="ignore", on_inner_fail="ignore")
    opt = torch.optim.Adam(imaml.parameters(), lr=META_LR)
    stream, converged, stationary, seen, trace = SineTasks(k_shot=10, q_query=10, seed=seed), 0, 0, 0, []
    for it in range(iters):
        opt.zero_grad()
        loss = imaml.meta_loss(*stream.sample(META_BATCH).tensors(), F.mse_loss)
        loss.backward()
        opt.step()
        cg, inner = imaml.last_cg_report, imaml.last_inner_report
        converged += int(cg.converged.sum())
        stationary += int(inner.stationary.sum())
        seen += META_BATCH
        if it % every == 0 or it == iters - 1:
            trace.append({"iteration": it, "meta_loss": loss.item(), "cg_converged": int(cg.converged.sum()),
                          "cg_breakdown": int(cg.breakdown.sum()), "inner_stationary": int(inner.stationary.sum()),
                          "inner_residual_median": inner.relative_residual.median().item(),
                          "inner_lr_min": inner.inner_lr.min().item()})
            print(f"seed {seed} {json.dumps(trace[-1])}", file=sys.stderr, flush=True)
    torch.manual_seed(seed)
    baseline = sine_mlp()
    opt = torch.optim.Adam(baseline.parameters(), lr=META_LR)
    stream = SineTasks(k_shot=10, q_query=10, seed=seed)  # the same task stream
    for _ in range(iters):
        b = stream.sample(META_BATCH)
        opt.zero_grad()
        F.mse_loss(baseline(torch.cat([b.support_x, b.query_x], 1)), torch.cat([b.support_y, b.query_y], 1)).backward()
        opt.step()
    held_out = SineTasks(k_shot=10, q_query=100, seed=seed + 1_000_003).sample(100)
    mse = {name: {"imaml inner loop": proximal_mse(net, held_out),
                  **{f"sgd {k}": sgd_mse(net, held_out, k) for k in (0, 1, 10)}}
           for name, net in (("imaml", imaml.module), ("baseline", baseline))}
    best_baseline = min(v for k, v in mse["baseline"].items() if k != "sgd 0")
    return {"mse": mse, "ratio": mse["imaml"]["imaml inner loop"] / best_baseline,
            "cg_converged_fraction": converged / seen, "inner_stationary_fraction": stationary / seen, "trace": trace}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--iters", type=int, default=3000)
    p.add_argument("--every", type=int, default=100, help="record CG and inner-loop outcomes every this many iterations")
    p.add_argument("--json", help="append one JSON line per seed to this file")
    args = p.parse_args()
    torch.set_num_threads(1)
    for seed in map(int, args.seeds.split(",")):
        start = time.perf_counter()
        row = {"seed": seed, "iters": args.iters, **run(seed, args.iters, args.every), "seconds": time.perf_counter() - start}
        print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
