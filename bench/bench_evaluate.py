"""How long does evaluating a checkpoint take, adapting a batch of tasks at once (evaluate's "auto":
the task-batched layers for Conv-4) against one task at a time (the loop, as before issue 19)?

Omniglot 5-way 1-shot, Conv-4 (untrained weights: the time does not depend on them), the held-out
split, `fastmaml eval`'s default inner steps 0..10, chunks of 50 tasks; the two modes alternate
per chunk-sized round so the drift of a shared machine hits both alike. Process CPU time, one torch
thread.

    python -m bench.bench_evaluate --tasks 600           # -> bench/results/evaluate.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "evaluate.json"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3, help="the tasks are split into this many rounds per mode")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-root", default=None, help="Omniglot folder (default $FASTMAML_DATA or ../shared/data/omniglot)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from bench._common import cpu_name
    from fastmaml.train.evaluate import evaluate
    from fastmaml.train.experiment import COMMON, OMNIGLOT, build

    exp = build({**COMMON, **OMNIGLOT[5], "task": "omniglot", "data_root": args.data_root}, need_train=False)
    steps = list(range(11))
    cpu = {"auto": 0.0, "loop": 0.0}
    means = {"auto": [], "loop": []}
    per_round = -(-args.tasks // args.rounds)
    for r in range(args.rounds):
        for mode in (("auto", "loop") if r % 2 == 0 else ("loop", "auto")):
            exp.eval_tasks.generator.manual_seed(r)
            c0 = time.process_time()
            out = evaluate(exp.learner, exp.eval_tasks, exp.loss_fn, exp.metric, per_round, steps, batching=mode)
            cpu[mode] += time.process_time() - c0
            means[mode].append(out["curve"][-1]["mean"])
    assert all(abs(a - b) < 1e-6 for a, b in zip(means["auto"], means["loop"])), means
    data = {"benchmark": "evaluate", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "machine": {"cpu": cpu_name(), "torch_threads": args.threads}, "torch": torch.__version__,
            "tasks": per_round * args.rounds, "inner_steps": steps, "cpu_s": cpu,
            "speedup": cpu["loop"] / cpu["auto"], "command": "python -m bench.bench_evaluate " + " ".join(sys.argv[1:])}
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"{data['tasks']} tasks, steps 0..10: loop {cpu['loop']:.1f} s, batched (auto) {cpu['auto']:.1f} s CPU "
          f"({data['speedup']:.2f}x); wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
