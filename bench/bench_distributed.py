"""How does task-parallel meta-training (fastmaml.distributed) scale from 1 to 2 processes on this
machine, and where does the all-reduce cost sit?

Two workloads, MAML second order, 1 inner step, batching "vmap", float32, Adam:
  * sine: the MAML paper's 1-40-40-1 MLP (1,761 parameters), 16 tasks a meta-batch, K = Q = 10
  * conv: Conv-4 with 32 channels (28,485 parameters), 5-way 1-shot 5-query on random 28x28
    images, 8 tasks a meta-batch

Three layouts of the same global meta-batch: 1 process x 1 thread, 1 process x 2 threads (torch
intra-op threads), and 2 processes x 1 thread (torchrun, gloo, each rank half the tasks). Each
rank records per step the wall time and the time inside `all_reduce_grads` ("in-step all-reduce":
the transfer plus waiting for the slower rank). After training, a barrier and then the gradient
all-reduce alone, repeated ("pure all-reduce"), gives the transfer cost without the wait; it is
timed coalesced (one bucket, what fastmaml does) and one tensor at a time (bucket cap 0), plus one
4 MiB tensor for the bandwidth.

    python bench/bench_distributed.py            # writes bench/results/distributed.json
    python bench/bench_distributed.py --quick    # fewer steps, a smoke test
    python bench/bench_distributed.py --table    # print the markdown table of the saved JSON

This machine is shared: timings drift; compare within one run and read the load averages saved
with the results.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "distributed.json"
LAYOUTS = ((1, 1), (1, 2), (2, 1))  # (processes, threads per process)
WORKLOADS = {"sine": {"meta_batch": 16, "steps": 40, "warmup": 3},
             "conv": {"meta_batch": 8, "steps": 6, "warmup": 2}}


# ---- worker (one rank) ---------------------------------------------------------------------------

def _build(workload: str):
    import torch
    import torch.nn.functional as F

    from fastmaml import MAML
    from fastmaml.models import Conv4
    from fastmaml.tasks.sampler import FewShotSampler
    from fastmaml.tasks.sine import SineTasks, sine_mlp

    torch.manual_seed(0)
    if workload == "sine":
        return MAML(sine_mlp(), inner_lr=0.01, inner_steps=1, batching="vmap"), SineTasks(10, 10, seed=0), F.mse_loss
    images = torch.rand(20 * 20, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(20).repeat_interleave(20)
    tasks = FewShotSampler(images, labels, n_way=5, k_shot=1, q_query=5, seed=0)
    return MAML(Conv4(5, hidden=32), inner_lr=0.4, inner_steps=1, batching="vmap"), tasks, F.cross_entropy


def _pure_all_reduce(ctx, params, reps: int) -> dict:
    """Median seconds of the gradient all-reduce alone (after a barrier), coalesced and per tensor,
    and of one 4 MiB tensor."""
    import torch
    import torch.distributed as dist

    def timed(fn):
        out = []
        for _ in range(reps):
            ctx.barrier()
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
        return statistics.median(out)

    cap = ctx.bucket_cap_mb
    coalesced = timed(lambda: ctx.all_reduce_grads(params, 0.5))
    ctx.bucket_cap_mb = 0.0
    per_tensor = timed(lambda: ctx.all_reduce_grads(params, 0.5))
    ctx.bucket_cap_mb = cap
    big = torch.ones(2**20)
    four_mib = timed(lambda: dist.all_reduce(big))
    return {"coalesced_s": coalesced, "per_tensor_s": per_tensor, "tensors": len(params),
            "bytes": sum(p.numel() * p.element_size() for p in params),
            "four_mib_s": four_mib, "four_mib_gb_s": 4 * 2**20 / four_mib / 1e9}


def worker(workload: str, threads: int, out: str, steps: int, warmup: int, meta_batch: int) -> None:
    import torch

    from fastmaml import distributed

    torch.set_num_threads(threads)
    ctx = distributed.init_from_env("cpu", timeout=600)
    learner, tasks, loss_fn = _build(workload)
    ctx.broadcast_module(learner)
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    records = []
    for i in range(warmup + steps):
        before = ctx.stats["all_reduce_s"]
        t = time.perf_counter()
        shard = ctx.shard(tasks.sample(meta_batch))
        ctx.meta_step(learner, shard, loss_fn)
        optimizer.step()
        if i >= warmup:
            records.append((time.perf_counter() - t, ctx.stats["all_reduce_s"] - before))
    result = {"rank": ctx.rank, "world_size": ctx.world_size, "threads": threads, "tasks_per_rank": shard.tasks,
              "step_s": [r[0] for r in records], "all_reduce_s": [r[1] for r in records]}
    if ctx.enabled:
        params = [p for p in learner.parameters() if p.grad is not None]
        result["pure"] = _pure_all_reduce(ctx, params, reps=30)
    gathered = [result]
    if ctx.enabled:
        import torch.distributed as dist

        gathered = [None] * ctx.world_size
        dist.all_gather_object(gathered, result)
    if ctx.is_main:
        Path(out).write_text(json.dumps(gathered))
    ctx.destroy()


# ---- driver --------------------------------------------------------------------------------------

def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def run_layout(workload: str, procs: int, threads: int, quick: bool) -> dict:
    spec = dict(WORKLOADS[workload])
    if quick:
        spec["steps"], spec["warmup"] = max(2, spec["steps"] // 8), 1
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "ranks.json")
        args = [str(Path(__file__).resolve()), "--worker", workload, "--threads", str(threads), "--out", out,
                "--steps", str(spec["steps"]), "--warmup", str(spec["warmup"]), "--meta-batch", str(spec["meta_batch"])]
        cmd = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
                                  if procs > 1 else []) + args
        env = dict(os.environ, OMP_NUM_THREADS=str(threads),
                   PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        load_before = _load()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{workload} {procs}x{threads} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        ranks = json.loads(Path(out).read_text())
    # a step ends when its slowest rank ends: per step, the max over ranks
    step_s = [max(r["step_s"][i] for r in ranks) for i in range(len(ranks[0]["step_s"]))]
    ar_s = [statistics.mean(r["all_reduce_s"][i] for r in ranks) for i in range(len(step_s))]
    med = statistics.median(step_s)
    row = {"workload": workload, "processes": procs, "threads": threads, "meta_batch": spec["meta_batch"],
           "steps": len(step_s), "step_s_median": med, "step_s_min": min(step_s), "step_s_max": max(step_s),
           "meta_steps_per_s": 1 / med, "tasks_per_s": spec["meta_batch"] / med,
           "all_reduce_in_step_s": statistics.median(ar_s) if procs > 1 else 0.0,
           "all_reduce_fraction": (statistics.median(ar_s) / med) if procs > 1 else 0.0,
           "load_before": load_before, "load_after": _load()}
    if procs > 1:
        row["pure"] = ranks[0]["pure"]
    return row


def machine() -> dict:
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "backend": "gloo (CPU)", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def render_table(data: dict) -> str:
    """Markdown tables of a results dict (the JSON this script writes)."""
    rows = data["results"]
    base = {r["workload"]: r for r in rows if r["processes"] == 1 and r["threads"] == 1}
    lines = [("| workload | layout | meta-steps/s | tasks/s | speed-up vs 1x1 | step median (min-max) ms | "
              "all-reduce in step ms (share) |"),
             "|---|---|---:|---:|---:|---|---:|"]
    for r in rows:
        b = base.get(r["workload"])
        speed = f"{b['step_s_median'] / r['step_s_median']:.2f}x" if b else "-"
        ar = (f"{1e3 * r['all_reduce_in_step_s']:.2f} ({100 * r['all_reduce_fraction']:.1f}%)"
              if r["processes"] > 1 else "-")
        lines.append(f"| {r['workload']} (batch {r['meta_batch']}) | {r['processes']} proc x {r['threads']} thr | "
                     f"{r['meta_steps_per_s']:.2f} | {r['tasks_per_s']:.1f} | {speed} | "
                     f"{1e3 * r['step_s_median']:.1f} ({1e3 * r['step_s_min']:.1f}-{1e3 * r['step_s_max']:.1f}) | {ar} |")
    pure = [r for r in rows if "pure" in r]
    if pure:
        lines += ["", "| workload | gradient | tensors | coalesced ms | one tensor at a time ms | 4 MiB all-reduce ms (GB/s) |",
                  "|---|---:|---:|---:|---:|---:|"]
        for r in pure:
            p = r["pure"]
            lines.append(f"| {r['workload']} | {p['bytes'] / 1024:.1f} KiB | {p['tensors']} | {1e3 * p['coalesced_s']:.3f} | "
                         f"{1e3 * p['per_tensor_s']:.3f} | {1e3 * p['four_mib_s']:.2f} ({p['four_mib_gb_s']:.2f}) |")
    m = data["machine"]
    lines += ["", (f"{m['date']}; {m['platform']}, {m['cpu_count']} CPUs; Python {m['python']}, torch {m['torch']}, "
                   f"{m['backend']}; load average before/after each layout: ")
                  + ", ".join(f"{r['workload']} {r['processes']}x{r['threads']} {r['load_before'][:1]}/{r['load_after'][:1]}"
                              for r in rows)]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--table", action="store_true", help="print the markdown table of the saved results")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--workloads", default="sine,conv")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    p.add_argument("--warmup", type=int, help=argparse.SUPPRESS)
    p.add_argument("--meta-batch", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        sys.path.insert(0, str(ROOT))
        worker(args.worker, args.threads, args.out, args.steps, args.warmup, args.meta_batch)
        return 0
    if args.table:
        print(render_table(json.loads(Path(args.out).read_text())))
        return 0
    rows = []
    for workload in args.workloads.split(","):
        for procs, threads in LAYOUTS:
            row = run_layout(workload, procs, threads, args.quick)
            print(f"{workload} {procs}x{threads}: {row['meta_steps_per_s']:.2f} meta-steps/s, "
                  f"{row['tasks_per_s']:.1f} tasks/s, all-reduce {1e3 * row['all_reduce_in_step_s']:.2f} ms/step",
                  flush=True)
            rows.append(row)
    data = {"machine": machine(), "quick": args.quick, "results": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(data, indent=1) + "\n")
    print(render_table(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
