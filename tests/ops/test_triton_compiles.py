"""Every Triton kernel launch fastmaml makes, compiled for Hopper (sm_90, the device machine's H100 and
H200) by Triton's own compiler and ptxas: no GPU needed. The interpreter suites check the kernels'
arithmetic on the CPU but lower nothing, so a construct the compiler refuses (a cast, an fp32-only
intrinsic on fp64, branches of different types) passes there and would fail only on a device.

The launches are recorded at the real launch sites (the kernel object replaced by a recorder, the
ops called on CPU tensors), so the argument types and compile-time constants compiled here are
the ones a GPU run would compile: every update form and dtype, aligned or not, rates of another
dtype than the parameters; every moments form of tests/ops/_moments_cases.py; every CG op. Run
by `make test` (this venv's Triton) and `make test-torch-low` (the device's Triton, 3.6).
"""

from __future__ import annotations

import pytest
import torch

from tests.ops import _cases
from tests.ops._moments_cases import FORMS as MOMENT_FORMS, case as moments_case

triton = pytest.importorskip("triton")
from triton.backends.compiler import GPUTarget  # noqa: E402

from fastmaml.ops import triton as kernels  # noqa: E402
from fastmaml.ops.cg import triton as cg_kernels  # noqa: E402

HOPPER = GPUTarget("cuda", 90, 32)
_TYPES = {torch.float32: "fp32", torch.float64: "fp64", torch.float16: "fp16", torch.bfloat16: "bf16",
          torch.int64: "i64", torch.int32: "i32"}


class Recorder:
    """Stands in for a @triton.jit kernel: `kernel[grid](*args, **constexprs)` records the launch."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.launches: dict[str, tuple[dict, dict]] = {}

    def __getitem__(self, grid):
        def launch(*args, **constexprs):
            sig = signature(self.kernel, args, constexprs)
            self.launches[repr((sig, constexprs))] = (sig, constexprs)

        return launch


def signature(kernel, args, constexprs) -> dict:
    """Triton's signature of a launch: pointers by element type, integers by width, constexprs named."""
    sig = {}
    for name, value in zip(kernel.arg_names, args):
        if isinstance(value, torch.Tensor):
            sig[name] = "*" + _TYPES[value.dtype]
        elif isinstance(value, bool):
            sig[name] = "i1"
        elif isinstance(value, int):
            sig[name] = "i32" if -2**31 <= value < 2**31 else "i64"
        else:
            sig[name] = "fp32"
    assert len(sig) == len(args), f"{kernel.__name__}: a positional argument of an unknown kind"
    return {**sig, **dict.fromkeys(constexprs, "constexpr")}


def compile_all(recorder: Recorder) -> list[str]:
    assert recorder.launches, "nothing was launched"
    failures = []
    for sig, constexprs in recorder.launches.values():
        src = triton.compiler.ASTSource(fn=recorder.kernel, signature=sig, constexprs=constexprs)
        try:
            assert triton.compile(src, target=HOPPER).asm["cubin"]
        except Exception as error:  # noqa: BLE001 - the compiler's errors are of many types
            failures.append(f"{constexprs}: {type(error).__name__}: {str(error)[:2000]}")
    return failures


def _unaligned(t: torch.Tensor) -> torch.Tensor:
    """t's values at a data pointer 4 bytes past a 16-byte boundary."""
    base = torch.empty(t.numel() + 1, dtype=t.dtype)[1:]
    return base.copy_(t.reshape(-1)).view(t.shape)


def test_every_update_launch_compiles_for_hopper(monkeypatch):
    rec = Recorder(kernels._multi_update_kernel)
    monkeypatch.setattr(kernels, "_multi_update_kernel", rec)
    shapes = [(1,), (1023,), (5, 7)]
    for form in _cases.FORMS:
        for dtype, *_ in _cases.DTYPES:
            params, grads, lrs, gammas = _cases.make_case(form, dtype, shapes=shapes)
            kernels._fused_update(params, grads, lrs, gammas, 0.37)
            kernels._fused_update([_unaligned(p) for p in params], grads, lrs, gammas, 0.37)
        # rates of another dtype than the parameters (Meta-SGD's float32 rates on bfloat16 weights)
        params, grads, lrs, gammas = _cases.make_case(form, torch.bfloat16, shapes=shapes)
        wide = lambda side: None if side is None else [s.float() for s in side]
        kernels._fused_update(params, grads, wide(lrs), wide(gammas), 0.37)
    assert len(rec.launches) >= 3 * 4 * 2
    assert not (failed := compile_all(rec)), "\n".join(failed)


def test_every_moments_launch_compiles_for_hopper(monkeypatch):
    rec = Recorder(kernels._multi_moments_kernel)
    monkeypatch.setattr(kernels, "_multi_moments_kernel", rec)
    for name, (form, _, _, direction) in MOMENT_FORMS.items():
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            params, grads, lrs, m, v, b, alpha = moments_case(name, dtype)
            has_lrs = lrs is not None
            kernels.fused_moments(params, grads, lrs, m, v, b, alpha, form.hyper(alpha, has_lrs), form.flags(direction))
    assert len(rec.launches) >= len(MOMENT_FORMS)
    assert not (failed := compile_all(rec)), "\n".join(failed)


def test_every_cg_launch_compiles_for_hopper(monkeypatch):
    rec = Recorder(cg_kernels._cg_kernel)
    monkeypatch.setattr(cg_kernels, "_cg_kernel", rec)
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        lists = [[torch.randn(3, 5, 2).to(dtype), torch.randn(3, 7).to(dtype)] for _ in range(4)]
        x, r, p, q = lists
        coef = torch.ones(3, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
        cg_kernels.dot(x, r)
        cg_kernels.matvec_dot_(q, p, 0.5, 0.25)
        cg_kernels.step_(x, r, p, q, coef)
        cg_kernels.direction_(p, r, coef)
    assert len({c["OP"] for _, c in rec.launches.values()}) == 4
    assert not (failed := compile_all(rec)), "\n".join(failed)
