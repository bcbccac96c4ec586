"""The compiled CG ops (`fastmaml._C`, csrc/cpu/cg.cpp and csrc/cuda/cg.cu): one dispatched op per
vector operation, whatever the number of tensors. Fake kernels are registered here (for
torch.library.opcheck and tracing); the ops have no autograd (NOTE: [cg ops])."""

from __future__ import annotations

import torch
from torch import Tensor

from fastmaml.ops import native as _update_native

_C = _update_native._C
import_error = _update_native.import_error
_libraries: list[torch.library.Library] = []


def _opmath(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _fake_reduction(first: list[Tensor]) -> Tensor:
    return first[0].new_empty((first[0].shape[0],), dtype=_opmath(first[0]))


def _register() -> bool:
    if _C is None or not hasattr(torch.ops.fastmaml, "cg_dot"):
        return False
    lib = torch.library.Library("fastmaml", "IMPL")
    _libraries.append(lib)
    torch.library.register_fake("fastmaml::cg_dot", lambda a, b: _fake_reduction(a), lib=lib)
    torch.library.register_fake("fastmaml::cg_matvec_dot_", lambda hp, p, c0, c1: _fake_reduction(hp), lib=lib)
    torch.library.register_fake("fastmaml::cg_step_", lambda x, r, p, q, alpha: _fake_reduction(x), lib=lib)
    torch.library.register_fake("fastmaml::cg_direction_", lambda p, r, beta: None, lib=lib)
    return True


_registered = _register()
if _C is not None and not _registered:
    import_error = "fastmaml._C was built without the CG ops (rebuild: make ext)"


def is_available(device: torch.device) -> bool:
    """Whether the compiled CG ops run on `device` (runs a two-element dot)."""
    if not _registered or (device.type == "cuda" and not _update_native.cuda_kernels_built()):
        return False
    try:
        a = torch.ones(1, 2, device=device)
        return bool(torch.ops.fastmaml.cg_dot([a], [a]).item() == 2.0)
    except (RuntimeError, NotImplementedError):
        return False


def dot(a: list[Tensor], b: list[Tensor]) -> Tensor:
    return torch.ops.fastmaml.cg_dot(a, b)


def matvec_dot_(hp: list[Tensor], p: list[Tensor], c0: float, c1: float) -> Tensor:
    return torch.ops.fastmaml.cg_matvec_dot_(hp, p, c0, c1)


def step_(x: list[Tensor], r: list[Tensor], p: list[Tensor], q: list[Tensor], alpha: Tensor) -> Tensor:
    return torch.ops.fastmaml.cg_step_(x, r, p, q, alpha)


def direction_(p: list[Tensor], r: list[Tensor], beta: Tensor) -> None:
    torch.ops.fastmaml.cg_direction_(p, r, beta)
