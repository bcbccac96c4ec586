"""The task-batched convolution's second derivative, hand-written or torch's (NOTE: [grouped conv
double backward], fastmaml/execution/batched/conv.py): a second-order MAML meta-step of Conv-4
5-way 1-shot (15 queries, 1 inner step) in the batched mode, the two alternating in one process
(A B B A ...), at several task counts, with the meta-gradients' relative difference.

    python -m bench.bench_conv_derivative                  # CPU, one thread -> bench/results/conv_derivative_cpu.json
    python -m bench.bench_conv_derivative --device cuda    # -> bench/results/conv_derivative_cuda.json
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
from fastmaml.execution.batched import conv
from fastmaml.models import conv4

ROOT = Path(__file__).resolve().parent.parent
WAYS = {"hand": "the hand-written derivative", "torch": "torch's _convolution_double_backward (a loop over groups)"}


def problem(tasks: int, device: torch.device):
    torch.manual_seed(0)
    model = conv4(n_way=5, hidden=64, image_size=28).to(device)
    learner = fastmaml.MAML(model, inner_lr=0.4, inner_steps=1, batching="batched")
    x = torch.rand(tasks, 20, 1, 28, 28, device=device)
    y = torch.arange(5, device=device).repeat(tasks, 4)
    return model, learner, (x[:, :5], y[:, :5], x[:, 5:], y[:, 5:])


def run_way(way: str, device: torch.device, step) -> float:
    conv.HAND_DERIVATIVE = way == "hand"
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
    scale = max(g.abs().max().item() for g in grads["torch"])
    diff = max((a - b).abs().max().item() for a, b in zip(grads["hand"], grads["torch"])) / scale
    times: dict[str, list[float]] = {way: [] for way in WAYS}
    for r in range(rounds):
        for way in (WAYS if r % 2 == 0 else reversed(list(WAYS))):
            times[way].append(run_way(way, device, step))
    ratios = sorted(h / t for h, t in zip(times["hand"], times["torch"]))
    out = {"tasks": tasks, "grad_rel_diff": diff, "hand_over_torch": statistics.median(ratios),
           "hand_over_torch_p20_p80": [ratios[len(ratios) // 5], ratios[(4 * len(ratios)) // 5]],
           **{f"{way}_median_ms": 1e3 * statistics.median(t) for way, t in times.items()}}
    print(f"T={tasks:4d}: hand {out['hand_median_ms']:8.2f} ms, torch {out['torch_median_ms']:8.2f} ms, "
          f"hand/torch {out['hand_over_torch']:.3f} ({out['hand_over_torch_p20_p80'][0]:.3f}-"
          f"{out['hand_over_torch_p20_p80'][1]:.3f}), grads differ by {diff:.1e}", flush=True)
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
    kept = conv.HAND_DERIVATIVE
    try:
        rows = [measure(int(t), device, args.rounds) for t in args.tasks.split(",")]
    finally:
        conv.HAND_DERIVATIVE = kept
    data = {"benchmark": "conv_derivative", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (1 thread)",
            "torch": torch.__version__, "ways": WAYS, "rounds": args.rounds, "rows": rows,
            "load_avg_1min": os.getloadavg()[0], "command": "python -m bench.bench_conv_derivative " + " ".join(sys.argv[1:])}
    out = args.out or ROOT / "bench" / "results" / f"conv_derivative_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
