"""`fastmaml demo`: MAML on the sine family against a pre-trained baseline of the same net.

Meta-trains MAML (1-40-40-1 ReLU MLP, K=10, meta-batch 25, inner lr 0.01, Adam 1e-3), trains
the baseline by plain regression on the same task stream, fine-tunes both 0, 1 and 10 steps on
the support sets of held-out tasks, prints the query MSE table and writes a figure and a JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

import fastmaml
from fastmaml.functional import functional_forward
from fastmaml.tasks import SineTasks, sine_mlp
from fastmaml.tasks.sine import SineBatch
from fastmaml.train.metrics import mean_ci95

FINE_TUNE_STEPS = (0, 1, 10)


class DeprecatedAlias(argparse.Action):
    """An old spelling of an option: stores into the new one's dest and warns."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: str | Sequence[Any] | None,
                 option_string: str | None = None) -> None:
        new = "--" + self.dest.replace("_", "-")
        warnings.warn(f"{option_string} is deprecated; use {new} (the same value)", FutureWarning, stacklevel=2)
        setattr(namespace, self.dest, values)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("demo", help="meta-train MAML on sine tasks (about a minute) and compare with a baseline",
                              description=__doc__)
    p.add_argument("--iterations", type=int, default=8000, help="meta-training iterations (default 8000)")
    p.add_argument("--meta-batch", type=int, default=25, help="tasks per meta-batch (default 25)")
    p.add_argument("--k-shot", type=int, default=10, help="support points per task (default 10)")
    p.add_argument("--inner-lr", type=float, default=0.01, help="inner-loop learning rate alpha (default 0.01)")
    p.add_argument("--meta-lr", type=float, default=1e-3,
                   help="Adam learning rate of the meta-optimizer (default 1e-3; as `fastmaml train --meta-lr`)")
    p.add_argument("--outer-lr", type=float, dest="meta_lr", action=DeprecatedAlias, help=argparse.SUPPRESS)
    p.add_argument("--eval-tasks", type=int, default=100, help="held-out tasks for the table (default 100)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: the sine MLP is too small to gain from more, and "
                        "extra threads only contend on a busy machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs", help="folder in which the run folder is created (default runs/)")
    p.set_defaults(func=run)


def _train(model: nn.Module, loss_of_batch: Callable[[SineBatch], Tensor], tasks: SineTasks,
           args: argparse.Namespace, desc: str) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=args.meta_lr)
    bar = tqdm(range(args.iterations), desc=desc, unit="it", mininterval=0.5)
    for i in bar:
        loss = loss_of_batch(tasks.sample(args.meta_batch))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i % 100 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")


def _fine_tuned_mse(net: nn.Module, batch: SineBatch, inner_lr: float) -> dict[int, list[float]]:
    """Query MSE of each task after 0, 1 and 10 plain SGD steps on its support set."""
    params = {n: p.detach() for n, p in net.named_parameters()}
    out: dict[int, list[float]] = {k: [] for k in FINE_TUNE_STEPS}
    for t in range(batch.support_x.shape[0]):
        phi = {n: p.requires_grad_() for n, p in copy.deepcopy(params).items()}
        for step in range(max(FINE_TUNE_STEPS) + 1):
            if step in out:
                with torch.no_grad():
                    pred = functional_forward(net, phi, batch.query_x[t])
                    out[step].append(F.mse_loss(pred, batch.query_y[t]).item())
            loss = F.mse_loss(functional_forward(net, phi, batch.support_x[t]), batch.support_y[t])
            grads = dict(zip(phi, torch.autograd.grad(loss, list(phi.values()))))
            phi = {n: p.detach().requires_grad_() for n, p in fastmaml.inner_update(phi, grads, inner_lr).items()}
    return out


def _predict_after(net: nn.Module, batch: SineBatch, t: int, x: Tensor, steps: int, inner_lr: float) -> Tensor:
    phi = {n: p.detach().clone().requires_grad_() for n, p in net.named_parameters()}
    for _ in range(steps):
        loss = F.mse_loss(functional_forward(net, phi, batch.support_x[t]), batch.support_y[t])
        grads = dict(zip(phi, torch.autograd.grad(loss, list(phi.values()))))
        phi = {n: p.detach().requires_grad_() for n, p in fastmaml.inner_update(phi, grads, inner_lr).items()}
    with torch.no_grad():
        return functional_forward(net, phi, x)


