"""The measurements behind iMAML's defaults (docs/imaml.md, "Defaults"): for each setting, on 25
tasks, how many CG solves converge (and how many break down: an indefinite I + H / lam) and how
many inner problems are stationary to inner_tol, at initialisation or along a meta-training run;
and the meta-gradient's error against a dense-Hessian solve.

    python docs/imaml_sweep.py init --task sine --grid doc      # the grid at initialisation (the docs' table)
    python docs/imaml_sweep.py init --task omniglot --grid omniglot --batching loop --tasks 20
    python docs/imaml_sweep.py train --task sine --iters 300    # the defaults along meta-training
    python docs/imaml_sweep.py dense                            # error against a dense solve, sine, float64
"""

import argparse
import itertools
import json
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call

from fastmaml.algorithms.imaml import IMAML
from fastmaml.execution.taskmap import TaskMap
from fastmaml.models import conv4
from fastmaml.tasks.sine import SineTasks, sine_mlp

# (lam, cg_steps, cg_damping, inner_steps, inner_lr)
GRIDS = {
    "full": list(itertools.product((1.0, 2.0, 5.0, 10.0, 20.0), (5, 10, 20), (0.0, 0.5), ((10, 0.01), (20, 0.03)))),
    "small": list(itertools.product((1.0, 5.0, 10.0, 20.0), (5, 10), (0.0, 0.5), ((10, 0.01),))),
    "omniglot": list(itertools.product((1.0, 10.0, 20.0), (10,), (0.0,), ((30, 0.01),))),
    "omniglot100": [(100.0, 10, 0.0, (30, 0.01))],
    "omniglot-a": [(100.0, 10, 0.0, (30, 0.003))],
    "omniglot-b": [(50.0, 10, 0.0, (30, 0.005))],
    "omniglot-c": [(100.0, 30, 0.0, (100, 0.003))],
    "omniglot-d": [(200.0, 20, 0.0, (50, 0.002))],
    "omniglot-e": [(300.0, 20, 0.0, (50, 0.003)), (500.0, 20, 0.0, (30, 0.002)), (20.0, 10, 10.0, (30, 0.01))],
    "omniglot-damped": [(5.0, 10, 5.0, (30, 0.01)), (5.0, 10, 1.0, (30, 0.01)), (5.0, 10, 2.0, (30, 0.01)),
                        (10.0, 10, 5.0, (30, 0.01)), (2.0, 10, 5.0, (30, 0.01))],
    "doc": list(itertools.product((1.0, 2.0, 5.0, 10.0, 20.0), (5, 10), (0.0,), ((10, 0.01), (30, 0.01)))),
    "focus": list(itertools.product((10.0, 20.0), (10, 15), (0.0,), ((20, 0.02), (30, 0.02), (50, 0.02), (30, 0.03)))),
}


def task_setup(task, tasks, seed=0, root="../shared/data/omniglot"):
    """(model, loss, sampler of batches)."""
    torch.manual_seed(seed)
    if task == "sine":
        stream = SineTasks(k_shot=10, q_query=10, seed=seed)
        return sine_mlp(40), F.mse_loss, lambda: stream.sample(tasks).tensors()
    from fastmaml.tasks.omniglot import load_split
    from fastmaml.tasks.sampler import FewShotSampler
    data = load_split("small", "train", root=root)
    sampler = FewShotSampler(data.images, data.labels, 5, 1, 5, seed=seed)
    return conv4(5), F.cross_entropy, lambda: sampler.sample(tasks).tensors()


def outcome(learner, batch, loss_fn):
    learner.zero_grad()
    learner.meta_loss(*batch, loss_fn).backward()
    cg, inner = learner.last_cg_report, learner.last_inner_report
    return {"cg_converged": int(cg.converged.sum()), "cg_breakdown": int(cg.breakdown.sum()),
            "inner_stationary": int(inner.stationary.sum()), "tasks": int(cg.converged.numel()),
            "inner_residual_median": inner.relative_residual.median().item()}


def make(model, lam, cg_steps, damping, inner, batching):
    steps, lr = inner
    return IMAML(model, lam=lam, inner_lr=lr, inner_steps=steps, cg_steps=cg_steps, cg_damping=damping,
                 on_cg_fail="ignore", on_inner_fail="ignore", batching=batching)


