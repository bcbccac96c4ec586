"""The task-batched layers' hand-written second derivatives against torch's own (NOTE: [grouped conv
double backward] in fastmaml/execution/batched/conv.py, NOTE: [batch norm double backward] in
batched/norm.py): a second-order MAML meta-step of Conv-4 5-way 1-shot (15 queries, 1 inner step)
in the batched mode, with both hand-written, with torch's for one of the two, and with torch's for
both, alternating in one process (the order reversed every round), at several task counts, with
the meta-gradients' relative difference to the all-hand-written step.

    python -m bench.bench_batched_derivatives                  # CPU, one thread -> bench/results/batched_derivatives_cpu.json
    python -m bench.bench_batched_derivatives --device cuda    # -> bench/results/batched_derivatives_cuda.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import fastmaml
from fastmaml.execution.batched import conv, norm
from fastmaml.models import conv4

ROOT = Path(__file__).resolve().parent.parent
# way -> (conv hand-written, batch norm hand-written)
WAYS = {"hand": (True, True), "torch_conv": (False, True), "torch_norm": (True, False), "torch": (False, False)}


def problem(tasks: int, device: torch.device):
    torch.manual_seed(0)
    model = conv4(n_way=5, hidden=64, image_size=28).to(device)
    learner = fastmaml.MAML(model, inner_lr=0.4, inner_steps=1, batching="batched")
    x = torch.rand(tasks, 20, 1, 28, 28, device=device)
    y = torch.arange(5, device=device).repeat(tasks, 4)
    return model, learner, (x[:, :5], y[:, :5], x[:, 5:], y[:, 5:])


def run_way(way: str, device: torch.device, step) -> float:
    conv.HAND_DERIVATIVE, norm.HAND_DERIVATIVE = WAYS[way]
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def measure(tasks: int, device: torch.device, rounds: int) -> dict:
    model, learner, batch = problem(tasks, device)

    def step():
        model.zero_grad()
        learner.meta_loss(*batch, F.cross_entropy).backward()

    grads = {}
    for way in WAYS:
        run_way(way, device, step)
        run_way(way, device, step)
        grads[way] = [p.grad.detach().double() for p in model.parameters()]
    scale = max(g.abs().max().item() for g in grads["hand"])
    times: dict[str, list[float]] = {way: [] for way in WAYS}
    for r in range(rounds):
        for way in (list(WAYS) if r % 2 == 0 else list(reversed(WAYS))):
            times[way].append(run_way(way, device, step))
    out: dict = {"tasks": tasks, "median_ms": {w: 1e3 * statistics.median(t) for w, t in times.items()}, "vs_hand": {}}
    for way in WAYS:
        ratios = sorted(t / h for t, h in zip(times[way], times["hand"]))
        diff = max((a - b).abs().max().item() for a, b in zip(grads[way], grads["hand"])) / scale
        out["vs_hand"][way] = {"ratio": statistics.median(ratios), "p20_p80": [ratios[len(ratios) // 5],
                               ratios[(4 * len(ratios)) // 5]], "grad_rel_diff": diff}
    print(f"T={tasks:4d}: " + ", ".join(f"{w} {out['median_ms'][w]:.1f} ms ({out['vs_hand'][w]['ratio']:.3f}x)"
                                       for w in WAYS), flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tasks", default="2,8,32")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    kept = conv.HAND_DERIVATIVE, norm.HAND_DERIVATIVE
    try:
        rows = [measure(int(t), device, args.rounds) for t in args.tasks.split(",")]
    finally:
        conv.HAND_DERIVATIVE, norm.HAND_DERIVATIVE = kept
    data = {"benchmark": "batched_derivatives", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (1 thread)",
            "torch": torch.__version__, "ways": {w: {"conv": c, "batch_norm": n} for w, (c, n) in WAYS.items()},
            "ratio": "the way's wall time / the all-hand-written step's, per round", "rounds": args.rounds,
            "rows": rows, "load_avg_1min": os.getloadavg()[0],
            "command": "python -m bench.bench_batched_derivatives " + " ".join(sys.argv[1:])}
    out = args.out or ROOT / "bench" / "results" / f"batched_derivatives_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
