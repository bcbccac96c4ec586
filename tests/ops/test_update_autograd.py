"""The C++ autograd node of fastmaml::fused_update (NOTE: [update autograd] in csrc/autograd.cpp):
gradients and double backward in float64 with lists mixing the plain and dot-product reductions,
unused outputs, saved-tensor checks, forward AD refused, and MAML meta-gradients equal across
backends, per task and task-batched (vmap)."""

import pytest
import torch
from torch.autograd import forward_ad
from torch.func import grad, jacfwd, jacrev, vmap

import fastmaml
from fastmaml import ops
from fastmaml.ops import native, reference
from tests.models import regression_tasks, tiny_mlp
from tests.ops._compare import assert_all_close

CPU = torch.device("cpu")
pytestmark = pytest.mark.skipif(not native.is_available(CPU), reason=f"fastmaml._C not usable: {native.import_error}")

SHAPES = [(3,), (4, 2, 2), (2, 3), (5,)]


def _mixed_case(dtype=torch.float64, seed=0, scalars_only=False):
    """One list whose a and gamma broadcast differently per tensor: the kernel's params-shaped
    gradients summed to their shapes. With `scalars_only`, every a and gamma is a scalar (of
    various dims): the node's dot products instead."""
    gen = torch.Generator().manual_seed(seed)

    def rand(shape, positive=False):
        x = torch.rand(shape, generator=gen, dtype=torch.float64) + 0.5 if positive else torch.randn(shape, generator=gen, dtype=torch.float64)
        return x.to(dtype)

    params = [rand(s) for s in SHAPES]
    grads = [rand(s) for s in SHAPES]
    if scalars_only:
        lrs = [rand((), True), rand((1, 1, 1), True), rand((1, 1), True), rand((1,), True)]
        gammas = [rand((1,), True), rand((), True), rand((1,), True), rand((), True)]
    else:
        lrs = [rand((), True), rand((4, 2, 2), True), rand((2, 1), True), rand((1,), True)]
        gammas = [rand((3,), True), rand((1, 1, 1), True), rand((), True), rand((5,), True)]
    return params, grads, lrs, gammas


def _leaves(*lists):
    return [[t.detach().clone().requires_grad_() for t in lst] for lst in lists]


def test_the_node_is_the_compiled_one():
    params, grads, lrs, gammas = _leaves(*_mixed_case())
    out = native.update(params, grads, lrs, gammas, 0.3)
    assert all(o.grad_fn.name() == "FusedUpdateBackward" for o in out)
    assert len(out[0].grad_fn.next_functions) == 4 * len(SHAPES)


@pytest.mark.parametrize("scalars_only", [False, True], ids=["summed", "dot"])
@pytest.mark.parametrize("with_lrs,with_gammas", [(True, True), (True, False), (False, True)])
def test_gradcheck_mixed_reductions(with_lrs, with_gammas, scalars_only):
    params, grads, lrs, gammas = _leaves(*_mixed_case(scalars_only=scalars_only))
    lrs = lrs if with_lrs else None
    gammas = gammas if with_gammas else None
    n = len(params)
    flat = params + grads + (lrs or []) + (gammas or [])

    def fn(*flat):
        rest = list(flat[2 * n :])
        a = rest[:n] if with_lrs else None
        gam = rest[-n:] if with_gammas else None
        return tuple(native.update(list(flat[:n]), list(flat[n : 2 * n]), a, gam, 0.3))

    assert torch.autograd.gradcheck(fn, flat)
    assert torch.autograd.gradgradcheck(fn, flat)


@pytest.mark.parametrize("scalars_only", [False, True], ids=["summed", "dot"])
@pytest.mark.parametrize("create_graph", [False, True])
def test_unused_outputs_and_partial_requires_grad(create_graph, scalars_only):
    """Only some outputs reach the loss (the others' gradients are undefined), and only a and gamma
    need gradients: the same as reference, first and second order."""
    base = _mixed_case(seed=1, scalars_only=scalars_only)
    results = []
    for backend in (reference, native):
        params, grads = [[t.clone() for t in lst] for lst in base[:2]]
        lrs, gammas = _leaves(*base[2:])
        out = backend.update(params, grads, lrs, gammas, 0.3)
        loss = (out[1] ** 2).sum() + out[3].sin().sum()
        leaves = lrs + gammas
        first = torch.autograd.grad(loss, leaves, create_graph=create_graph, allow_unused=True)
        first = [torch.zeros_like(t) if d is None else d for t, d in zip(leaves, first)]  # out[0], out[2] unused
        got = list(first)
        if create_graph:
            second = torch.autograd.grad(sum((d ** 2).sum() for d in first), leaves, allow_unused=True)
            got += [torch.zeros_like(t) if d is None else d for t, d in zip(leaves, second)]
        results.append(got)
    assert_all_close(results[1], results[0], atol=1e-12, rtol=1e-12, what=f"create_graph={create_graph}")


