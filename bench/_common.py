"""Pieces every benchmark script records the same way."""

from __future__ import annotations

import collections
import platform
import re
import time
from collections.abc import Callable
from pathlib import Path

from torch.utils._python_dispatch import TorchDispatchMode


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_kib() -> dict:
    """This process's resident set now (VmRSS) and its peak (VmHWM), in KiB, from /proc/self/status."""
    text = Path("/proc/self/status").read_text()
    return {k: int(re.search(k + r":\s+(\d+)", text).group(1)) for k in ("VmRSS", "VmHWM")}


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None when matplotlib is not installed (no chart)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


class OpCounter(TorchDispatchMode):
    """Counts the ATen (and custom) ops dispatched while active: the proxy for GPU launches; `count`
    in all, `by_op` per op ("aten.convolution", ...)."""

    def __init__(self):
        super().__init__()
        self.count = 0
        self.by_op: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        self.by_op[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def interleaved(jobs: dict[str, Callable[[int], object]], rounds: int, *, reps: dict[str, int] | int = 1,
                order: str = "alternate", warmup_rounds: int = 0, clocks: tuple[str, ...] = ("wall",),
                sync: Callable[[], object] | None = None, min_rounds: int | None = None,
                budget_s: float | None = None) -> dict[str, dict[str, list[float]]]:
    """Seconds per call of each job, sampled in rounds in which the jobs take turns: the way every
    comparison in bench/ is timed, so that the drift of a shared machine falls on all jobs alike
    and ratios are taken within one run (bench/README.md, "Timing").

    jobs[name](r) is one call in round r (e.g. on batch r % n); a sample is `reps` consecutive
    calls (a number, or one per job), divided by reps. order "alternate": the jobs in order on
    even rounds, reversed on odd ones; "rotate": round r starts with job r % len(jobs), so what a
    job leaves behind (warm caches, the heap's state) precedes every job alike. The first
    `warmup_rounds` rounds are not recorded. With `budget_s`, timing stops after `min_rounds`
    recorded rounds once the budget is spent (else after `rounds`). `sync` (e.g.
    torch.cuda.synchronize) runs before and after each sample. Returns {clock: {job: samples}}
    for the clocks named in `clocks` ("wall": perf_counter, "cpu": this process's CPU time)."""
    names = list(jobs)
    per = reps if isinstance(reps, dict) else dict.fromkeys(names, reps)
    timers = [(c, CLOCKS[c]) for c in clocks]
    out = {c: {n: [] for n in names} for c in clocks}
    start = time.perf_counter()
    r = 0
    while r < warmup_rounds + rounds:
        recorded = r - warmup_rounds
        if budget_s is not None and recorded >= (min_rounds or 0) and time.perf_counter() - start > budget_s:
            break
        if order == "rotate":
            turn = names[r % len(names):] + names[:r % len(names)]
        else:
            turn = names if r % 2 == 0 else names[::-1]
        for name in turn:
            if sync is not None:
                sync()
            t0 = [clock() for _, clock in timers]
            for _ in range(per[name]):
                jobs[name](r)
            if sync is not None:
                sync()
            t1 = [clock() for _, clock in timers]
            if recorded >= 0:
                for (c, _), a, b in zip(timers, t0, t1):
                    out[c][name].append((b - a) / per[name])
        r += 1
    return out
