"""Timing and recording shared by the sections of the GPU run."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch


def device_of(dry_run: bool) -> torch.device:
    if dry_run:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SystemExit("bench.gpu: no CUDA device (use --cpu-dry-run on a machine without one)")
    return torch.device("cuda")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def error_text(error: Exception) -> str:
    """An exception as one line for the JSON: its type and the start of its message."""
    return f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"


def summary(ms: list[float]) -> dict:
    """Median and the 20th-80th percentile spread of times in milliseconds."""
    ms = sorted(ms)
    q = statistics.quantiles(ms, n=5) if len(ms) > 1 else [ms[0]] * 4
    return {"median_ms": statistics.median(ms), "p20_ms": q[0], "p80_ms": q[3], "samples": len(ms)}


def time_kernel(fn, device: torch.device, reps: int, warmup: int, flush: torch.Tensor | None = None) -> dict:
    """GPU time of fn() by CUDA events around each call, the L2 cache flushed (`flush` zeroed, its
    own launch outside the events) before each; on the CPU, wall time of each call."""
    for _ in range(warmup):
        fn()
    sync(device)
    if device.type != "cuda":
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
        return summary(times)
    events = []
    for _ in range(reps):
        if flush is not None:
            flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize(device)
    return summary([s.elapsed_time(e) for s, e in events])


def time_steps(step, batch, finish, samples: int, per_sample: int, budget_s: float) -> dict:
    """Wall time per call of `step(batch)`, over samples of `per_sample` consecutive calls each
    followed by `finish()` (waits for the device): what a training loop sees, host work included.
    Stops early (at least 3 samples) when the budget is spent."""
    times, start = [], time.perf_counter()
    for i in range(samples):
        t0 = time.perf_counter()
        for _ in range(per_sample):
            step(batch)
        finish()
        times.append(1e3 * (time.perf_counter() - t0) / per_sample)
        if i >= 2 and time.perf_counter() - start > budget_s:
            break
    return summary(times)


class Section:
    """A section's record, written to `path` after every change so that a section killed at its
    time limit still leaves what it measured."""

    def __init__(self, path: Path, name: str, budget_s: float):
        self.path, self.start = Path(path), time.perf_counter()
        self.budget_s = budget_s
        self.data = {"section": name, "status": "running", "budget_s": budget_s, "skipped": []}
        self.save()

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.start)

    def skip(self, what: str, why: str) -> None:
        self.data["skipped"].append({"what": what, "why": why})
        print(f"  skipped {what}: {why}", flush=True)
        self.save()

    def save(self) -> None:
        self.data["seconds"] = round(time.perf_counter() - self.start, 2)
        self.path.write_text(json.dumps(self.data, indent=1, default=str))

    def done(self, status: str = "ok") -> None:
        self.data["status"] = status
        self.save()
