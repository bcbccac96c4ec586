"""Triton kernels of the fused update, as the ops `fastmaml_triton::fused_update` and
`fastmaml_triton::fused_update_` (the schemas of csrc/ops.cpp, under their own namespace so they do
not clash with the compiled CPU kernels). One launch per tensor; the forms of NOTE: [update forms]
are compile-time constants of the one kernel. Fake, autograd and vmap rules: fastmaml/ops/_autograd.py
(backward with torch ops). The ops are defined with torch.library.Library rather than
torch.library.triton_op/custom_op because those install their own Autograd kernel, which does not
compose with torch.func transforms in this torch (see _autograd.py).

Runs on CUDA tensors, and on CPU tensors under the Triton interpreter (TRITON_INTERPRET=1, set
before triton is first imported): that is how CI, which has no GPU, tests these kernels.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from fastmaml.ops import _autograd

_NS = "fastmaml_triton"
_BLOCK = 1024
_ABSENT, _SCALAR, _PERIODIC = 0, 1, 2  # how a or gamma is read (NOTE: [operand periods])


@triton.jit
def _update_kernel(p_ptr, g_ptr, a_ptr, gamma_ptr, alpha_ptr, out_ptr, n, a_period, gamma_period,
                   A_MODE: tl.constexpr, GAMMA_MODE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    alpha = tl.load(alpha_ptr)  # opmath dtype: fp32, or fp64 for fp64 tensors
    p = tl.load(p_ptr + offs, mask=mask).to(alpha.dtype)
    g = tl.load(g_ptr + offs, mask=mask).to(alpha.dtype)
    step = g
    if A_MODE == 1:
        step = tl.load(a_ptr).to(alpha.dtype) * g
    elif A_MODE == 2:
        step = tl.load(a_ptr + offs % a_period, mask=mask).to(alpha.dtype) * g
    kept = p
    if GAMMA_MODE == 1:
        kept = tl.load(gamma_ptr).to(alpha.dtype) * p
    elif GAMMA_MODE == 2:
        kept = tl.load(gamma_ptr + offs % gamma_period, mask=mask).to(alpha.dtype) * p
    out = kept - alpha * step  # NOTE: [update forms]: gamma * p - alpha * (a * g)
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def _periodic(t, shape):
    """(values, period) as in NOTE: [operand periods] (csrc/include/fastmaml/operands.h)."""
    if t.numel() == 1:
        return t, 1
    rest = t.expand(shape)
    while rest.dim() > 0 and (rest.shape[0] == 1 or rest.stride(0) == 0):
        rest = rest[0]
    rest = rest.contiguous()
    return rest, rest.numel()


def _run(dst, params, grads, lrs, gammas, alpha):
    """dst[i] = the update of tensor i; dst[i] is contiguous and may be params[i] itself."""
    alphas = {}  # one alpha tensor per (device, opmath dtype)
    for i, (p, g) in enumerate(zip(params, grads)):
        n = p.numel()
        if n == 0:
            continue
        opmath = torch.float64 if p.dtype == torch.float64 else torch.float32
        key = (p.device, opmath)
        if key not in alphas:
            alphas[key] = torch.full((1,), alpha, dtype=opmath, device=p.device)
        p, g = p.contiguous(), g.contiguous()
        a, a_period = (p, 0) if lrs is None else _periodic(lrs[i], p.shape)
        gamma, gamma_period = (p, 0) if gammas is None else _periodic(gammas[i], p.shape)
        modes = [_ABSENT if k == 0 else _SCALAR if k == 1 else _PERIODIC for k in (a_period, gamma_period)]
        _update_kernel[(triton.cdiv(n, _BLOCK),)](
            p, g, a, gamma, alphas[key], dst[i], n, max(a_period, 1), max(gamma_period, 1),
            A_MODE=modes[0], GAMMA_MODE=modes[1], BLOCK=_BLOCK,
        )


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
