"""Pieces every benchmark script records the same way."""

from __future__ import annotations

import platform
import re
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
    """Counts the ATen (and custom) ops dispatched while active: the proxy for GPU launches."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))
