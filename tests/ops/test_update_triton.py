"""Runs the Triton backend's checks (tests/ops/_triton_suite.py) in a subprocess under the Triton
interpreter, on CPU tensors; with a CUDA device, also against reference on the GPU."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.ops import _suite
from tests.ops._cases import DTYPES, FORMS
from tests.ops._compare import assert_all_close
from tests.ops._triton_cases import MANY_FORMS, many_case

ROOT = Path(__file__).resolve().parents[2]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_triton_under_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    suite = Path(__file__).with_name("_triton_suite.py")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", str(suite)]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"


@needs_cuda
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES, ids=[str(d[0]).split(".")[1] for d in DTYPES])
def test_triton_cuda_matches_reference(form, dtype, atol, rtol):
    pytest.importorskip("triton")
    _suite.check_matches_reference(["triton"], form, dtype, atol, rtol, device="cuda")


def test_aligned_kernel_vectorizes():
    """Compiled for sm_90 (no GPU needed): with aligned pointers the full blocks load and store
    16 bytes at a time; the pointers come from a table, so only the ALIGNED hint makes this so."""
    triton = pytest.importorskip("triton")
    import triton.language as tl
    from triton.backends.compiler import GPUTarget

    from fastmaml.ops import triton as kernels

    def ptx(aligned):
        consts = {"P_TY": tl.float32, "G_TY": tl.float32, "A_TY": tl.float32, "GAMMA_TY": tl.float32,
                  "OPMATH": tl.float32, "HAS_A": True, "HAS_GAMMA": False, "ALIGNED": aligned,
                  "CHUNK": kernels._CHUNK, "BLOCK": kernels._BLOCK}
        src = triton.compiler.ASTSource(fn=kernels._multi_update_kernel, constexprs=consts,
                                        signature={"table": "*i64", "n_tensors": "i32", **dict.fromkeys(consts, "constexpr")})
        return triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["ptx"]

    assert "ld.global.v4.b32" in ptx(True) and "st.global.v4.b32" in ptx(True)
    assert "ld.global.v4" not in ptx(False)


@pytest.mark.parametrize("f64", [False, True], ids=["float32", "float64"])
def test_moments_kernel_compiles_for_the_gpu(f64):
    """The moments kernel compiled for sm_90 (no GPU needed: the interpreter runs it on CPU but does
    not lower it), every branch on: what the interpreter would let through (an fp32-only intrinsic
    on fp64, ...) fails here; the float32 root and division are the correctly rounded ones."""
    triton = pytest.importorskip("triton")
    import triton.language as tl
    from triton.backends.compiler import GPUTarget

    from fastmaml.ops import triton as kernels

    ty = tl.float64 if f64 else tl.float32
    flags = dict.fromkeys(("HAS_A", "HAS_M", "HAS_V", "HAS_B", "ADAM", "CENTERED", "NESTEROV", "WD", "DD"), True)
    consts = {"TY": ty, "OPMATH": ty, **flags, "DIRECTION": False, "F64": f64, "ALIGNED": True,
              "CHUNK": kernels._CHUNK, "BLOCK": kernels._BLOCK}
    src = triton.compiler.ASTSource(fn=kernels._multi_moments_kernel, constexprs=consts,
                                    signature={"table": "*i64", "n_tensors": "i32", **dict.fromkeys(consts, "constexpr")})
    ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["ptx"]
    assert ("sqrt.rn.f64" if f64 else "sqrt.rn.f32") in ptx and ("div.rn.f64" if f64 else "div.rn.f32") in ptx


@needs_cuda
@pytest.mark.parametrize("form", MANY_FORMS)
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES, ids=[str(d[0]).split(".")[1] for d in DTYPES])
def test_triton_cuda_one_kernel_for_many_tensors(form, dtype, atol, rtol):
    """On the GPU: the reference's numbers, and one kernel (torch.profiler) per update of 30 tensors."""
    pytest.importorskip("triton")
    from fastmaml.ops import reference, triton as kernels

    params, grads, lrs, gammas = many_case(form, dtype, device="cuda", chunk=kernels._CHUNK)
    expected = reference.update(params, grads, lrs, gammas, 0.37)
    out = [p.clone() for p in params]
    with torch.no_grad():
        assert _suite.cuda_kernels(lambda: kernels.update_(out, grads, lrs, gammas, 0.37)) == ["_multi_update_kernel"]
        assert _suite.cuda_kernels(lambda: kernels.update(params, grads, lrs, gammas, 0.37)) == ["_multi_update_kernel"]
    assert_all_close(kernels.update(params, grads, lrs, gammas, 0.37), expected, atol=atol, rtol=rtol,
                     what=f"triton cuda many {form}")


@needs_cuda
@pytest.mark.parametrize("form", ["sgd", "scaled-channel", "forget-elementwise"])
def test_triton_cuda_gradcheck(form):
    pytest.importorskip("triton")
    _suite.check_gradcheck("triton", form, device="cuda")


@needs_cuda
def test_triton_cuda_transforms():
    pytest.importorskip("triton")
    _suite.check_transforms("triton", device="cuda")
