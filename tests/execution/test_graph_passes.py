"""The compiled step's Inductor graph pass (fastmaml/execution/graph_passes.py). NOTE: [reduce before
permute]: every sum of a permute becomes a sum then a permute with the same values, for every
permutation, reduced dimensions (negative ones too) and keepdim; a permute something else reads
stays. NOTE: [transposed products]: a product that more elementwise readers transpose than not is
written transposed, with the same values for every reader. The pass is keyed stably for Inductor's
and AOTI's caches. (Integer-valued inputs: sums and products exact in any order.)"""

import itertools

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from fastmaml.execution.graph_passes import (
    LayoutPass,
    reduce_before_permute,
    transpose_into_products,
)

aten = torch.ops.aten


def sums_of_permutes(graph) -> int:
    return sum(1 for n in graph.nodes if n.target is aten.sum.dim_IntList and n.args[0].target is aten.permute.default)


def transposed_products(graph) -> int:
    return sum(1 for n in graph.nodes if n.target is aten.permute.default
               and n.args[0].target in (aten.mm.default, aten.bmm.default))


def rewritten(fn, *xs, rewrite=reduce_before_permute, count=sums_of_permutes):
    gm = make_fx(fn, tracing_mode="fake")(*xs)
    before = count(gm.graph)
    rewrite(gm.graph)
    gm.graph.lint()
    gm.recompile()
    return gm, before


CASES = [(perm, dims, keepdim)
         for rank in (3, 4)
         for perm in itertools.permutations(range(rank))
         for dims in ([0], [rank - 1], [1, -1], [0, 2])
         for keepdim in (False, True)]


@pytest.mark.parametrize("perm,dims,keepdim", CASES)
def test_same_values_with_the_sum_first(perm, dims, keepdim):
    x = torch.randint(-8, 9, (2, 3, 4, 5)[:len(perm)], dtype=torch.float64)  # integers: sums exact in any order
    fn = lambda t: torch.sum(t.permute(perm), dims, keepdim=keepdim)  # noqa: E731
    gm, before = rewritten(fn, x)
    assert before == 1 and sums_of_permutes(gm.graph) == 0
    if len(gm.graph.find_nodes(op="call_function", target=aten.permute.default)) == 1:
        # the remaining permute is the small one, after the sum
        permute = gm.graph.find_nodes(op="call_function", target=aten.permute.default)[0]
        assert permute.args[0].target is aten.sum.dim_IntList
    got, want = gm(x), fn(x)
    assert got.shape == want.shape and torch.equal(got, want)


def test_a_permute_read_elsewhere_stays():
    x = torch.randn(4, 3, 5, dtype=torch.float64)

    def fn(t):
        p = t.permute(0, 2, 1)
        return p.sum(0, keepdim=True) * 2, p * 3

    gm, before = rewritten(fn, x)
    assert before == 1 and sums_of_permutes(gm.graph) == 0
    for got, want in zip(gm(x), fn(x)):
        assert torch.allclose(got, want, rtol=1e-15, atol=0)


def test_other_sums_are_left_alone():
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    fn = lambda t: (t.permute(0, 2, 1).sum(0, dtype=torch.float32), (t * 2).sum(0))  # noqa: E731
    gm = make_fx(fn, tracing_mode="fake")(x)
    code = gm.code
    LayoutPass()(gm.graph)
    gm.recompile()
    assert gm.code == code


def ints(*shape):
    return torch.randint(-4, 5, shape, dtype=torch.float64)


@pytest.mark.parametrize("batched", [False, True])
def test_a_product_read_transposed_is_written_transposed(batched):
    a, b = (ints(3, 4, 5), ints(3, 5, 6)) if batched else (ints(4, 5), ints(5, 6))
    mt = (lambda t: t.permute(0, 2, 1)) if batched else (lambda t: t.permute(1, 0))  # noqa: E731  what the post-grad graph holds
    product = torch.bmm if batched else torch.mm

    def fn(a, b):  # two readers transpose the product, one reads it as it is, one multiplies it again
        p = product(a, b)
        return mt(p) * 2, mt(p) + 1, p * 3, product(p, mt(b))

    gm, before = rewritten(fn, a, b, rewrite=transpose_into_products, count=transposed_products)
    assert before == 2 and transposed_products(gm.graph) == 1  # only the plain reader transposes it back
    for got, want in zip(gm(a, b), fn(a, b)):
        assert torch.equal(got, want)


def test_a_product_read_as_it_is_stays():
    a, b = ints(3, 4, 5), ints(3, 5, 6)

    def fn(a, b):  # one reader of each kind
        p = torch.bmm(a, b)
        return p.permute(0, 2, 1) * 2, p * 3

    gm = make_fx(fn, tracing_mode="fake")(a, b)
    code = gm.code
    transpose_into_products(gm.graph)
    gm.recompile()
    assert gm.code == code


def test_the_whole_pass_on_a_sum_of_transposed_products():
    # the meta-gradient's pattern: a per-task product, transposed, summed over tasks and scaled per task
    a, b = ints(3, 4, 5), ints(3, 4, 6)

    def fn(a, b):
        p = torch.bmm(a.permute(0, 2, 1), b).permute(0, 2, 1)
        return p.sum(0), p * -0.5

    gm, _ = rewritten(fn, a, b, rewrite=LayoutPass(), count=transposed_products)
    assert transposed_products(gm.graph) == 0 and sums_of_permutes(gm.graph) == 0
    for got, want in zip(gm(a, b), fn(a, b)):
        assert torch.equal(got, want)


def test_nodes_without_values_are_left_alone():
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    fn = lambda t: (torch.bmm(t, t.permute(0, 2, 1)).permute(0, 2, 1) * 2, t.permute(0, 2, 1).sum(0))  # noqa: E731
    gm = make_fx(fn, tracing_mode="fake")(x)
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            del node.meta["val"]
    code = gm.code
    LayoutPass()(gm.graph)
    gm.recompile()
    assert gm.code == code


def test_keyed_stably():
    a, b = LayoutPass(), LayoutPass()
    assert a.uuid() == b.uuid() and repr(a) == repr(b) and "0x" not in repr(a)