def sweep_init(args):
    model, loss_fn, sample = task_setup(args.task, args.tasks, root=args.data_root)
    batch = sample()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for lam, cg_steps, damping, inner in GRIDS[args.grid]:
        model.load_state_dict(state)
        start = time.perf_counter()
        row = {"task": args.task, "lam": lam, "cg_steps": cg_steps, "cg_damping": damping, "inner_steps": inner[0],
               "inner_lr": inner[1], **outcome(make(model, lam, cg_steps, damping, inner, args.batching), batch, loss_fn)}
        emit(args, row, time.perf_counter() - start)


def sweep_train(args):
    model, loss_fn, sample = task_setup(args.task, args.tasks, root=args.data_root)
    chosen = {k: v for k, v in (("lam", args.lam), ("inner_steps", args.inner_steps), ("cg_steps", args.cg_steps),
                                ("inner_lr", args.inner_lr), ("cg_damping", args.cg_damping)) if v is not None}  # None: the defaults
    learner = IMAML(model, on_cg_fail="ignore", on_inner_fail="ignore", batching=args.batching, **chosen)
    opt = torch.optim.Adam(learner.parameters(), lr=args.meta_lr)
    for it in range(args.iters + 1):
        row = outcome(learner, sample(), loss_fn)
        if it % args.every == 0:
            emit(args, {"task": args.task, "iteration": it, "lam": learner.lam, "cg_steps": learner.cg_steps,
                        "cg_damping": learner.cg_damping,
                        "inner_steps": learner.inner_steps, "inner_lr": learner.inner_lr, **row}, 0.0)
        opt.step()


def emit(args, row, seconds):
    print(json.dumps(row), f"({seconds:.1f} s)", flush=True)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(row) + "\n")


def dense(args):
    """The defaults' meta-gradient on 8 sine tasks (float64) against (I + H/lam)^-1 grad L_q from dense
    Hessians, at the same inner solution (the CG error) and at a converged one (3000 inner steps:
    the CG and inner-loop error together)."""
    torch.manual_seed(0)
    model = sine_mlp(40).double()
    sx, sy, qx, qy = (t.double() for t in SineTasks(k_shot=10, q_query=10, seed=0).sample(8).tensors())
    learner = IMAML(model, on_cg_fail="ignore", on_inner_fail="ignore", batching="vmap")
    learner.zero_grad()
    learner.meta_loss(sx, sy, qx, qy, F.mse_loss).backward()
    ours = torch.cat([p.grad.flatten() for p in model.parameters()])
    theta = dict(model.named_parameters())
    names, shapes = list(theta), [p.shape for p in theta.values()]

    def unflat(f):
        return {n: x.view(s) for n, x, s in zip(names, torch.split(f, [s.numel() for s in shapes]), shapes)}

    def solve(steps, lr):
        phi = learner.solve_inner(TaskMap(learner.module, True), theta, sx, sy, F.mse_loss, {}, steps=None)
        if steps is not None:
            saved = learner.inner_steps, learner.inner_lr
            learner.inner_steps, learner.inner_lr = steps, lr
            phi = learner.solve_inner(TaskMap(learner.module, True), theta, sx, sy, F.mse_loss, {})
            learner.inner_steps, learner.inner_lr = saved
        total = 0
        for t in range(sx.shape[0]):
            flat = torch.cat([phi[n][t].flatten() for n in names])
            H = torch.autograd.functional.hessian(lambda f: F.mse_loss(functional_call(model, unflat(f), (sx[t],)), sy[t]), flat)
            g = torch.autograd.functional.jacobian(lambda f: F.mse_loss(functional_call(model, unflat(f), (qx[t],)), qy[t]), flat)
            total = total + torch.linalg.solve(torch.eye(flat.numel(), dtype=H.dtype) + H / learner.lam, g) / sx.shape[0]
        return total

    for label, steps, lr in (("same inner solution", None, None), ("converged inner solution, 3000 steps", 3000, 0.01)):
        ref = solve(steps, lr)
        err = ((ours - ref).norm() / ref.norm()).item()
        cos = F.cosine_similarity(ours, ref, dim=0).item()
        emit(args, {"dense": label, "relative_error": err, "cosine": cos, "cg": learner.last_cg_report.converged.tolist()}, 0)


