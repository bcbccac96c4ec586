"""pytest-benchmark micro-benchmarks of the inner update (`make bench-kernels`): every usable
backend on the Conv-4 Omniglot parameters (one task, and the task-batched [32, ...] set), Meta-SGD
form, out of place. The fuller study, with bandwidth and op counts: bench/bench_inner_update.py."""

import pytest
import torch

from bench.bench_inner_update import make_inputs
from fastmaml.ops import backend_module, is_available

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BACKENDS = [b for b in ("reference", "foreach", "native", "triton")
            if (b != "triton" or DEVICE.type == "cuda") and is_available(b, DEVICE)]


@pytest.mark.parametrize("set_name", ["conv4", "conv4x32"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_inner_update(benchmark, backend, set_name):
    params, grads, lrs, gammas = make_inputs(set_name, "scaled", DEVICE)
    update = backend_module(backend).update

    def run():
        update(params, grads, lrs, gammas, 0.01)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()

    benchmark.group = set_name
    benchmark(run)
