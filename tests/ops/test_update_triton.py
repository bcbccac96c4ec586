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

ROOT = Path(__file__).resolve().parents[2]


def test_triton_under_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    suite = Path(__file__).with_name("_triton_suite.py")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", str(suite)]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES, ids=[str(d[0]).split(".")[1] for d in DTYPES])
def test_triton_cuda_matches_reference(form, dtype, atol, rtol):
    pytest.importorskip("triton")
    _suite.check_matches_reference(["triton"], form, dtype, atol, rtol, device="cuda")
