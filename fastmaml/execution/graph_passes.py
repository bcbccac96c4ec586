"""Inductor graph passes of the compiled meta-step (fastmaml/execution/compiled.py and aoti.py): two
rewrites of the post-grad graph that leave every value the same and change the memory order in which
Inductor's C++ kernels read the task-batched matrices. Measured in bench/README.md ("Compiled
meta-steps"): the sine step's graph 1.2-1.4x faster at 200-1,000 tasks.

NOTE: [transposed products] A Linear layer's per-task gradients and Hessian-vector terms are batched
products, and the next steps read many of them transposed (W - a g, where g came out as g^T, and sums
of terms that came out in both orders). Inductor fuses those readers into elementwise kernels that
read the product across its rows, tile by tile (0.5-0.9 ms each on [200, 40, 40] in the sine step at
200 tasks). As (b)mm(a, b)^T = (b)mm(b^T, a^T) and the library's GEMM takes transposed operands at
no cost, a product that more readers transpose than read as it is gets written transposed; the other
readers get a transposed view (another product takes either order, so it does not count).

NOTE: [reduce before permute] The meta-gradient of a parameter shared by all tasks sums a per-task
gradient over the task dimension, often of a permute:

    sum(permute(x, [0, 2, 1]), [0], keepdim)

Inductor writes that reduction in the output's order, with the summed dimension innermost and a
stride of a whole matrix between its elements: a scalar loop that misses the cache at every element
(2.4 ms of a ~15 ms sine step at 1,000 tasks). Summing first, in x's own order, and permuting the
small result adds the same numbers in the same order, as a vectorised outer reduction:

    sum(permute(x, perm), dims, keepdim) == permute(sum(x, [perm[d] for d in dims], keepdim), perm')
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import fx
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

aten = torch.ops.aten


def _reduced_permutation(perm: list[int], dims: list[int], keepdim: bool) -> list[int]:
    """The permutation that takes x summed over perm[dims] to permute(x, perm) summed over dims."""
    if keepdim:
        return list(perm)
    kept = [p for i, p in enumerate(perm) if i not in dims]  # x's surviving dimensions, in output order
    position = {p: k for k, p in enumerate(sorted(kept))}  # x's dimension -> its place after the sum
    return [position[p] for p in kept]


def _transposed(node: fx.Node) -> bool:
    """Whether `node` swaps the last two dimensions of a 2-D or 3-D tensor (a matrix's or a batch's)."""
    if node.op != "call_function" or node.target is not aten.permute.default:
        return False
    perm = list(cast(list[int], node.args[1]))
    return perm in ([1, 0], [0, 2, 1])


def _has_value(node: object) -> bool:
    """Whether `node` is a graph node with a (fake) value to derive the new nodes' values from; a
    node without one is left as it is rather than guessed at."""
    return isinstance(node, fx.Node) and "val" in node.meta


def _meta(node: fx.Node) -> None:
    """node.meta["val"]: its op run on its inputs' fake values (what Inductor's lowering reads)."""
    args = [a.meta["val"] if isinstance(a, fx.Node) else a for a in node.args]
    node.meta["val"] = cast(Any, node.target)(*args)


def transpose_into_products(graph: fx.Graph) -> None:
    """NOTE: [transposed products]: each (b)mm that more elementwise readers transpose than not is
    written transposed, those readers take it as it is and the others a transposed view."""
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in (aten.mm.default, aten.bmm.default):
            continue
        readers = list(node.users)
        transposing = [r for r in readers if _transposed(r)]
        plain = [r for r in readers if r not in transposing and r.target not in (aten.mm.default, aten.bmm.default)]
        if len(transposing) <= len(plain):
            continue
        a, b = cast(fx.Node, node.args[0]), cast(fx.Node, node.args[1])
        if not (_has_value(a) and _has_value(b)):
            continue
        swap = [1, 0] if node.target is aten.mm.default else [0, 2, 1]
        with graph.inserting_before(node):
            bt = graph.call_function(aten.permute.default, (b, swap))
            at = graph.call_function(aten.permute.default, (a, swap))
            product = graph.call_function(node.target, (bt, at))
            back = graph.call_function(aten.permute.default, (product, swap))
            for new in (bt, at, product, back):
                _meta(new)
        for reader in transposing:
            reader.replace_all_uses_with(product)
            graph.erase_node(reader)
        node.replace_all_uses_with(back)
        graph.erase_node(node)
        if not back.users:
            graph.erase_node(back)


def reduce_before_permute(graph: fx.Graph) -> None:
    """NOTE: [reduce before permute]."""
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not aten.sum.dim_IntList or node.kwargs.get("dtype"):
            continue
        src = node.args[0]
        if not (isinstance(src, fx.Node) and src.op == "call_function" and src.target is aten.permute.default):
            continue
        x, perm = cast(fx.Node, src.args[0]), cast(list[int], src.args[1])
        if not _has_value(x):
            continue
        dims = sorted({d % len(perm) for d in cast(list[int], node.args[1]) or []})
        if not dims:  # an empty list sums everything: no order to fix
            continue
        keepdim = bool(node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False))
        after = _reduced_permutation(list(perm), dims, keepdim)
        with graph.inserting_before(node):
            out = summed = graph.call_function(aten.sum.dim_IntList, (x, sorted(perm[d] for d in dims), keepdim))
            _meta(summed)
            if after != sorted(after):
                out = graph.call_function(aten.permute.default, (summed, after))
                _meta(out)
        node.replace_all_uses_with(out)
        graph.erase_node(node)
        if not src.users:
            graph.erase_node(src)


class LayoutPass(CustomGraphPass):
    """Inductor's post_grad_custom_post_pass for the compiled step: NOTE: [transposed products],
    then NOTE: [reduce before permute]."""

    def __call__(self, graph: fx.Graph) -> None:
        transpose_into_products(graph)
        reduce_before_permute(graph)

    def uuid(self) -> Any:
        """Inductor's caches key the pass by this file's contents."""
        return get_hash_for_files((__file__,))

    def __repr__(self) -> str:  # part of the AOTI disk key (execution/aoti.py): stable across processes
        return f"LayoutPass({self.uuid().hex()[:16]})"
