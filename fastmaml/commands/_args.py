"""Checks of command-line values shared by the subcommands: each raises CommandError naming the
flag and what it expects, before anything is written."""

from __future__ import annotations

import math
import os
from pathlib import Path

from fastmaml.cli import CommandError


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def at_least(name: str, value: int | None, low: int) -> None:
    """An integer option: None (unset) or >= low."""
    if value is not None and value < low:
        raise CommandError(f"{flag(name)} must be >= {low}, got {value}")


def number(name: str, value: float | None, low: float = 0.0, strict: bool = False) -> None:
    """A float option: None (unset) or finite and >= low (> low when strict)."""
    if value is None:
        return
    if not math.isfinite(value) or value < low or (strict and value == low):
        raise CommandError(f"{flag(name)} must be a finite number {'>' if strict else '>='} {low:g}, got {value}")


def device(value: str | None) -> None:
    """--device: a torch device string that exists on this machine."""
    if value is None:
        return
    import torch

    try:
        dev = torch.device(value)
    except (RuntimeError, ValueError):
        raise CommandError(f"--device must be cpu, cuda or cuda:N, got {value!r}") from None
    if dev.type == "cpu":
        return
    if dev.type != "cuda":
        raise CommandError(f"--device must be cpu, cuda or cuda:N, got {value!r}")
    if not torch.cuda.is_available():
        raise CommandError(f"--device {value}: CUDA is not available on this machine (use --device cpu)")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise CommandError(f"--device {value}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def writable_dir(option: str, path: str | os.PathLike) -> None:
    """A folder that exists or can be created, and can be written, checked without creating it."""
    path = Path(path).expanduser().absolute()
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        what = "is not a folder" if probe == path else f"cannot be created: {str(probe)!r} is not a folder"
        raise CommandError(f"{option} {str(path)!r} {what}")
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "" if probe == path else f" (its nearest existing parent {str(probe)!r})"
        raise CommandError(f"{option} {str(path)!r}{where} is not writable")
