"""Seconds a piece of work takes on its device, for the choices fastmaml makes by timing
(batching="auto", fastmaml.compile's horizon, evaluation's "auto").

A CUDA device runs the work it is given asynchronously: a host timer around the calls measures
their launches, not the work, and a previous call's kernels may still be running when the next
timing starts. So on CUDA the device is waited for before and after (torch.cuda.synchronize) and
wall time is taken; on the CPU the caller's clock is used as it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def device_seconds(work: Callable[[], object], device: torch.device,
                   cpu_clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds `work()` takes on `device`: wall time with the device waited for on CUDA, else
    `cpu_clock` (wall time by default; time.process_time for CPU time).

    Args:
        work: the work to time, called once.
        device: the device it runs on (its tensors').
        cpu_clock: the clock for a device that runs the work synchronously (the CPU).
    """
    if device.type != "cuda":
        start = cpu_clock()
        work()
        return cpu_clock() - start
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    work()
    torch.cuda.synchronize(device)
    return time.perf_counter() - start
