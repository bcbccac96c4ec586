"""Triton kernels of the batched CG's vector algebra (NOTE: [cg ops] in fastmaml/ops/cg/__init__.py):
one kernel, the op a compile-time constant, launched once per tensor on a (task, block) grid; each
program writes one partial sum, and the partials of a task are summed in a fixed order (in float64)
after the launches. fp32 arithmetic for the 16-bit types.

Runs on CUDA tensors, and on CPU tensors under the Triton interpreter (TRITON_INTERPRET=1, set
before triton is first imported), which is how the tests check it without a GPU.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError as error:  # triton is optional
    triton = None
    import_error: str | None = f"{type(error).__name__}: {error}"
else:
    import_error = None

_BLOCK = 1024
_DOT, _MATVEC_DOT, _STEP, _DIRECTION = 0, 1, 2, 3

if triton is not None:

    @triton.jit
    def _cg_kernel(x0_ptr, x1_ptr, x2_ptr, x3_ptr, coef_ptr, c1_ptr, partial_ptr, n, partial_stride, col0,
                   OP: tl.constexpr, BLOCK: tl.constexpr):
        t = tl.program_id(0).to(tl.int64)
        b = tl.program_id(1).to(tl.int64)
        offs = b * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        base = t * n
        a = tl.load(coef_ptr + t)  # opmath: fp32, or fp64 for fp64 tensors
        v0 = tl.load(x0_ptr + base + offs, mask=mask, other=0).to(a.dtype)
        v1 = tl.load(x1_ptr + base + offs, mask=mask, other=0).to(a.dtype)
        if OP == 0:  # dot: <x0, x1>
            term = v0 * v1
        elif OP == 1:  # matvec_dot_: x0 <- q = c0 x1 + c1 x0; <x1, q>
            q = a * v1 + tl.load(c1_ptr) * v0
            tl.store(x0_ptr + base + offs, q.to(x0_ptr.dtype.element_ty), mask=mask)
            term = v1 * q
        elif OP == 2:  # step_: x0 += alpha x2; x1 -= alpha x3; <x1, x1>
            v2 = tl.load(x2_ptr + base + offs, mask=mask, other=0).to(a.dtype)
            v3 = tl.load(x3_ptr + base + offs, mask=mask, other=0).to(a.dtype)
            x = v0 + a * v2
            r = v1 - a * v3
            tl.store(x0_ptr + base + offs, x.to(x0_ptr.dtype.element_ty), mask=mask)
            tl.store(x1_ptr + base + offs, r.to(x1_ptr.dtype.element_ty), mask=mask)
            term = r * r
        else:  # direction_: x0 <- x1 + beta x0
            p = v1 + a * v0
            tl.store(x0_ptr + base + offs, p.to(x0_ptr.dtype.element_ty), mask=mask)
            term = v0 * 0
        tl.store(partial_ptr + t * partial_stride + col0 + b, tl.sum(term, axis=0))


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _launch(op: int, lists: list[list[Tensor]], written: int, coef: Tensor, c1: float) -> Tensor:
    """Runs `op` over the lists; the first `written` lists are updated in place. Returns [T] sums."""
    first = lists[0]
    T = first[0].shape[0]
    device, opmath = first[0].device, _opmath(first[0].dtype)
    work = [[t.contiguous() for t in lst] for lst in lists]
    while len(work) < 4:
        work.append(work[0])  # unused pointer slots
    blocks = [triton.cdiv(t.numel() // T, _BLOCK) if T and t.numel() else 0 for t in first]
    partial = torch.zeros(T, max(sum(blocks), 1), dtype=opmath, device=device)
    c1_t = torch.full((1,), c1, dtype=opmath, device=device)
    col = 0
    for i, nb in enumerate(blocks):
        if nb == 0:
            continue
        _cg_kernel[(T, nb)](work[0][i], work[1][i], work[2][i], work[3][i], coef, c1_t, partial,
                            first[i].numel() // T, partial.stride(0), col, OP=op, BLOCK=_BLOCK)
        col += nb
    for k in range(written):
        for orig, dst in zip(lists[k], work[k]):
            if dst is not orig:
                orig.copy_(dst)
    return partial.sum(1, dtype=torch.float64).to(opmath)


def is_available(device: torch.device) -> bool:
    """CUDA devices, and CPU under the Triton interpreter (TRITON_INTERPRET=1)."""
    if triton is None:
        return False
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return False
    if device.type == "cuda" and not torch.cuda.is_available():
        return False
    try:
        a = torch.ones(1, 2, device=device)
        return bool(dot([a], [a]).item() == 2.0)
    except Exception:  # noqa: BLE001 - a missing driver or compiler shows up as many exception types
        return False


def dot(a: list[Tensor], b: list[Tensor]) -> Tensor:
    ones = torch.ones(a[0].shape[0], dtype=_opmath(a[0].dtype), device=a[0].device)
    return _launch(_DOT, [a, b], 0, ones, 0.0)


def matvec_dot_(hp: list[Tensor], p: list[Tensor], c0: float, c1: float) -> Tensor:
    c0_t = torch.full((hp[0].shape[0],), c0, dtype=_opmath(hp[0].dtype), device=hp[0].device)
    return _launch(_MATVEC_DOT, [hp, p], 1, c0_t, c1)


def step_(x: list[Tensor], r: list[Tensor], p: list[Tensor], q: list[Tensor], alpha: Tensor) -> Tensor:
    return _launch(_STEP, [x, r, p, q], 2, alpha.contiguous(), 0.0)


def direction_(p: list[Tensor], r: list[Tensor], beta: Tensor) -> None:
    _launch(_DIRECTION, [p, r], 1, beta.contiguous(), 0.0)
