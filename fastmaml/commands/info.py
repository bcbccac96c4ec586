"""`fastmaml info`: the torch build, the devices, and which update backends are usable here."""

from __future__ import annotations

import argparse
import os
import platform
from typing import Any


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("info", help="torch build, devices and usable backends", description=__doc__)
    p.set_defaults(func=run)


def _triton_status() -> str:
    try:
        import triton
    except ImportError as error:
        return f"not importable ({error})"
    mode = "interpreter (TRITON_INTERPRET=1)" if os.environ.get("TRITON_INTERPRET") == "1" else "compiled"
    return f"importable, version {triton.__version__}, {mode}"


def collect() -> dict[str, Any]:
    import torch

    from fastmaml import ops
    from fastmaml.ops import native

    devices = ["cpu"] + [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    usable = {}
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        usable[device] = [b for b in ops.BACKENDS if ops.is_available(b, device)]
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch CUDA build": torch.version.cuda or "none (CPU-only build)",
        "CPU threads": torch.get_num_threads(),
        "devices": devices,
        "extension fastmaml._C": "built" if native.import_error is None else f"not built ({native.import_error})",
        "CUDA kernels": "built" if native.cuda_kernels_built() else "not built",
        "triton": _triton_status(),
        "usable backends": usable,
        "backend choice": ops.get_backend(),
        "auto resolves to": {d: ops.resolve_backend(torch.device(d)) for d in usable},
    }


def run(args: argparse.Namespace) -> int:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        info = collect()
    width = max(len(k) for k in info)
    for key, value in info.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}: {v}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(value)
        print(f"{key:<{width}}  {value}")
    return 0
