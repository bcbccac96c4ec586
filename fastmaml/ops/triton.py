"""Triton kernels of the fused update, as the ops `fastmaml_triton::fused_update` and
`fastmaml_triton::fused_update_` (the schemas of csrc/ops.cpp, under their own namespace so they do
not clash with the compiled CPU kernels), and of the moments op (`fused_moments`, a plain function:
its autograd is fastmaml/ops/moments/_autograd.py, backend fastmaml/ops/moments/triton.py). One multi-tensor launch per update, whatever the tensor
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
from collections.abc import Sequence
from contextlib import nullcontext as _nullcontext
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastmaml.ops import _autograd
from fastmaml.ops.operands import MOMENTS, UPDATE, Layout

_NS = "fastmaml_triton"
_BLOCK = 1024  # elements per vector step of a program
_CHUNK = 4096  # elements per program: a multiple of _BLOCK
_TL = {torch.float32: tl.float32, torch.float64: tl.float64, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


# NOTE: [triton tables]
# Each launch reads one int64 table (one column per tensor, so a program reads its tensor's entries
# n_tensors apart): row 0 the tensor's first program, row 1 its numel, then for each operand of the
# op's Layout (fastmaml/ops/operands.py, NOTE: [update operands]), in the Layout's order, its data
# pointer and its period (NOTE: [operand periods]; 0 when absent, the pointer then p's), then the
# outputs' pointers, and after the columns the float64 bits of the scalars (alpha, hyper). The kernels
# find an operand by its index in the Layout: the constants below.
def _k(layout: Layout, name: str) -> tl.constexpr:
    return tl.constexpr(layout.index(name))


_U_P, _U_G, _U_A, _U_GAMMA = (_k(UPDATE, x) for x in ("params", "grads", "lrs", "gammas"))
_U_IN = tl.constexpr(len(UPDATE.lists))
_M_P, _M_G, _M_A, _M_M, _M_V, _M_B = (_k(MOMENTS, x) for x in ("params", "grads", "lrs", "m", "v", "b"))
_M_IN = tl.constexpr(len(MOMENTS.lists))


@triton.jit
def _locate(table, n_tensors, CHUNK: tl.constexpr):
    """(the column of this program's tensor, its first element, its numel): the program finds its
    tensor by binary search of the first-program row, as ATen's multi_tensor_apply."""
    pid = tl.program_id(0)
    lo = n_tensors * 0
    hi = n_tensors
    while hi - lo > 1:  # the last tensor whose first chunk is <= pid
        mid = (lo + hi) // 2
        below = tl.load(table + mid) <= pid
        lo = tl.where(below, mid, lo)
        hi = tl.where(below, hi, mid)
    row = table + lo
    return row, (pid - tl.load(row)).to(tl.int64) * CHUNK, tl.load(row + n_tensors)


@triton.jit
def _operand(row, n_tensors, K: tl.constexpr, TY: tl.constexpr, ALIGNED: tl.constexpr):
    """(pointer, period) of operand K of the Layout."""
    ptr = tl.load(row + (2 + 2 * K) * n_tensors).to(tl.pointer_type(TY))
    if ALIGNED:  # every pointer 16-byte aligned (checked on the host): vector loads and stores
        ptr = tl.multiple_of(ptr, 16)
    return ptr, tl.load(row + (3 + 2 * K) * n_tensors)


@triton.jit
def _output(row, n_tensors, N_IN: tl.constexpr, J: tl.constexpr, TY: tl.constexpr, ALIGNED: tl.constexpr):
    """The pointer of output J, after the N_IN operands."""
    ptr = tl.load(row + (2 + 2 * N_IN + J) * n_tensors).to(tl.pointer_type(TY))
    if ALIGNED:
        ptr = tl.multiple_of(ptr, 16)
    return ptr


@triton.jit
def _scalar(table, n_tensors, ROWS: tl.constexpr, K: tl.constexpr, OPMATH: tl.constexpr):
    """Scalar K after the ROWS rows of columns: a double, rounded once to OPMATH."""
    return tl.load(table + ROWS * n_tensors + K).to(tl.float64, bitcast=True).to(OPMATH)


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
    """The update (NOTE: [update forms]): one program per CHUNK elements of one tensor, for all
    tensors of the table (NOTE: [triton tables]) at once."""
    row, start, n = _locate(table, n_tensors, CHUNK)
    p_ptr, _ = _operand(row, n_tensors, _U_P, P_TY, ALIGNED)
    g_ptr, _ = _operand(row, n_tensors, _U_G, G_TY, ALIGNED)
    a_ptr, a_period = _operand(row, n_tensors, _U_A, A_TY, ALIGNED)
    gamma_ptr, gamma_period = _operand(row, n_tensors, _U_GAMMA, GAMMA_TY, ALIGNED)
    out_ptr = _output(row, n_tensors, _U_IN, 0, P_TY, ALIGNED)
    alpha = _scalar(table, n_tensors, 2 + 2 * _U_IN + 1, 0, OPMATH)
    for b in tl.static_range(CHUNK // BLOCK):
        offs = start + b * BLOCK + tl.arange(0, BLOCK)
        if start + (b + 1) * BLOCK <= n:
            _update_block(p_ptr, g_ptr, out_ptr, a_ptr, a_period, gamma_ptr, gamma_period, alpha, n, offs,
                          HAS_A, HAS_GAMMA, True)
        elif start + b * BLOCK < n:
            _update_block(p_ptr, g_ptr, out_ptr, a_ptr, a_period, gamma_ptr, gamma_period, alpha, n, offs,
                          HAS_A, HAS_GAMMA, False)


@triton.jit
def _div_root(q, w, eps, F64: tl.constexpr):
    """q / (sqrt(w) + eps), correctly rounded (as the C++ kernels): float64's sqrt and division are;
    float32's need the _rn forms (the plain ones are approximate on CUDA)."""
    if F64:
        out = q / (tl.sqrt(w) + eps)
    else:
        out = tl.div_rn(q, tl.sqrt_rn(w) + eps)
    return out


@triton.jit
def _multi_moments_kernel(table, n_tensors, TY: tl.constexpr, OPMATH: tl.constexpr, HAS_A: tl.constexpr,
                          HAS_M: tl.constexpr, HAS_V: tl.constexpr, HAS_B: tl.constexpr, ADAM: tl.constexpr,
                          CENTERED: tl.constexpr, NESTEROV: tl.constexpr, DIRECTION: tl.constexpr,
                          WD: tl.constexpr, DD: tl.constexpr, F64: tl.constexpr, ALIGNED: tl.constexpr,
                          CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    """The stateful optimizers' update (NOTE: [moment forms], the expressions of update.h in the
    same order; sqrt and the division correctly rounded): outputs (p' or d, m', v', b')."""
    row, start, n = _locate(table, n_tensors, CHUNK)
    p_ptr, _ = _operand(row, n_tensors, _M_P, TY, ALIGNED)
    g_ptr, _ = _operand(row, n_tensors, _M_G, TY, ALIGNED)
    a_ptr, a_period = _operand(row, n_tensors, _M_A, TY, ALIGNED)
    m_ptr, _ = _operand(row, n_tensors, _M_M, TY, ALIGNED)
    v_ptr, _ = _operand(row, n_tensors, _M_V, TY, ALIGNED)
    b_ptr, _ = _operand(row, n_tensors, _M_B, TY, ALIGNED)
    out_ptr = _output(row, n_tensors, _M_IN, 0, TY, ALIGNED)
    m_out = _output(row, n_tensors, _M_IN, 1, TY, ALIGNED)
    v_out = _output(row, n_tensors, _M_IN, 2, TY, ALIGNED)
    b_out = _output(row, n_tensors, _M_IN, 3, TY, ALIGNED)
    rows: tl.constexpr = 2 + 2 * _M_IN + 4
    alpha = _scalar(table, n_tensors, rows, 0, OPMATH)
    wd = _scalar(table, n_tensors, rows, 1, OPMATH)
    b1 = _scalar(table, n_tensors, rows, 2, OPMATH)
    c1 = _scalar(table, n_tensors, rows, 3, OPMATH)
    b2 = _scalar(table, n_tensors, rows, 4, OPMATH)
    c2 = _scalar(table, n_tensors, rows, 5, OPMATH)
    s1 = _scalar(table, n_tensors, rows, 6, OPMATH)
    s2 = _scalar(table, n_tensors, rows, 7, OPMATH)
    eps_in = _scalar(table, n_tensors, rows, 8, OPMATH)
    eps = _scalar(table, n_tensors, rows, 9, OPMATH)
    mu = _scalar(table, n_tensors, rows, 10, OPMATH)
    c = _scalar(table, n_tensors, rows, 11, OPMATH)
    keep = _scalar(table, n_tensors, rows, 12, OPMATH)
    dd = _scalar(table, n_tensors, rows, 13, OPMATH)
    for blk in tl.static_range(CHUNK // BLOCK):
        offs = start + blk * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        if start + blk * BLOCK < n:
            p = tl.load(p_ptr + offs, mask=mask).to(OPMATH)
            g = tl.load(g_ptr + offs, mask=mask).to(OPMATH)
            if WD:
                g = g + wd * p
            m = g
            if HAS_M:
                m = b1 * tl.load(m_ptr + offs, mask=mask).to(OPMATH) + c1 * g
                tl.store(m_out + offs, m.to(TY), mask=mask)
            q = g
            if ADAM:
                q = s1 * m
            if HAS_V:
                v = b2 * tl.load(v_ptr + offs, mask=mask).to(OPMATH) + c2 * (g * g)
                tl.store(v_out + offs, v.to(TY), mask=mask)
                w = s2 * v
                if CENTERED:
                    w = w - m * m
                q = _div_root(q, w + eps_in, eps, F64)
            d = q
            if HAS_B:
                bt = mu * tl.load(b_ptr + offs, mask=mask).to(OPMATH) + c * q
                tl.store(b_out + offs, bt.to(TY), mask=mask)
                d = bt
                if NESTEROV:
                    d = q + mu * bt
            out = d
            if not DIRECTION:  # NOTE: [update forms]: gamma * p - alpha * (a * d)
                a = tl.zeros_like(p) + 1
                if HAS_A:
                    a = _side(a_ptr, a_period, n, offs, mask, False, OPMATH)
                gamma = keep + tl.zeros_like(p)
                if DD:
                    gamma = keep - a * dd
                out = gamma * p - alpha * (a * d)
            tl.store(out_ptr + offs, out.to(TY), mask=mask)


def _periodic(t: Tensor, shape: torch.Size) -> tuple[Tensor, int]:
    """(values, period) as in NOTE: [operand periods] (csrc/include/fastmaml/operands.h)."""
    if t.numel() == 1:
        return t, 1
    rest = t.expand(shape)
    while rest.dim() > 0 and (rest.shape[0] == 1 or rest.stride(0) == 0):
        rest = rest[0]
    rest = rest.contiguous()
    return rest, rest.numel()


Lists = Sequence[Any]  # per operand: a list of tensors, or None where absent


def _table(layout: Layout, idx: list[int], inputs: Lists, outputs: Lists,
           scalars: Sequence[float]) -> tuple[Tensor, int, bool, list[Tensor]]:
    """(table, programs, aligned, tensors to keep alive until the launch) of the tensors `idx` (same
    device and dtypes, none empty): NOTE: [triton tables]. `keep` holds the contiguous copies: freed
    before the launch, the caching allocator could hand their memory to the next copy before the
    kernel has read them."""
    p_index = layout.index("params")
    keep: list[Tensor] = []
    cols, chunks, aligned = [], 0, True
    for i in idx:
        p = inputs[p_index][i].contiguous()
        n = p.numel()
        col, ptrs = [chunks, n], []
        for name, lst in zip(layout.lists, inputs):
            if lst is None:
                t, period = p, 0
            elif name in layout.broadcast:
                t, period = _periodic(lst[i], p.shape)
            else:
                t, period = lst[i].contiguous(), n
            keep.append(t)
            ptrs.append(t.data_ptr())
            col += [ptrs[-1], period]
        ptrs += [p.data_ptr() if out is None else out[i].data_ptr() for out in outputs]
        col += ptrs[len(layout.lists):]
        aligned = aligned and all(x % 16 == 0 for x in ptrs)
        cols.append(col)
        chunks += triton.cdiv(n, _CHUNK)
    bits = [struct.unpack("<q", struct.pack("<d", float(x)))[0] for x in scalars]
    table = torch.tensor([x for row in zip(*cols) for x in row] + bits, dtype=torch.int64)
    p0 = inputs[p_index][idx[0]]
    if p0.is_cuda:
        table = table.pin_memory().to(p0.device, non_blocking=True)
    return table, chunks, aligned, keep


def _groups(params: Sequence[Tensor], lists: Lists) -> list[list[int]]:
    """The non-empty tensors grouped by device and dtypes: one launch per group, one in all for the
    usual homogeneous list."""
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        if p.numel() > 0:
            key = (p.device, p.dtype, *(None if s is None else s[i].dtype for s in lists))
            groups.setdefault(key, []).append(i)
    return list(groups.values())


def _opmath(dtype: torch.dtype) -> tl.dtype:
    return tl.float64 if dtype == torch.float64 else tl.float32


def _device(t: Tensor) -> Any:
    return torch.cuda.device(t.device) if t.is_cuda else _nullcontext()


def _run(dst: list[Tensor], params: Sequence[Tensor], grads: Sequence[Tensor], lrs: Sequence[Tensor] | None,
         gammas: Sequence[Tensor] | None, alpha: float) -> None:
    """dst[i] = the update of tensor i; dst[i] is contiguous and may be params[i] itself."""
    for idx in _groups(params, (grads, lrs, gammas)):
        table, chunks, aligned, keep = _table(UPDATE, idx, (params, grads, lrs, gammas), (dst,), (alpha,))
        p0 = params[idx[0]]
        side_ty = lambda sides: _TL[p0.dtype] if sides is None else _TL[sides[idx[0]].dtype]
        with _device(p0):
            _multi_update_kernel[(chunks,)](
                table, len(idx), P_TY=_TL[p0.dtype], G_TY=_TL[grads[idx[0]].dtype], A_TY=side_ty(lrs),
                GAMMA_TY=side_ty(gammas), OPMATH=_opmath(p0.dtype), HAS_A=lrs is not None,
                HAS_GAMMA=gammas is not None, ALIGNED=aligned, CHUNK=_CHUNK, BLOCK=_BLOCK,
            )
        del keep


def _fused_update(params: list[Tensor], grads: list[Tensor], lrs: list[Tensor] | None, gammas: list[Tensor] | None,
                  alpha: float) -> list[Tensor]:
    out = [torch.empty_like(p, memory_format=torch.contiguous_format) for p in params]
    _run(out, params, grads, lrs, gammas, alpha)
    return out


def _fused_update_(params: list[Tensor], grads: list[Tensor], lrs: list[Tensor] | None,
                   gammas: list[Tensor] | None, alpha: float) -> None:
    dst = [p.contiguous() for p in params]
    _run(dst, dst, grads, lrs, gammas, alpha)
    for p, d in zip(params, dst):
        if d is not p:
            p.copy_(d)


def fused_moments(params: list[Tensor], grads: list[Tensor], lrs: list[Tensor] | None, m: list[Tensor] | None,
                  v: list[Tensor] | None, b: list[Tensor] | None, alpha: float, hyper: Sequence[float],
                  flags: int) -> tuple[list[Tensor], ...]:
    """The moments op (the schema of csrc/ops.cpp's fastmaml::fused_moments): one launch per update
    (per device and dtype present). The arguments are checked by fastmaml.ops.moments."""
    new = lambda: [torch.empty_like(p, memory_format=torch.contiguous_format) for p in params]
    outs = (new(), *(None if s is None else new() for s in (m, v, b)))
    wd, dd = hyper[0], hyper[-1]
    for idx in _groups(params, (grads, lrs, m, v, b)):
        table, chunks, aligned, keep = _table(MOMENTS, idx, (params, grads, lrs, m, v, b), outs, (alpha, *hyper))
        p0 = params[idx[0]]
        with _device(p0):
            _multi_moments_kernel[(chunks,)](
                table, len(idx), TY=_TL[p0.dtype], OPMATH=_opmath(p0.dtype), HAS_A=lrs is not None,
                HAS_M=m is not None, HAS_V=v is not None, HAS_B=b is not None, ADAM=bool(flags & 1),
                CENTERED=bool(flags & 2), NESTEROV=bool(flags & 4), DIRECTION=bool(flags & 8), WD=wd != 0,
                DD=dd != 0, F64=p0.dtype == torch.float64, ALIGNED=aligned, CHUNK=_CHUNK, BLOCK=_BLOCK,
            )
        del keep
    return tuple([] if out is None else out for out in outs)


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


def update(params: list[Tensor], grads: list[Tensor], lrs: list[Tensor] | None, gammas: list[Tensor] | None,
           alpha: float) -> list[Tensor]:
    """The differentiable update (fastmaml.ops.update's backend function)."""
    return list(_autograd.call(torch.ops.fastmaml_triton.fused_update.default, params, grads, lrs, gammas, alpha))


def update_(params: list[Tensor], grads: list[Tensor], lrs: list[Tensor] | None, gammas: list[Tensor] | None,
            alpha: float) -> None:
    """The in-place update (fastmaml.ops.update_'s backend function)."""
    _autograd.call(torch.ops.fastmaml_triton.fused_update_.default, params, grads, lrs, gammas, alpha)