def _figure(path: str, nets: dict[str, nn.Module], batch: SineBatch, inner_lr: float, tasks: int = 3) -> None:
    """`fastmaml plot`'s sine figure (fastmaml.train.plots.sine_figure): each net before and after
    10 SGD steps on the support points."""
    from fastmaml.train import plots, style

    curves = [(f"{name}, {steps} step{'s' if steps != 1 else ''}", style.COLORS[name], style.STEP_STYLES[steps],
               lambda t, x, net=net, steps=steps: _predict_after(net, batch, t, x, steps, inner_lr))
              for name, net in nets.items() for steps in (0, 10)]
    title = f"sine, K={batch.support_x.shape[1]}: MAML vs a pre-trained net, fine-tuned with SGD lr {inner_lr}"
    style.save(plots.sine_figure(batch, curves, title, tasks), path)


def run(args: argparse.Namespace) -> int:
    from fastmaml.cli import CommandError
    from fastmaml.commands import _args

    for name in ("iterations", "meta_batch", "k_shot", "eval_tasks", "threads"):
        _args.at_least(name, getattr(args, name), 1)
    _args.number("inner_lr", args.inner_lr)
    _args.number("meta_lr", args.meta_lr)
    _args.writable_dir("--out", args.out)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    run_dir = os.path.join(args.out, time.strftime("demo-%Y%m%d-%H%M%S"))
    os.makedirs(run_dir, exist_ok=True)
    start = time.time()

    maml = fastmaml.MAML(sine_mlp(), inner_lr=args.inner_lr, inner_steps=1)
    train_tasks = SineTasks(k_shot=args.k_shot, q_query=10, seed=args.seed)
    _train(maml, lambda b: maml.meta_loss(*b.tensors(), F.mse_loss), train_tasks, args, "MAML")
    maml_time = time.time() - start

    baseline = sine_mlp()
    train_tasks = SineTasks(k_shot=args.k_shot, q_query=10, seed=args.seed)  # the same task stream
    _train(baseline, lambda b: F.mse_loss(baseline(torch.cat([b.support_x, b.query_x], 1)),
                                          torch.cat([b.support_y, b.query_y], 1)), train_tasks, args, "baseline")

    held_out = SineTasks(k_shot=args.k_shot, q_query=100, seed=args.seed + 1_000_003).sample(args.eval_tasks)
    nets = {"MAML": maml.module, "pre-trained": baseline}
    results = {name: _fine_tuned_mse(net, held_out, args.inner_lr) for name, net in nets.items()}

    print(f"\nquery MSE on {args.eval_tasks} held-out sine tasks (mean ± 95% CI), fine-tuned with SGD lr {args.inner_lr} "
          f"on K={args.k_shot} support points")
    print(f"{'model':<14}" + "".join(f"{f'{k} steps':>18}" for k in FINE_TUNE_STEPS))
    summary: dict[str, dict[int, dict[str, float]]] = {}
    for name, per_step in results.items():
        row: dict[int, dict[str, float]] = {}
        for k, values in per_step.items():
            mean, ci95 = mean_ci95(values)
            row[k] = {"mean": mean, "ci95": ci95}
        summary[name] = row
        print(f"{name:<14}" + "".join(f"{row[k]['mean']:>11.3f} ± {row[k]['ci95']:.3f}" if math.isfinite(row[k]["mean"])
                                      else f"{'diverged':>18}" for k in FINE_TUNE_STEPS))
    ratio = summary["MAML"][1]["mean"] / summary["pre-trained"][1]["mean"]
    diverged = not math.isfinite(ratio)
    print("MAML after 1 step / pre-trained after 1 step: " + ("diverged" if diverged else f"{ratio:.3f}"))

    figure = os.path.join(run_dir, "sine_adaptation.png")
    _figure(figure, nets, held_out, args.inner_lr, tasks=min(3, args.eval_tasks))
    record = {
        "command": "fastmaml demo", "args": {k: v for k, v in vars(args).items() if k != "func"},
        "query_mse": {name: {str(k): v for k, v in row.items()} for name, row in summary.items()},
        "maml_over_baseline_after_1_step": ratio, "maml_train_seconds": maml_time,
        "total_seconds": time.time() - start, "backend": fastmaml.ops.resolve_backend(torch.device("cpu")),
        "torch": torch.__version__, "machine": platform.machine(), "cpus": os.cpu_count(),
    }
    with open(os.path.join(run_dir, "results.json"), "w") as f:
        json.dump(record, f, indent=2)
    print(f"wrote {figure} and {os.path.join(run_dir, 'results.json')} ({time.time() - start:.0f} s in all)")
    if diverged:
        raise CommandError(f"the query MSE is not finite (NaN or inf): --inner-lr {args.inner_lr} or --meta-lr "
                           f"{args.meta_lr} is too large for this network")
    return 0
