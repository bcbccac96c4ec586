"""The compiled CPU kernel's loop variants (NOTE: [cpu loop variants] in csrc/cpu/update.cpp), each
against `reference`: every operand as a contiguous stretch, one value, or a periodic operand (the
layouts the vmap rule passes); the 16-bit block conversion across block edges; the parallel split;
every output mask of the fused backward; the autograd node when only some inputs need gradients;
and the dispatcher's validation fast path (NOTE: [validation fast path])."""

import itertools

import pytest
import torch

from fastmaml import ops
from fastmaml.ops import native, reference
from tests.ops._cases import DTYPES
from tests.ops._compare import assert_all_close

CPU = torch.device("cpu")
pytestmark = pytest.mark.skipif(not native.is_available(CPU), reason=f"fastmaml._C not usable: {native.import_error}")
dtypes = pytest.mark.parametrize("dtype,atol,rtol", DTYPES, ids=[str(d[0]).split(".")[1] for d in DTYPES])


def _rand(shape, dtype, gen, positive=False):
    x = torch.rand(shape, generator=gen, dtype=torch.float64) + 0.5 if positive else torch.randn(shape, generator=gen, dtype=torch.float64)
    return x.to(dtype)


# How an operand of a [T, C, K] tensor is laid out: "full" elementwise, "value" one scalar (shape []
# or a stride-0 expansion of one), "periodic" shared by the T tasks ([C, K], or expanded from it),
# "channel" [C, 1] (materialised to a period of C * K).
LAYOUTS = ("full", "value", "periodic", "channel")
SHAPE = (3, 5, 700)  # T, C, K: 10500 elements, so the 16-bit blocks (1024) and periods (3500) cross


def _operand(layout, dtype, gen, positive, expand):
    t, c, k = SHAPE
    if layout == "full":
        return _rand(SHAPE, dtype, gen, positive)
    if layout == "value":
        x = _rand((), dtype, gen, positive)
        return x.expand(SHAPE) if expand else x
    if layout == "periodic":
        x = _rand((c, k), dtype, gen, positive)
        return x.expand(SHAPE) if expand else x
    return _rand((c, 1), dtype, gen, positive)


@dtypes
@pytest.mark.parametrize("p_layout,g_layout", [("full", "full"), ("periodic", "full"), ("full", "value"), ("value", "periodic")])
def test_forward_variants(p_layout, g_layout, dtype, atol, rtol):
    """p and g as stretches or values (expanded params, as vmap passes unbatched ones), with a and
    gamma absent or in every layout: out of place and in place."""
    gen = torch.Generator().manual_seed(0)
    p = _operand(p_layout, dtype, gen, False, expand=True)
    g = _operand(g_layout, dtype, gen, False, expand=True)
    for a_layout, gam_layout in itertools.product((None,) + LAYOUTS, repeat=2):
        lrs = None if a_layout is None else [_operand(a_layout, dtype, gen, True, expand=False)]
        gammas = None if gam_layout is None else [_operand(gam_layout, dtype, gen, True, expand=False)]
        expected = reference.update([p], [g], lrs, gammas, 0.37)
        what = f"p={p_layout} g={g_layout} a={a_layout} gamma={gam_layout} {dtype}"
        assert_all_close(native.update([p], [g], lrs, gammas, 0.37), expected, atol=atol, rtol=rtol, what=what)
        target = p.contiguous().clone()
        native.update_([target], [g], lrs, gammas, 0.37)
        assert_all_close([target], expected, atol=atol, rtol=rtol, what=what + " in place")


@pytest.mark.parametrize("threads", [1, 2])
def test_parallel_split_over_many_tensors(threads):
    """A list longer than the parallel grain, split across threads inside tensors and across them."""
    gen = torch.Generator().manual_seed(1)
    shapes = [(70001,), (3,), (64, 33, 7), (1,), (0,), (129, 1000)]
    params = [_rand(s, torch.float32, gen) for s in shapes]
    grads = [_rand(s, torch.float32, gen) for s in shapes]
    lrs = [_rand(s[-1:] if s else (), torch.float32, gen, True) for s in shapes]
    gammas = [_rand((), torch.float32, gen, True) for _ in shapes]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        actual = native.update(params, grads, lrs, gammas, 0.1)
    finally:
        torch.set_num_threads(before)
    assert_all_close(actual, reference.update(params, grads, lrs, gammas, 0.1), atol=1e-6, rtol=1e-5, what=f"{threads} threads")


