"""Run as `TRITON_INTERPRET=1 python tests/hvp/_cg_triton_suite.py` (tests/hvp/test_cg.py does):
the Triton CG kernels against reference on CPU tensors under the interpreter."""

import os
import sys
import types

assert os.environ.get("TRITON_INTERPRET") == "1", "set TRITON_INTERPRET=1 before importing triton"
# This repository's tests/ (a namespace package) as `tests`, whatever else is installed by that name.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
_tests = types.ModuleType("tests")
_tests.__path__ = [os.path.join(ROOT, "tests")]
sys.modules["tests"] = _tests

import torch

from fastmaml.ops.cg import triton as cg_triton
from tests.hvp import _cg_cases as cases


def main() -> int:
    torch.set_num_threads(1)
    assert cg_triton.is_available(torch.device("cpu")), cg_triton.import_error
    for dtype, atol, rtol in cases.DTYPES:
        cases.check_ops_match_reference("triton", dtype, atol, rtol, shapes=cases.SMALL_SHAPES)
    print("triton CG ops match reference")
    return 0


if __name__ == "__main__":
    sys.exit(main())
