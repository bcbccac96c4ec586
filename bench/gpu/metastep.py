"""Section "metastep": one second-order MAML meta-step (forward, inner SGD steps, meta-gradient of
the mean query loss; the outer optimizer step left out) with fastmaml, plain torch.func vmap and
JAX (jit + vmap + grad), the implementations of bench/peers, on the same data and weights:
sine MLP 1-40-40-1 at T = 25, 1,000 and 10,000 tasks with 1 and 5 inner steps, Conv-4 5-way
1-shot at T = 32 and 256 (1 step; the torch.func task loop too at T = 32, and fastmaml with torch's
own second derivatives of its batched convolution and batch norm, bench/peers/fastmaml_torch_derivatives.py);
last, if time is left, fastmaml's compiled step (and replayed as CUDA graphs) and torch.compile of the
torch.func step (default mode and "reduce-overhead") on sine.

Per config: the meta-gradients are checked first (float64 on the first 4 tasks against fastmaml's,
max |a - b| / max |b|, above CHECK_TOL a disagreement; float32 on the whole batch reported), then
timed (float32, TF32 off everywhere: wall ms per meta-step over runs of consecutive steps, the
device waited for at the end of each run), then the peak device memory of one meta-step (torch:
the caching allocator's peak over what was allocated before; JAX: XLA's memory analysis of the
compiled step, arguments + outputs + temporaries).

    python -m bench.gpu.metastep --out PART.json --budget SECONDS [--cpu-dry-run]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import NamedTuple

import torch

from bench import peers as P
from bench.gpu._common import Section, device_of, error_text, sync, time_steps

CHECK_TOL = 1e-8
CHECK_TASKS = 4
PEERS = ("fastmaml", "torchfunc_vmap", "jax")


class Config(NamedTuple):
    model: str
    tasks: int
    steps: int
    extra: tuple[str, ...] = ()  # peers run besides `peers`
    peers: tuple[str, ...] = PEERS


# The goals' configs first, in case the budget runs out; fastmaml's compiled step last (each of its
# configs pays two compilations per compiled peer, float64 and float32), replayed as CUDA graphs
# too where launches weigh most (1,000 tasks, one inner step); last, what a user would write
# instead, torch.compile of the torch.func step, with and without CUDA graphs.
CONFIGS = {
    "sine-T1000-1": Config("sine", 1000, 1),
    "sine-T1000-5": Config("sine", 1000, 5),
    "conv4-T32-1": Config("conv4", 32, 1, ("torchfunc_loop", "fastmaml_torch_derivatives")),
    "sine-T10000-1": Config("sine", 10000, 1),
    "sine-T10000-5": Config("sine", 10000, 5),
    "sine-T25-1": Config("sine", 25, 1),
    "sine-T25-5": Config("sine", 25, 5),
    "conv4-T256-1": Config("conv4", 256, 1, ("fastmaml_torch_derivatives",)),
    "sine-T1000-1-compiled": Config("sine", 1000, 1, peers=("fastmaml", "fastmaml_compiled", "fastmaml_cuda_graphs", "jax")),
    "sine-T10000-5-compiled": Config("sine", 10000, 5, peers=("fastmaml", "fastmaml_compiled", "jax")),
    "sine-T1000-1-torch-compile": Config("sine", 1000, 1, peers=(
        "fastmaml", "fastmaml_cuda_graphs", "torch_compile", "torch_compile_cuda_graphs")),
}
DRY_CONFIGS = {
    "sine-T6-2": Config("sine", 6, 2),
    "conv4-T3-1": Config("conv4", 3, 1, ("torchfunc_loop", "fastmaml_torch_derivatives")),
    "sine-T6-1-compiled": Config("sine", 6, 1, peers=("fastmaml", "fastmaml_compiled", "fastmaml_cuda_graphs")),
}


def problem(model_name: str, tasks: int, steps: int, device, dtype, dry_run: bool):
    """(model, step config, two batches) on `device`; the same for every implementation."""
    torch.manual_seed(0)
    if model_name == "sine":
        from fastmaml.tasks.sine import SineTasks, sine_mlp

        model = sine_mlp()
        sampler = SineTasks(k_shot=10, q_query=10, seed=0, dtype=dtype)
        batches = [sampler.sample(tasks).tensors() for _ in range(2)]
        cfg = P.StepConfig(steps, False, 0.01, "mse")
    else:
        from fastmaml.models import conv4

        size = 16 if dry_run else 28
        model = conv4(n_way=5, hidden=4 if dry_run else 64, image_size=size)
        g = torch.Generator().manual_seed(0)
        batches = []
        for _ in range(2):
            x = torch.rand(tasks, 10, 1, size, size, generator=g, dtype=dtype)
            y = torch.arange(5).repeat(tasks, 2)
            batches.append((x[:, :5], y[:, :5], x[:, 5:], y[:, 5:]))
        cfg = P.StepConfig(steps, False, 0.4, "ce")
    batches = [tuple(t.to(device) for t in b) for b in batches]
    return model.to(device=device, dtype=dtype), cfg, batches


def grads_of(model):
    return [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in model.parameters()]


def rel_diff(a, b) -> float:
    scale = max(y.abs().max().item() for y in b)
    return max((x - y).abs().max().item() for x, y in zip(a, b)) / max(scale, 1e-30)


def cudagraph_skips() -> int:
    """Inductor's count of graphs it was asked to replay as CUDA graphs and did not."""
    if "torch._dynamo" not in sys.modules:
        return 0
    from torch._dynamo.utils import counters

    return counters["inductor"]["cudagraph_skips"]


