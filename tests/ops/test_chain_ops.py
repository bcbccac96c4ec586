"""The chain op family (fastmaml.ops.chain): the native C++ ops against their plain-autograd
reference twin, values and first and second derivatives in float64 (on the CPU, and on a GPU: the
`cuda` test, run by the device run of bench/gpu), and the ops' input checks."""

import pytest
import torch

import fastmaml
from fastmaml.ops import chain as chain_ops, native

pytestmark = pytest.mark.skipif(native.import_error is not None, reason=f"fastmaml._C not built: {native.import_error}")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

# per layer (out_features, flags): flags = 1 if it has a bias, + 2 if a ReLU follows
CHAINS = {"relu-bias": [(5, 3), (4, 3), (2, 1)], "no-bias": [(3, 2), (2, 0)], "one-layer": [(2, 1)]}


def chain_inputs(layers, T=3, N=4, features=3, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device)
    x = r(T, N, features)
    weights, biases, flags, inp = [], [], [], features
    for out, f in layers:
        weights.append(r(T, out, inp).requires_grad_())
        biases.append(r(T, out).requires_grad_() if f & 1 else None)
        flags.append(f)
        inp = out
    return x, r(T, N, inp), weights, biases, flags


def params_of(weights, biases):
    return [t for w, b in zip(weights, biases) for t in ((w, b) if b is not None else (w,))]


def run(backend, fn, *args):
    with fastmaml.use_backend(backend):
        assert chain_ops.resolve_backend(args[0].device) == backend
        return fn(*args)


@pytest.mark.parametrize("name", CHAINS)
def test_native_matches_reference_with_two_derivatives(name):
    check_native_matches_reference(name, "cpu")


@needs_cuda
@pytest.mark.parametrize("name", CHAINS)
def test_native_matches_reference_with_two_derivatives_cuda(name):
    check_native_matches_reference(name, "cuda")


def check_native_matches_reference(name, device):
    x, y, weights, biases, flags = chain_inputs(CHAINS[name], device=device)
    params = params_of(weights, biases)
    g = torch.Generator().manual_seed(1)
    results = {}
    for backend in ("reference", "native"):
        losses, grads = run(backend, chain_ops.loss_and_grad, x, y, weights, biases, flags)
        query = run(backend, chain_ops.loss, x, y, weights, biases, flags)
        # a random cotangent on (losses, grads): its VJP is the Hessian-vector product + v g
        v = torch.randn(losses.shape, generator=g, dtype=torch.float64).to(device)
        us = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(device) for t in grads]
        g.manual_seed(1)
        scalar = (losses * v).sum() + sum((a * u).sum() for a, u in zip(grads, us)) + query.sum()
        second = torch.autograd.grad(scalar, params)
        results[backend] = [losses, *grads, query, *second]
    for a, b in zip(results["native"], results["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_first_order_gives_constants():
    x, y, weights, biases, flags = chain_inputs(CHAINS["relu-bias"])
    with torch.no_grad():
        for backend in ("reference", "native"):
            losses, grads = run(backend, chain_ops.loss_and_grad, x, y, weights, biases, flags)
            assert not losses.requires_grad and not any(t.requires_grad for t in grads)


@pytest.mark.parametrize("bad, match", [
    (lambda x, y, w, b, f: (x[:0], y[:0], [t[:0] for t in w], [t[:0] if t is not None else None for t in b], f),
     "at least one task and one example"),
    (lambda x, y, w, b, f: (x[:, :0], y[:, :0], w, b, f), "at least one task and one example"),
    (lambda x, y, w, b, f: (x, y, w, b, [-1, *f[1:]]), r"layers\[0\] must be 0..3"),
    (lambda x, y, w, b, f: (x, y, w, b, [*f[:-1], 98]), r"layers\[2\] must be 0..3"),
    (lambda x, y, w, b, f: (x.long(), y, w, b, f), "x must be floating point"),
    (lambda x, y, w, b, f: (x, y.float(), w, b, f), "y is Float"),
    (lambda x, y, w, b, f: (x, y, [w[0].float(), *w[1:]], b, f), r"weights\[0\] is Float"),
])
def test_bad_input_is_a_named_error_not_a_crash(bad, match):
    """Zero tasks used to kill Python (SIGFPE); bad layer flags and integer inputs ran (issue #20)."""
    args = bad(*chain_inputs(CHAINS["relu-bias"]))
    for op in (torch.ops.fastmaml.chain_loss_and_grad, torch.ops.fastmaml.chain_loss):
        with pytest.raises(RuntimeError, match=match):
            op(*args)