@dtypes
@pytest.mark.parametrize("a_layout,gam_layout", [("full", "channel"), ("periodic", "value"), ("value", "periodic")])
def test_fused_backward_every_mask(a_layout, gam_layout, dtype, atol, rtol):
    """fused_update_backward for each of the 16 output masks against the formulas of update.h."""
    gen = torch.Generator().manual_seed(2)
    p, g, go = (_rand(SHAPE, dtype, gen) for _ in range(3))
    a = _operand(a_layout, dtype, gen, True, expand=False)
    gam = _operand(gam_layout, dtype, gen, True, expand=False)
    alpha = 0.37
    full = [gam * go, (a * go) * -alpha, (g * go) * -alpha, p * go]  # d p, d g, d a, d gamma (p's shape)
    for mask in itertools.product((False, True), repeat=4):
        out = torch.ops.fastmaml.fused_update_backward([go], [p], [g], [a], [gam], alpha, list(mask))
        for k in range(4):
            assert len(out[k]) == (1 if mask[k] else 0), f"mask {mask}: output {k}"
            if mask[k]:
                assert_all_close(out[k], [full[k].expand(SHAPE)], atol=atol, rtol=rtol, what=f"mask {mask} output {k} {dtype}")


@pytest.mark.parametrize("wanted", ["params", "grads", "lrs", "gammas", "lrs+gammas"])
@pytest.mark.parametrize("create_graph", [False, True])
def test_backward_with_some_inputs_needing_grad(wanted, create_graph):
    """The autograd node saves only what the wanted gradients read: each subset against reference,
    first and second order."""
    gen = torch.Generator().manual_seed(3)
    shapes = [(4, 3), (5,), (2, 3, 2)]
    base = {
        "params": [_rand(s, torch.float64, gen) for s in shapes],
        "grads": [_rand(s, torch.float64, gen) for s in shapes],
        "lrs": [_rand(s[:1] + (1,) * (len(s) - 1), torch.float64, gen, True) for s in shapes],
        "gammas": [_rand((), torch.float64, gen, True) for _ in shapes],
    }
    results = []
    for backend in (reference, native):
        inputs = {k: [t.clone().requires_grad_(k in wanted.split("+")) for t in v] for k, v in base.items()}
        out = backend.update(inputs["params"], inputs["grads"], inputs["lrs"], inputs["gammas"], 0.3)
        leaves = [t for k in wanted.split("+") for t in inputs[k]]
        first = torch.autograd.grad([(o ** 2).sum() for o in out], leaves, create_graph=create_graph)
        got = list(first)
        if create_graph:
            got += torch.autograd.grad(sum((d ** 2).sum() for d in first), leaves, allow_unused=True)
        results.append([x if x is not None else torch.zeros_like(leaves[i % len(leaves)]) for i, x in enumerate(got)])
    assert_all_close(results[1], results[0], atol=1e-12, rtol=1e-12, what=f"{wanted} create_graph={create_graph}")


def test_fast_path_errors_name_the_argument():
    """With the native backend the dispatcher leaves the checks to C++, then re-checks in Python to
    raise the named message (tests/ops/test_update_errors.py covers each kind of error)."""
    params = [torch.randn(4, 3), torch.randn(5)]
    grads = [torch.randn(4, 3), torch.randn(6)]
    with ops.use_backend("native"):
        with pytest.raises(ValueError, match=r"grads\[1\] \('b'\) has shape \[6\] but params\[1\] \('b'\) has \[5\]"):
            ops.update(params, grads, 0.1, names=["a", "b"])
        with pytest.raises(ValueError, match=r"inner_update_: grads\[1\] is on meta"):
            ops.update_(params, [grads[0], torch.randn(5, device="meta")], 0.1)
        assert_all_close(ops.update(params, [grads[0], grads[1][:5]], 0.1),
                         reference.update(params, [grads[0], grads[1][:5]], None, None, 0.1), atol=1e-6, rtol=1e-5,
                         what="fast path")
