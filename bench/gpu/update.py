"""Section "update": the fused inner update p' = gamma*p - alpha*(a*g) in its three forms (sgd,
Meta-SGD scaled, forget) with each backend (reference, foreach, native, triton), out of place, at
1M, 10M and 100M float32 elements and on Conv-4 x 32 tasks' parameter list (576 tensors), against
a device-to-device copy of the same bytes in the same run; kernel launches per update counted with
torch.profiler. A backend that fails is recorded with its error and the run goes on.

    python -m bench.gpu.update --out PART.json --budget SECONDS [--cpu-dry-run]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench.gpu._common import Section, device_of, error_text, sync, time_kernel

BACKENDS = ("reference", "foreach", "native", "triton")
FORMS = ("sgd", "scaled", "forget")  # a and gamma elementwise where present: the most bytes
SIZES = {"10M": 10 << 20, "100M": 100 << 20, "1M": 1 << 20}  # the goals' sizes first (budget)
DRY_SIZES = {"1K": 1 << 10, "10K": 10 << 10}
REPS, WARMUP = 30, 5
DRY_REPS, DRY_WARMUP = 3, 1


def conv4_list(tasks: int, hidden: int = 64) -> list[torch.Size]:
    """The shapes of `tasks` copies of Conv-4's parameters (5-way, 28x28), one tensor each."""
    from fastmaml.models import conv4

    shapes = [p.shape for p in conv4(5, hidden=hidden).parameters()]
    return [s for _ in range(tasks) for s in shapes]


def make_lists(shapes, form, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rand(s, low=0.0):
        return (torch.rand(s, generator=g) + low).to(device) if low else torch.randn(s, generator=g).to(device)

    params, grads = [rand(s) for s in shapes], [rand(s) for s in shapes]
    lrs = None if form == "sgd" else [rand(s, 0.5) for s in shapes]
    gammas = [rand(s, 0.5) for s in shapes] if form == "forget" else None
    return params, grads, lrs, gammas


def count_launches(fn, device) -> dict:
    """Kernels and memory copies of one call (torch.profiler); on the CPU the dispatched ops."""
    if device.type != "cuda":
        from bench._common import OpCounter

        with OpCounter() as counter:
            fn()
        return {"kernels": None, "memcpys": None, "cpu_ops": counter.count}
    from torch.profiler import ProfilerActivity, profile

    sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        sync(device)
    names = [e.name for e in prof.events() if e.device_type.name == "CUDA"]
    copies = [n for n in names if "memcpy" in n.lower() or "memset" in n.lower()]
    return {"kernels": len(names) - len(copies), "memcpys": len(copies), "kernel_names": sorted(set(names) - set(copies))}


def run(out: Path, budget: float, dry_run: bool) -> None:
    from fastmaml.ops import backend_module

    device = device_of(dry_run)
    sec = Section(out, "update", budget)
    reps, warmup = (DRY_REPS, DRY_WARMUP) if dry_run else (REPS, WARMUP)
    sec.data.update(dtype="float32", alpha=0.1, reps=reps, warmup=warmup, results=[], copies={},
                    backends={}, note="bytes = elements x 4 x (tensors read + written); the copy moves "
                    "the same bytes (reads half, writes half) with Tensor.copy_ in the same run")
    usable = []
    for name in BACKENDS:
        sec.data["backends"][name] = backend_module(name).is_available(device)
        if sec.data["backends"][name]:
            usable.append(name)
        else:
            sec.skip(name, f"backend not usable on {device}")
    # the L2 flush between timed calls (60 MB L2 on an H200)
    flush = torch.empty(256 << 20, dtype=torch.int8, device=device) if device.type == "cuda" else None
    sizes = list((DRY_SIZES if dry_run else SIZES).items())
    cases = {k: [torch.Size([n])] for k, n in sizes[:2]}
    cases["conv4x32"] = conv4_list(2 if dry_run else 32, hidden=8 if dry_run else 64)
    cases.update({k: [torch.Size([n])] for k, n in sizes[2:]})
    for case, shapes in cases.items():
        elements = sum(s.numel() for s in shapes)
        for form in FORMS:
            if sec.left() < 0:
                sec.skip(f"{case} {form}", "section budget spent")
                continue
            params = grads = lrs = gammas = None  # free the last case's tensors first
            params, grads, lrs, gammas = make_lists(shapes, form, device)
            moved = 4 * elements * (2 + (lrs is not None) + (gammas is not None) + 1)
            key = str(moved)
            if key not in sec.data["copies"]:
                src = torch.empty(moved // 8, dtype=torch.float32, device=device)
                dst = torch.empty_like(src)
                t = time_kernel(lambda: dst.copy_(src), device, reps, warmup, flush)
                t["gb_s"] = moved / t["median_ms"] / 1e6
                sec.data["copies"][key] = t
                del src, dst
            copy = sec.data["copies"][key]
            for name in usable:
                if dry_run and name == "triton" and case != "1K":
                    continue  # the Triton interpreter takes seconds per call on the larger cases
                backend = backend_module(name)
                call = lambda: backend.update(params, grads, lrs, gammas, 0.1)
                try:
                    with torch.no_grad():
                        t = time_kernel(call, device, reps, warmup, flush)
                        t.update(count_launches(call, device))
                except Exception as error:  # noqa: BLE001 - recorded; the other backends and cases go on
                    why = error_text(error)
                    sec.data["results"].append({"case": case, "form": form, "backend": name, "error": why})
                    print(f"  update {case:8s} {form:6s} {name:9s} FAILED: {why}", flush=True)
                    sec.save()
                    continue
                gb_s = moved / t["median_ms"] / 1e6
                sec.data["results"].append({"case": case, "form": form, "backend": name, "tensors": len(shapes),
                                            "elements": elements, "bytes": moved, **t, "gb_s": gb_s,
                                            "copy_gb_s": copy["gb_s"], "fraction_of_copy": gb_s / copy["gb_s"]})
                print(f"  update {case:8s} {form:6s} {name:9s} {t['median_ms']:.3f} ms {gb_s:7.1f} GB/s "
                      f"({gb_s / copy['gb_s']:.0%} of copy) kernels={t.get('kernels')}", flush=True)
                sec.save()
    sec.done()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget", type=float, default=90)
    ap.add_argument("--cpu-dry-run", action="store_true")
    args = ap.parse_args()
    run(args.out, args.budget, args.cpu_dry_run)