def finisher(step, device):
    """Waits for everything `step` queued: the device, and JAX's own stream through its result."""
    wait = getattr(step, "sync", None)

    def finish():
        if wait is not None:
            wait()
        sync(device)

    return finish


def peak_memory_mib(step, batch, device) -> dict:
    if hasattr(step, "memory_bytes"):  # JAX: XLA's analysis of the compiled step
        return {"peak_mib": step.memory_bytes(batch) / 2**20, "memory_source": "xla memory_analysis"}
    if device.type != "cuda":
        return {"peak_mib": None, "memory_source": None}
    sync(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step(batch)
    sync(device)
    return {"peak_mib": (torch.cuda.max_memory_allocated(device) - before) / 2**20,
            "memory_source": "torch.cuda.max_memory_allocated"}


def run_config(sec: Section, name: str, config: Config, device, dry_run: bool, usable) -> dict:
    """One config: each peer's meta-gradient checked, then timed, then its memory. A peer that fails
    is recorded with its error and the others go on. The record is in the section's and saved after
    every peer, so a section killed at its time limit keeps the peers it measured."""
    model_name, tasks, steps = config.model, config.tasks, config.steps
    names = [p for p in config.peers if p in usable] + [p for p in config.extra if P.load(p).available() is None]
    out = {"config": name, "model": model_name, "tasks": tasks, "steps": steps, "second_order": True, "results": {}}
    sec.data.setdefault("configs", []).append(out)
    # 1. agreement, float64 on the first tasks, against the first peer (fastmaml)
    model64, cfg, batches64 = problem(model_name, tasks, steps, device, torch.float64, dry_run)
    small = tuple(t[:CHECK_TASKS] for t in batches64[0])
    ref = None
    for peer in names:
        res = out["results"][peer] = {"name": P.load(peer).NAME}
        try:
            m = copy.deepcopy(model64)
            P.load(peer).make(m, cfg)(small)
        except Exception as error:  # noqa: BLE001 - recorded; the other peers go on
            res["error"] = error_text(error)
            print(f"  {name:14s} {res['name']:18s} FAILED (float64 check): {res['error']}", flush=True)
            continue
        g = grads_of(m)
        ref = g if ref is None else ref
        res["grad_rel_diff_f64"] = rel_diff(g, ref)
        res["agrees"] = res["grad_rel_diff_f64"] <= CHECK_TOL
        sec.save()
    del model64, batches64
    # 2. float32: the warm-up step's meta-gradient, then timing, then memory
    model, cfg, batches = problem(model_name, tasks, steps, device, torch.float32, dry_run)
    ref = None
    for peer in names:
        res = out["results"][peer]
        if "error" in res:
            continue
        try:
            grads = timed_peer(sec, name, peer, res, model, cfg, batches, device, dry_run)
        except Exception as error:  # noqa: BLE001 - recorded (out of memory too); the other peers go on
            res["error"] = error_text(error)
            print(f"  {name:14s} {res['name']:18s} FAILED: {res['error']}", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        ref = grads if ref is None else ref
        res["grad_rel_diff_f32"] = rel_diff(grads, ref)
        base = out["results"].get("fastmaml", {}).get("median_ms")  # fastmaml runs first
        if base and "median_ms" in res:
            res["ratio_to_fastmaml"] = res["median_ms"] / base
        sec.save()
    return out


def timed_peer(sec: Section, name: str, peer: str, res: dict, model, cfg, batches, device, dry_run: bool) -> list:
    """The peer's float32 meta-gradient; res gets its mode (fastmaml's), timing and memory."""
    m = copy.deepcopy(model)
    step = P.load(peer).make(m, cfg)
    finish = finisher(step, device)
    skips = cudagraph_skips()
    step(batches[0])
    finish()
    grads = grads_of(m)
    res["batching"] = getattr(getattr(step, "learner", None), "batching_used", None)
    if cudagraph_skips() > skips:  # Inductor was asked for CUDA graphs and declined them (its log says why)
        res["cudagraphs_declined"] = True
    if sec.left() < 0:
        sec.skip(f"{name} {peer} timing", "section budget spent")
        return grads
    step(batches[1])  # warm
    finish()
    res.update(time_steps(step, batches[1], finish, samples=3 if dry_run else 10, per_sample=1 if dry_run else 5,
                          budget_s=min(5.0, max(sec.left(), 1.0))))
    res.update(peak_memory_mib(step, batches[0], device))
    print(f"  {name:14s} {res['name']:18s} {res['median_ms']:8.2f} ms  f64 diff {res['grad_rel_diff_f64']:.1e}"
          f"{'' if res['agrees'] else ' [DISAGREES]'}  peak {res['peak_mib']} MiB", flush=True)
    return grads


def run(out: Path, budget: float, dry_run: bool) -> None:
    device = device_of(dry_run)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    sec = Section(out, "metastep", budget)
    peers, missing = [], {}
    for peer in dict.fromkeys(p for c in (DRY_CONFIGS if dry_run else CONFIGS).values() for p in c.peers):
        why = P.load(peer).available()
        if why is None:
            peers.append(peer)
        else:
            missing[peer] = why
            sec.skip(peer, why)
    if "jax" in peers:
        import jax

        jax.config.update("jax_default_matmul_precision", "highest")  # no TF32, as torch here
        sec.data["jax_devices"] = [str(d) for d in jax.devices()]
    sec.data.update(dtype="float32", tf32=False, check_tolerance_f64=CHECK_TOL, check_tasks=CHECK_TASKS,
                    peers_missing=missing, configs=[])
    for name, config in (DRY_CONFIGS if dry_run else CONFIGS).items():
        if sec.left() < 0:
            sec.skip(name, "section budget spent")
            continue
        try:
            run_config(sec, name, config, device, dry_run, peers)
        except torch.OutOfMemoryError as error:  # the problem itself did not fit
            sec.skip(name, f"out of memory: {str(error)[:200]}")
            torch.cuda.empty_cache()
        sec.save()
    sec.done()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget", type=float, default=150)
    ap.add_argument("--cpu-dry-run", action="store_true")
    args = ap.parse_args()
    run(args.out, args.budget, args.cpu_dry_run)