def dense_conv(args):
    """The meta-gradient at the given (default: Conv-4's) settings on 4 Omniglot tasks, float64, against
    references at the same inner solution: a CG solve of the same system to 1e-12 (500 steps; the CG
    error) and, for a model small enough (--hidden 8: 2k parameters), dense-Hessian solves of the same
    damped system and of the undamped (I + H/lam) x = grad L_q (the exact implicit gradient, so the
    damping's bias). `scale_free_error`: min over c of ||c g - g_ref|| / ||g_ref|| (the sine of the angle)."""
    from fastmaml.tasks.omniglot import load_split
    from fastmaml.tasks.sampler import FewShotSampler
    torch.manual_seed(0)
    model = conv4(5, hidden=args.hidden).double()
    data = load_split("small", "train", root=args.data_root)
    sx, sy, qx, qy = FewShotSampler(data.images, data.labels, 5, 1, 5, seed=0).sample(4).tensors()
    sx, qx = sx.double(), qx.double()
    settings = {k: v for k, v in (("lam", args.lam), ("inner_steps", args.inner_steps), ("cg_steps", args.cg_steps),
                                  ("inner_lr", args.inner_lr), ("cg_damping", args.cg_damping)) if v is not None}
    settings = {**IMAML.defaults_for(model), **settings}

    def grad_of(**overrides):
        learner = IMAML(model, on_cg_fail="ignore", on_inner_fail="ignore", batching="loop", **{**settings, **overrides})
        model.zero_grad()
        learner.meta_loss(sx, sy, qx, qy, F.cross_entropy).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()]), learner

    ours, learner = grad_of()
    refs = {"CG to 1e-12 (500 steps), same system": grad_of(cg_steps=500, cg_tol=1e-12)[0]}
    if sum(p.numel() for p in model.parameters()) <= 5000:
        theta = dict(model.named_parameters())
        names, shapes = list(theta), [p.shape for p in theta.values()]

        def unflat(f):
            return {n: x.view(s) for n, x, s in zip(names, torch.split(f, [s.numel() for s in shapes]), shapes)}

        phi = learner.solve_inner(TaskMap(learner.module, False), theta, sx, sy, F.cross_entropy, None)
        for label, damping in (("dense, same damped system", learner.cg_damping), ("dense, undamped (I + H/lam)", 0.0)):
            total = 0
            for t in range(sx.shape[0]):
                flat = torch.cat([phi[n][t].flatten() for n in names])
                H = torch.func.hessian(lambda f: F.cross_entropy(functional_call(model, unflat(f), (sx[t],)), sy[t]))(flat)
                g = torch.func.grad(lambda f: F.cross_entropy(functional_call(model, unflat(f), (qx[t],)), qy[t]))(flat)
                eye = torch.eye(flat.numel(), dtype=H.dtype)
                total = total + torch.linalg.solve((1 + damping) * eye + H / learner.lam, g) / sx.shape[0]
            refs[label] = total
    for label, ref in refs.items():
        cos = F.cosine_similarity(ours, ref, dim=0).item()
        emit(args, {"dense_conv": label, "hidden": args.hidden, **settings,
                    "relative_error": ((ours - ref).norm() / ref.norm()).item(), "cosine": cos,
                    "scale_free_error": max(0.0, 1 - cos * cos) ** 0.5, "norm_ratio": (ours.norm() / ref.norm()).item(),
                    "cg": learner.last_cg_report.converged.tolist(),
                    "inner_residual": learner.last_inner_report.relative_residual.tolist()}, 0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("init", "train", "dense", "dense-conv"))
    p.add_argument("--hidden", type=int, default=8, help="dense-conv: Conv-4's channels")
    p.add_argument("--task", choices=("sine", "omniglot"), default="sine")
    p.add_argument("--grid", choices=list(GRIDS), default="full")
    p.add_argument("--tasks", type=int, default=25)
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--meta-lr", type=float, default=1e-3)
    p.add_argument("--batching", default="vmap")
    p.add_argument("--data-root", default="../shared/data/omniglot")
    for name, kind in (("--lam", float), ("--inner-steps", int), ("--cg-steps", int), ("--inner-lr", float),
                       ("--cg-damping", float)):
        p.add_argument(name, type=kind, help="train: instead of the default")
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(1)
    {"init": sweep_init, "train": sweep_train, "dense": dense, "dense-conv": dense_conv}[args.what](args)


if __name__ == "__main__":
    main()
