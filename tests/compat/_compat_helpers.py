"""Shared pieces of the compat tests: two tiny float64 models (an MLP; a CNN with BatchNorm), a
task for each, an independent unrolled plain-autograd inner loop (torch.func.functional_call,
p - lr * g written out), the real peers (skipping when absent), and a 1e-10 relative check."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as Fn
from torch import nn
from torch.func import functional_call

DT = torch.float64
RTOL = 1e-10
MODELS = ("mlp", "cnn")


def mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(2, 12), nn.Tanh(), nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 1)).to(DT)


def cnn() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 3)).to(DT)


def make(kind: str):
    """(model, (x_support, y_support, x_query, y_query), loss_fn) for "mlp" or "cnn"."""
    g = torch.Generator().manual_seed(3)
    if kind == "mlp":
        r = lambda *s: torch.randn(*s, generator=g, dtype=DT)
        return mlp(), (r(6, 2), r(6, 1), r(7, 2), r(7, 1)), Fn.mse_loss
    x = lambda n: torch.randn(n, 1, 6, 6, generator=g, dtype=DT)
    y = lambda n: torch.randint(0, 3, (n,), generator=g)
    return cnn(), (x(6), y(6), x(6), y(6)), Fn.cross_entropy


def sgd_step(lr):
    def step(params, grads, state):
        return [p - lr * g for p, g in zip(params, grads)]
    return step


def unrolled(model: nn.Module, params: list, task, loss_fn, steps: int, first_order: bool,
             step: Callable, buffers: dict | None = None):
    """The inner loop written out: `steps` times grads = d support_loss / d params (create_graph
    unless first_order), params = step(params, grads, state); returns (query loss, params).
    Buffers: the model's own, updated in place (or `buffers`)."""
    xs, ys, xq, yq = task
    names = [n for n, _ in model.named_parameters()]
    extra = {} if buffers is None else buffers

    def forward(ps, x):
        return functional_call(model, {**dict(zip(names, ps)), **extra}, (x,))

    state: dict = {}
    for _ in range(steps):
        loss = loss_fn(forward(params, xs), ys)
        grads = torch.autograd.grad(loss, params, create_graph=not first_order)
        params = step(params, list(grads), state)
    return loss_fn(forward(params, xq), yq), params


def reference_meta_grads(kind: str, steps: int, first_order: bool, step: Callable | None = None, lr=0.1):
    """d query_loss / d theta of the unrolled loop on a fresh model of `kind`, and that model
    (its buffers after the loop)."""
    model, task, loss_fn = make(kind)
    theta = list(model.parameters())
    qloss, _ = unrolled(model, theta, task, loss_fn, steps, first_order, step or sgd_step(lr))
    return list(torch.autograd.grad(qloss, theta)), model


def assert_rel(actual, expected, what: str = "", rtol: float = RTOL) -> None:
    """Each actual[i] equals expected[i] to rtol relative to max |expected[i]|, or to the largest
    entry of all the tensors where expected[i] is round-off (a conv bias before BatchNorm has an
    exactly-zero gradient); on failure says which tensor, how many elements, where the worst is,
    and whether any is NaN/inf."""
    actual, expected = list(actual), list(expected)
    assert len(actual) == len(expected), f"{what}: {len(actual)} tensors, expected {len(expected)}"
    overall = max((e.abs().max().item() for e in expected if e is not None and e.numel()), default=1.0)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a is not None, f"{what}[{i}]: got None, expected a tensor of shape {list(e.shape)}"
        assert a.shape == e.shape, f"{what}[{i}]: shape {list(a.shape)}, expected {list(e.shape)}"
        scale = max(e.abs().max().item(), 1e-4 * overall, 1e-300) if e.numel() else 1.0
        err = (a - e).abs()
        bad = err > rtol * scale
        if bad.any() or not torch.isfinite(a).all():
            worst = int(err.flatten().argmax())
            raise AssertionError(
                f"{what}[{i}]: {int(bad.sum())} of {e.numel()} elements differ by more than {rtol:g} x {scale:.3g}; "
                f"worst at flat index {worst}: {a.flatten()[worst].item()!r} vs {e.flatten()[worst].item()!r}; "
                f"non-finite in actual: {int((~torch.isfinite(a)).sum())}")


def peer(name: str):
    """The real peer library, or skip the test (CI installs only .[dev,triton])."""
    from bench.peers import real as _peers

    try:
        return getattr(_peers, name)()
    except ImportError as e:
        pytest.skip(f"{name} is not installed ({e}); bench/install_peers.sh installs it")


def twin(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


def buffers(model: nn.Module) -> list:
    return [b.clone() for b in model.buffers()]


def learn2learn_parts():
    """learn2learn 0.2.0's algorithms (MAML, MetaSGD, GBML), utils, nn, optim and data, loaded
    without its top-level imports of gym, torchvision, requests, ... (not installed with the
    core): a shell `learn2learn` package gets the parts as attributes, as their own
    `import learn2learn as l2l` expects. Skips the test when learn2learn is not installed."""
    import importlib
    import importlib.util
    import sys
    import types

    for name in [m for m in sys.modules if m == "learn2learn" or m.startswith("learn2learn.")]:
        del sys.modules[name]  # another loader's shell (bench/peers/real.py) has no __spec__
    spec = importlib.util.find_spec("learn2learn")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("learn2learn is not installed; bench/install_peers.sh installs it")
    root = spec.submodule_search_locations[0]
    shell = types.ModuleType("learn2learn")
    shell.__path__ = [root]
    sys.modules["learn2learn"] = shell
    algorithms = types.ModuleType("learn2learn.algorithms")
    algorithms.__path__ = [f"{root}/algorithms"]
    sys.modules["learn2learn.algorithms"] = shell.algorithms = algorithms
    utils = importlib.import_module("learn2learn.utils")
    shell.utils, shell.clone_module, shell.update_module = utils, utils.clone_module, utils.update_module
    shell.nn = importlib.import_module("learn2learn.nn")
    shell.optim = importlib.import_module("learn2learn.optim")
    had_requests = "requests" in sys.modules
    sys.modules.setdefault("requests", types.ModuleType("requests"))  # data.utils imports it for downloads
    try:
        shell.data = importlib.import_module("learn2learn.data")
    finally:
        if not had_requests:
            del sys.modules["requests"]
    for name, cls in (("maml", "MAML"), ("meta_sgd", "MetaSGD"), ("gbml", "GBML")):
        module = importlib.import_module(f"learn2learn.algorithms.{name}")
        setattr(algorithms, name, module)
        setattr(algorithms, cls, getattr(module, cls))
    # compiled (Cython) modules are initialised once per process: one first imported by an earlier,
    # failed full import still holds that package as its `l2l`
    for name, module in list(sys.modules.items()):
        if name.startswith("learn2learn.") and hasattr(module, "l2l"):
            module.l2l = shell
    return shell
