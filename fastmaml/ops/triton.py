"""Triton kernels of the fused update, as the ops `fastmaml_triton::fused_update` and
`fastmaml_triton::fused_update_` (the schemas of csrc/ops.cpp, under their own namespace so they do
not clash with the compiled CPU kernels). One multi-tensor launch per update, whatever the tensor
count (per device and dtype present, so one for the usual list); the forms of NOTE: [update forms]
are compile-time constants of the one kernel. Fake, autograd and vmap rules: fastmaml/ops/_autograd.py
(backward with torch ops). The ops are defined with torch.library.Library rather than
torch.library.triton_op/custom_op because those install their own Autograd kernel, which does not
compose with torch.func transforms in this torch (see _autograd.py).

Runs on CUDA tensors, and on CPU tensors under the Triton interpreter (TRITON_INTERPRET=1, set
before triton is first imported): that is how CI, which has no GPU, tests these kernels.
"""

from __future__ import annotations

import os
import struct
from contextlib import nullcontext as _nullcontext

import torch
import triton
import triton.language as tl

from fastmaml.ops import _autograd

_NS = "fastmaml_triton"
_BLOCK = 1024  # elements per vector step of a program
_CHUNK = 4096  # elements per program: a multiple of _BLOCK
_TL = {torch.float32: tl.float32, torch.float64: tl.float64, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


@triton.jit
def _side(ptr, period, n, offs, mask, FULL: tl.constexpr, ty):
    """The values of a or gamma at `offs` of a tensor of n elements (NOTE: [operand periods])."""
    if period == 1:
        v = tl.load(ptr).to(ty) + tl.zeros_like(offs).to(ty)
    elif period == n:
        v = tl.load(ptr + offs).to(ty) if FULL else tl.load(ptr + offs, mask=mask).to(ty)
    else:
        v = tl.load(ptr + offs % period, mask=mask).to(ty)
    return v


@triton.jit
def _update_block(p_ptr, g_ptr, out_ptr, a_ptr, a_period, gamma_ptr, gamma_period, alpha, n, offs,
                  HAS_A: tl.constexpr, HAS_GAMMA: tl.constexpr, FULL: tl.constexpr):
    mask = offs < n
    if FULL:  # no mask: the loads and stores vectorize
        p = tl.load(p_ptr + offs).to(alpha.dtype)
        g = tl.load(g_ptr + offs).to(alpha.dtype)
    else:
        p = tl.load(p_ptr + offs, mask=mask).to(alpha.dtype)
        g = tl.load(g_ptr + offs, mask=mask).to(alpha.dtype)
    step = g
    if HAS_A:
        step = _side(a_ptr, a_period, n, offs, mask, FULL, alpha.dtype) * g
    kept = p
    if HAS_GAMMA:
        kept = _side(gamma_ptr, gamma_period, n, offs, mask, FULL, alpha.dtype) * p
    out = (kept - alpha * step).to(out_ptr.dtype.element_ty)  # NOTE: [update forms]: gamma * p - alpha * (a * g)
    if FULL:
        tl.store(out_ptr + offs, out)
    else:
        tl.store(out_ptr + offs, out, mask=mask)


@triton.jit
def _multi_update_kernel(table, n_tensors, P_TY: tl.constexpr, G_TY: tl.constexpr, A_TY: tl.constexpr,
                         GAMMA_TY: tl.constexpr, OPMATH: tl.constexpr, HAS_A: tl.constexpr,
                         HAS_GAMMA: tl.constexpr, ALIGNED: tl.constexpr, CHUNK: tl.constexpr,
                         BLOCK: tl.constexpr):
    """One program per CHUNK elements of one tensor, for all tensors of the table at once (as
    ATen's multi_tensor_apply): the program finds its tensor by binary search of `first_chunk`."""
    pid = tl.program_id(0)
    lo = n_tensors * 0
    hi = n_tensors
    while hi - lo > 1:  # the last tensor whose first chunk is <= pid
        mid = (lo + hi) // 2
        below = tl.load(table + mid) <= pid
        lo = tl.where(below, mid, lo)
        hi = tl.where(below, hi, mid)
    row = table + lo
    start = (pid - tl.load(row)).to(tl.int64) * CHUNK
    n = tl.load(row + n_tensors)
    p_ptr = tl.load(row + 2 * n_tensors).to(tl.pointer_type(P_TY))
    g_ptr = tl.load(row + 3 * n_tensors).to(tl.pointer_type(G_TY))
    out_ptr = tl.load(row + 4 * n_tensors).to(tl.pointer_type(P_TY))
    a_ptr = tl.load(row + 5 * n_tensors).to(tl.pointer_type(A_TY))
    a_period = tl.load(row + 6 * n_tensors)
    gamma_ptr = tl.load(row + 7 * n_tensors).to(tl.pointer_type(GAMMA_TY))
    gamma_period = tl.load(row + 8 * n_tensors)
    if ALIGNED:  # every pointer 16-byte aligned (checked on the host): vector loads and stores
        p_ptr = tl.multiple_of(p_ptr, 16)
        g_ptr = tl.multiple_of(g_ptr, 16)
        out_ptr = tl.multiple_of(out_ptr, 16)
        a_ptr = tl.multiple_of(a_ptr, 16)
        gamma_ptr = tl.multiple_of(gamma_ptr, 16)
    alpha = tl.load(table + 9 * n_tensors).to(tl.float64, bitcast=True).to(OPMATH)  # the double, rounded once
    for b in tl.static_range(CHUNK // BLOCK):
        offs = start + b * BLOCK + tl.arange(0, BLOCK)
        if start + (b + 1) * BLOCK <= n:
            _update_block(p_ptr, g_ptr, out_ptr, a_ptr, a_period, gamma_ptr, gamma_period, alpha, n, offs,
                          HAS_A, HAS_GAMMA, True)
        elif start + b * BLOCK < n:
            _update_block(p_ptr, g_ptr, out_ptr, a_ptr, a_period, gamma_ptr, gamma_period, alpha, n, offs,
                          HAS_A, HAS_GAMMA, False)


def _periodic(t, shape):
    """(values, period) as in NOTE: [operand periods] (csrc/include/fastmaml/operands.h)."""
    if t.numel() == 1:
        return t, 1
    rest = t.expand(shape)
    while rest.dim() > 0 and (rest.shape[0] == 1 or rest.stride(0) == 0):
        rest = rest[0]
    rest = rest.contiguous()
    return rest, rest.numel()


def _launch(idx, dst, params, grads, lrs, gammas, alpha):
    """One kernel launch for tensors `idx` (same device and dtypes, none empty). Its table (int64,
    one column per tensor) has the rows first_chunk (the tensor's first program), numel, the data
    pointers of p, g, out and a, a's period, gamma's pointer and period (NOTE: [operand periods]),
    then alpha's float64 bits: one host-to-device copy and one kernel, no other launch."""
    p0 = params[idx[0]]
    # `keep` holds the contiguous copies until the launch: freed earlier, the caching allocator
    # could hand their memory to the next copy before the kernel has read them.
    keep, cols, chunks, aligned = [], [], 0, True
    for i in idx:
        p, g = params[i].contiguous(), grads[i].contiguous()
        n = p.numel()
        a, a_period = (p, 0) if lrs is None else _periodic(lrs[i], p.shape)
        gamma, gamma_period = (p, 0) if gammas is None else _periodic(gammas[i], p.shape)
        keep += [p, g, a, gamma]
        ptrs = [t.data_ptr() for t in (p, g, dst[i], a, gamma)]
        aligned = aligned and all(x % 16 == 0 for x in ptrs)
        cols.append([chunks, n, *ptrs[:4], a_period, ptrs[4], gamma_period])
        chunks += triton.cdiv(n, _CHUNK)
    alpha_bits = struct.unpack("<q", struct.pack("<d", alpha))[0]
    table = torch.tensor([x for row in zip(*cols) for x in row] + [alpha_bits], dtype=torch.int64)
    if p0.is_cuda:
        table = table.pin_memory().to(p0.device, non_blocking=True)
    side_ty = lambda sides: _TL[p0.dtype] if sides is None else _TL[sides[idx[0]].dtype]
    with torch.cuda.device(p0.device) if p0.is_cuda else _nullcontext():
        _multi_update_kernel[(chunks,)](
            table, len(idx), P_TY=_TL[p0.dtype], G_TY=_TL[grads[idx[0]].dtype], A_TY=side_ty(lrs),
            GAMMA_TY=side_ty(gammas), OPMATH=tl.float64 if p0.dtype == torch.float64 else tl.float32, HAS_A=lrs is not None, HAS_GAMMA=gammas is not None, ALIGNED=aligned,
            CHUNK=_CHUNK, BLOCK=_BLOCK,
        )
    del keep


def _run(dst, params, grads, lrs, gammas, alpha):
    """dst[i] = the update of tensor i; dst[i] is contiguous and may be params[i] itself. One launch
    per (device, dtypes) group of non-empty tensors: one in all for the usual homogeneous list."""
    groups = {}
    for i, p in enumerate(params):
        if p.numel() > 0:
            key = (p.device, p.dtype, grads[i].dtype, *(None if s is None else s[i].dtype for s in (lrs, gammas)))
            groups.setdefault(key, []).append(i)
    for idx in groups.values():
        _launch(idx, dst, params, grads, lrs, gammas, alpha)


def _fused_update(params, grads, lrs, gammas, alpha):
    out = [torch.empty_like(p, memory_format=torch.contiguous_format) for p in params]
    _run(out, params, grads, lrs, gammas, alpha)
    return out


def _fused_update_(params, grads, lrs, gammas, alpha):
    dst = [p.contiguous() for p in params]
    _run(dst, dst, grads, lrs, gammas, alpha)
    for p, d in zip(params, dst):
        if d is not p:
            p.copy_(d)


_lib = torch.library.Library(_NS, "DEF")
_lib.define("fused_update(Tensor[] params, Tensor[] grads, Tensor[]? lrs, Tensor[]? gammas, float alpha) -> Tensor[]")
_lib.define("fused_update_(Tensor(a!)[] params, Tensor[] grads, Tensor[]? lrs, Tensor[]? gammas, float alpha) -> ()")
for _key in ("CUDA", "CPU"):
    _lib.impl("fused_update", _fused_update, _key)
    _lib.impl("fused_update_", _fused_update_, _key)
_autograd.register(_NS, compiled=False)


def is_available(device: torch.device) -> bool:
    """CUDA devices, and CPU under the Triton interpreter (TRITON_INTERPRET=1)."""
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return False
    if device.type == "cuda" and not torch.cuda.is_available():
        return False
    try:
        p = torch.ones(2, device=device)
        return bool((torch.ops.fastmaml_triton.fused_update([p], [p], None, None, 0.5)[0] == 0.5).all())
    except Exception:  # noqa: BLE001 (a missing driver or compiler raises many exception types)
        return False


def update(params, grads, lrs, gammas, alpha):
    return list(_autograd.call(torch.ops.fastmaml_triton.fused_update.default, params, grads, lrs, gammas, alpha))


def update_(params, grads, lrs, gammas, alpha):
    _autograd.call(torch.ops.fastmaml_triton.fused_update_.default, params, grads, lrs, gammas, alpha)
