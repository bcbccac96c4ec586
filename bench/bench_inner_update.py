"""How fast is one fused inner update, per backend, form and parameter set?

Parameter sets: the sine MLP 1-40-40-1 (1.7k elements, 6 tensors), Conv-4 Omniglot (4 x conv3x3
64ch + BN, linear to 5 ways: 112k elements, 18 tensors) for one task and as the task-batched
[32, ...] tensors of a meta-batch of 32, and a 10M-element set. Forms (NOTE: [update forms]): sgd;
scaled with an elementwise a (Meta-SGD); forget with elementwise a and a per-layer gamma (ALFA). In
the batched set a and gamma are shared by the tasks, as in the vmap path.

For each: median time and spread (25th-75th percentile) of the out-of-place update (allocating
its outputs, as MAML does) and of the in-place one (the kernel alone), bytes moved (read p, g, a,
gamma once, write the output) and the in-place GB/s, that as a fraction of a plain `copy_` of as
many elements into an existing tensor timed in the same run, ratios to `reference` and `foreach`;
the differentiable update (params, a and gamma requiring grad) forward+backward through
torch.autograd.grad and through the autograd engine's entry point, and its backward alone; the
floor under any forward+backward (torch.autograd.grad with as many outputs and inputs and no node
between them) and so the most any backend could gain over reference there; and the ATen ops
dispatched per update (a TorchDispatchMode count, the proxy for GPU launches). Providers take turns within each round, in an
order rotated every round, so drift and allocator state on a shared machine hit all alike; compare ratios, not absolute times, across runs.

    python bench/bench_inner_update.py            # writes bench/results/inner_update.json
    python bench/bench_inner_update.py --quick    # fewer rounds, a smoke test
    python bench/bench_inner_update.py --threads 1   # one intra-op thread (shared, busy machine)
    python bench/bench_inner_update.py --threads 1 --clock cpu   # CPU time: robust to other jobs
    python -m bench.tables inner_update           # the README table from the saved JSON
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
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import CLOCKS, OpCounter, cpu_name, interleaved
from fastmaml.ops import backend_module, is_available

RESULTS = ROOT / "bench" / "results" / "inner_update.json"
FORMS = ("sgd", "scaled", "forget")
# Timings of each backend: JSON key -> job name in bench_case.
TIMINGS = {"fwd": "fwd", "inplace": "inplace", "fwd_bwd": "fwd+bwd", "fwd_bwd_engine": "fwd+bwd engine",
           "bwd": "bwd"}
_ENGINE = torch.autograd.Variable._execution_engine


def sine_mlp():
    return [(40, 1), (40,), (40, 40), (40,), (1, 40), (1,)]


def conv4(ways=5, channels=64):
    shapes = []
    for block in range(4):
        shapes += [(channels, 1 if block == 0 else channels, 3, 3), (channels,), (channels,), (channels,)]
    return shapes + [(ways, channels), (ways,)]


PARAM_SETS = {
    "sine-mlp": (sine_mlp(), None),
    "conv4": (conv4(), None),
    "conv4x32": (conv4(), 32),
    "10M": ([(2500, 1000)] * 4, None),
}


def make_inputs(name, form, device, dtype=torch.float32):
    shapes, tasks = PARAM_SETS[name]
    lead = () if tasks is None else (tasks,)
    params = [torch.randn(lead + s, device=device, dtype=dtype) for s in shapes]
    grads = [torch.randn_like(p) for p in params]
    lrs = None if form == "sgd" else [torch.rand(s, device=device, dtype=dtype) + 0.5 for s in shapes]
    # gamma near 1, so that repeated in-place updates neither blow up nor sink into denormals
    gammas = None if form != "forget" else [torch.rand(1, device=device, dtype=dtype) * 2e-3 + 0.999 for _ in shapes]
    return params, grads, lrs, gammas


def bytes_moved(params, lrs, gammas):
    full = sum(p.numel() * p.element_size() for p in params)
    side = sum(t.numel() * t.element_size() for t in (lrs or []) + (gammas or []))
    return 3 * full + side  # read p and g, write out; a and gamma read once


# --clock "wall": time.perf_counter. "cpu": time.process_time, the CPU time of this process (user and
# system, so page faults count): on a machine shared with other jobs, a run descheduled mid-sample
# is not charged for the wait. Only meaningful on CPU with one torch thread (--threads 1).


def _stats(samples):
    q = statistics.quantiles(samples, n=4) if len(samples) > 1 else samples * 3
    return {"median_us": statistics.median(samples) * 1e6, "p25_us": q[0] * 1e6, "p75_us": q[2] * 1e6}


def bench_case(set_name, form, backends, device, rounds, inner, clock="wall"):
    """Timings of every backend on one (set, form), interleaved round by round."""
    params, grads, lrs, gammas = make_inputs(set_name, form, device)
    alpha = 0.01
    n = sum(p.numel() for p in params)
    flat_src = torch.randn(n, device=device)
    flat_dst = torch.empty_like(flat_src)
    diff_params = [p.clone().requires_grad_() for p in params]
    diff_lrs = None if lrs is None else [a.clone().requires_grad_() for a in lrs]
    diff_gammas = None if gammas is None else [g.clone().requires_grad_() for g in gammas]
    gos = [torch.randn_like(p) for p in params]
    leaves = diff_params + (diff_lrs or []) + (diff_gammas or [])

    def forward(mod):
        return lambda: mod.update(params, grads, lrs, gammas, alpha)

    def forward_backward(mod):
        def run():
            out = mod.update(diff_params, grads, diff_lrs, diff_gammas, alpha)
            torch.autograd.grad(out, leaves, gos)
        return run

    # The same through the autograd engine's own entry point, without torch.autograd.grad's Python
    # (argument normalisation, _make_grads: ~10 us per output), which costs every backend alike.
    def forward_backward_engine(mod):
        def run():
            out = mod.update(diff_params, grads, diff_lrs, diff_gammas, alpha)
            _ENGINE.run_backward(tuple(out), tuple(gos), False, False, tuple(leaves), False, False)
        return run

    def backward(mod):  # the backward alone, on one graph kept for the repeats
        out = mod.update(diff_params, grads, diff_lrs, diff_gammas, alpha)
        return lambda: torch.autograd.grad(out, leaves, gos, retain_graph=True)

    # The floor under any backend's forward+backward: torch.autograd.grad of outputs that are the
    # leaves themselves (no node, no arithmetic), with as many outputs and inputs.
    def grad_floor():
        torch.autograd.grad(diff_params, leaves, gos, allow_unused=True)

    def inplace(mod):
        targets = [p.clone() for p in params]
        return torch.no_grad()(lambda: mod.update_(targets, grads, lrs, gammas, alpha))

    calls = {"copy": lambda: flat_dst.copy_(flat_src), "grad_floor": grad_floor}
    for b in backends:
        mod = backend_module(b)
        calls[f"{b}/fwd"] = forward(mod)
        calls[f"{b}/inplace"] = inplace(mod)
        calls[f"{b}/fwd+bwd"] = forward_backward(mod)
        calls[f"{b}/fwd+bwd engine"] = forward_backward_engine(mod)
        calls[f"{b}/bwd"] = backward(mod)
    # "rotate": each round starts one job later, so what a job leaves behind (the heap's state: whether
    # the next out-of-place update reuses warm memory or faults fresh pages in) falls on every job alike.
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    samples = interleaved({k: (lambda r, fn=fn: fn()) for k, fn in calls.items()}, rounds, reps=inner,
                          order="rotate", warmup_rounds=1, clocks=(clock,), sync=sync)[clock]

    copy, floor = _stats(samples["copy"]), _stats(samples["grad_floor"])
    copy_gbs = 2 * flat_src.numel() * flat_src.element_size() / (copy["median_us"] * 1e-6) / 1e9
    moved = bytes_moved(params, lrs, gammas)
    rows = []
    for b in backends:
        mod = backend_module(b)
        with torch.no_grad(), OpCounter() as counter:
            mod.update(params, grads, lrs, gammas, alpha)
        timings = {key: _stats(samples[f"{b}/{job}"]) for key, job in TIMINGS.items()}
        gbs = moved / (timings["inplace"]["median_us"] * 1e-6) / 1e9
        rows.append({
            "set": set_name, "form": form, "backend": b, "elements": n, "tensors": len(params),
            **timings, "grad_floor": floor, "bytes": moved, "gb_s": gbs,
            "copy_gb_s": copy_gbs, "frac_of_copy": gbs / copy_gbs, "aten_ops": counter.count,
        })
    for key in ("reference", "foreach"):
        base = next((r for r in rows if r["backend"] == key), None)
        for r in rows:
            if base is None:
                continue
            for timing in TIMINGS:  # speedup_vs_reference for fwd, inplace_speedup_vs_reference, ...
                prefix = "" if timing == "fwd" else f"{timing}_"
                r[f"{prefix}speedup_vs_{key}"] = base[timing]["median_us"] / r[timing]["median_us"]
            if key == "reference":  # the most any backend could gain under torch.autograd.grad
                r["best_fwd_bwd_speedup_vs_reference"] = base["fwd_bwd"]["median_us"] / floor["median_us"]
    return rows


def _git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
        return out.stdout.strip() or None
    except OSError:
        return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="few rounds: a smoke test")
    parser.add_argument("--sets", nargs="*", default=list(PARAM_SETS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's); 1 on an oversubscribed shared machine")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                        help="wall: elapsed time; cpu: this process's CPU time (CPU, --threads 1, busy machine)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu" and (args.device != "cpu" or torch.get_num_threads() != 1):
        parser.error("--clock cpu needs --device cpu and --threads 1")
    device = torch.device(args.device)
    backends = [b for b in ("reference", "foreach", "native", "triton")
                if (b != "triton" or device.type == "cuda") and is_available(b, device)]
    rows = []
    for set_name in args.sets:
        elements = sum(torch.Size(s).numel() for s in PARAM_SETS[set_name][0]) * (PARAM_SETS[set_name][1] or 1)
        inner = max(1, min(200, 200_000 // elements))  # calls per timed sample: samples of >~100 us
        rounds = 5 if args.quick else (15 if elements > 1_000_000 else 30)
        for form in FORMS:
            rows += bench_case(set_name, form, backends, device, rounds, inner, args.clock)
            print(f"{set_name:9s} {form:7s} " + "  ".join(
                f"{x['backend']}={x['fwd']['median_us']:.0f}us" for x in rows[-len(backends):]
            ) + f"  native/copy={next((x['frac_of_copy'] for x in rows[-len(backends):] if x['backend'] == 'native'), 0):.2f}",
                flush=True)
    result = {
        "benchmark": "inner_update",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu": platform.processor() or cpu_name(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "fastmaml_commit": _git_commit()},
        "config": {"dtype": "float32", "forms": list(FORMS), "backends": backends, "quick": args.quick,
                   "clock": args.clock,
                   "command": " ".join(["python bench/bench_inner_update.py", *(argv if argv is not None else sys.argv[1:])])},
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