def test_nested_transforms_match_reference():
    """Transforms nested deeper than tests/ops/_suite.py's check_transforms: each grad level records
    its own node, the vmap rule runs at each vmap level (the Python single-level Function that the
    Triton family keeps gets the nested grads wrong), and torch.compile traces the node."""
    dt = {"dtype": torch.float64}
    gen = torch.Generator().manual_seed(4)
    p, g = torch.randn(4, 3, generator=gen, **dt), torch.randn(4, 3, generator=gen, **dt)
    a, gam = torch.rand(4, 1, generator=gen, **dt) + 0.5, torch.rand((), generator=gen, **dt) + 0.5
    pb, gb = torch.randn(2, 5, 4, 3, generator=gen, **dt), torch.randn(2, 5, 4, 3, generator=gen, **dt)

    def loss(be):
        return lambda p, g, a, gam: (be.update([p], [g], [a], [gam], 0.1)[0].sin() * g).sum()

    def compiled(be):
        leaves = [t.clone().requires_grad_() for t in (p, g, a, gam)]
        torch.compile(loss(be), fullgraph=True, backend="aot_eager")(*leaves).backward()
        return tuple(t.grad for t in leaves)

    every = (0, 1, 2, 3)
    cases = {
        "grad(grad)": lambda be: grad(lambda p: grad(loss(be), 0)(p, g, a, gam).sum())(p),
        "grad(grad) through g": lambda be: grad(lambda a: grad(loss(be), 1)(p, g, a, gam).pow(2).sum())(a),
        "jacrev(jacrev)": lambda be: jacrev(jacrev(loss(be), 2), 2)(p, g, a, gam),
        "vmap(jacrev)": lambda be: vmap(jacrev(loss(be), every), in_dims=(0, 0, None, None))(pb[0], gb[0], a, gam),
        "vmap(vmap)": lambda be: vmap(vmap(lambda p, g: be.update([p], [g], [a], [gam], 0.1)[0]))(pb, gb),
        "vmap(grad(grad))": lambda be: vmap(grad(lambda p, g: grad(loss(be), 0)(p, g, a, gam).sum()))(pb[0], gb[0]),
        "torch.compile": compiled,
    }
    for what, fn in cases.items():
        got, expected = fn(native), fn(reference)
        got, expected = [got] if isinstance(got, torch.Tensor) else got, [expected] if isinstance(expected, torch.Tensor) else expected
        assert_all_close(got, expected, atol=1e-12, rtol=1e-10, what=what)
    with pytest.raises(RuntimeError, match="forward-mode AD"):
        jacfwd(loss(native), 0)(p, g, a, gam)


def test_saved_tensors_are_checked_and_released():
    """g is saved for d a: changing it in place is caught; a second backward without retain_graph
    finds the saved tensors released."""
    params, grads, lrs, gammas = _mixed_case()
    lrs = _leaves(lrs)[0]
    out = native.update(params, grads, lrs, gammas, 0.3)
    grads[1].add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(out[1].sum(), lrs[1])
    out = native.update(params, grads, lrs, gammas, 0.3)
    torch.autograd.grad(out[1].sum(), lrs[1])
    with pytest.raises(RuntimeError, match="second time"):
        torch.autograd.grad(out[1].sum(), lrs[1])


def test_forward_ad_is_refused():
    params, grads, _, _ = _mixed_case()
    with forward_ad.dual_level():
        dual = forward_ad.make_dual(params[0], torch.ones_like(params[0]))
        with pytest.raises(RuntimeError, match="forward-mode AD"):
            native.update([dual] + params[1:], grads, None, None, 0.3)


@pytest.mark.parametrize("batching", ["loop", "vmap"])
@pytest.mark.parametrize("algo", ["maml", "metasgd-layer", "alfa"])
def test_meta_gradient_is_the_same_on_every_backend(algo, batching):
    """Second-order meta-gradients of MAML, Meta-SGD (per-layer rates: dot-product d a) and ALFA
    (per-layer forget factors from a network: d gamma) on each backend, against reference: per
    task, and task-batched (the vmap rule hands the node [T, ...] tensors with a shared a)."""
    batch = regression_tasks()
    results = {}
    for backend in ("reference", "foreach", "native"):
        model = tiny_mlp()
        if algo == "maml":
            learner = fastmaml.MAML(model, inner_lr=0.3, inner_steps=2, batching=batching)
        elif algo == "metasgd-layer":
            learner = fastmaml.MetaSGD(model, inner_lr=0.3, inner_steps=2, batching=batching, per="layer")
        else:
            learner = fastmaml.ALFA(model, inner_lr=0.3, inner_steps=2, batching=batching)
        with fastmaml.use_backend(backend):
            loss = learner.meta_loss(*batch, torch.nn.functional.mse_loss)
            results[backend] = [loss, *torch.autograd.grad(loss, list(learner.parameters()))]
        assert learner.batching_used == batching
    for backend in ("foreach", "native"):
        assert_all_close(results[backend], results["reference"], atol=1e-12, rtol=1e-10, what=f"{algo} {batching} {backend}")


def test_auto_runs_every_cpu_update_on_native():
    """`auto` picks native for differentiable updates of every form and size (with its C++ autograd
    node it ties with foreach on MAML's sgd-form meta-steps and wins on the others)."""

    def node(numel, lr, gammas=None):
        p = [torch.randn(numel, requires_grad=True)]
        out = ops.update(p, [torch.randn(numel)], lr, gammas)[0]
        return out.grad_fn.name()

    with ops.use_backend("auto"):
        assert node(7, 0.1) == "FusedUpdateBackward"
        assert node(7, [torch.rand(7)]) == "FusedUpdateBackward"
        assert node(7, 0.1, [torch.rand(())]) == "FusedUpdateBackward"
        assert node(1 << 20, 0.1) == "FusedUpdateBackward"
