"""Every face routes its parameter update through fastmaml.ops.update, once per inner step
whatever the number of parameters; with the native backend that is one dispatched op
(fastmaml::fused_update) per step."""

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import fastmaml.compat.higher as fh
import fastmaml.compat.learn2learn as fl2l
import fastmaml.compat.torchopt as fto
from fastmaml import ops
from fastmaml.ops import optim
from tests.compat._compat_helpers import DT

STEPS = 3


def deep_mlp(layers: int) -> nn.Module:
    torch.manual_seed(0)
    mods = [m for _ in range(layers) for m in (nn.Linear(4, 4), nn.Tanh())]
    return nn.Sequential(*mods, nn.Linear(4, 1)).to(DT)


def run_learn2learn(model, x, y, **kw):
    learner = fl2l.MAML(model, lr=0.1).clone()
    for _ in range(STEPS):
        learner.adapt(((learner(x) - y) ** 2).mean())


def run_metasgd(model, x, y, **kw):
    learner = fl2l.MetaSGD(model, lr=0.1).clone()
    for _ in range(STEPS):
        learner.adapt(((learner(x) - y) ** 2).mean())


def run_higher(model, x, y, momentum=0.0, groups=1):
    params = list(model.parameters())
    if groups == 2:
        opt = torch.optim.SGD([{"params": params[:2], "lr": 0.05}, {"params": params[2:]}], lr=0.1, momentum=momentum)
    else:
        opt = torch.optim.SGD(params, lr=0.1, momentum=momentum, weight_decay=0.01)
    with fh.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
        for _ in range(STEPS):
            diffopt.step(((fmodel(x) - y) ** 2).mean())


def run_torchopt(model, x, y, momentum=0.0, **kw):
    opt = fto.MetaSGD(model, lr=0.1, momentum=momentum)
    for _ in range(STEPS):
        opt.step(((model(x) - y) ** 2).mean())


FACES = {
    "learn2learn.MAML": (run_learn2learn, {}),
    "learn2learn.MetaSGD": (run_metasgd, {}),
    "higher": (run_higher, {}),
    "higher-momentum-wd": (run_higher, {"momentum": 0.9}),
    "higher-two-groups": (run_higher, {"groups": 2}),
    "torchopt": (run_torchopt, {}),
    "torchopt-momentum": (run_torchopt, {"momentum": 0.9}),
}


def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(5, 4, generator=g, dtype=DT), torch.randn(5, 1, generator=g, dtype=DT)


@pytest.mark.parametrize("layers", [1, 6])
@pytest.mark.parametrize("face", FACES)
def test_one_dispatcher_call_per_step(face, layers, monkeypatch):
    """One call of the dispatcher per step: the update, or the moments op (stateful or decaying
    optimizers: NOTE: [moment forms])."""
    calls = []

    def spy(real):
        def call(params, *args, **kw):
            calls.append(len(params))
            return real(params, *args, **kw)
        return call

    monkeypatch.setattr(ops, "update", spy(ops.update))
    monkeypatch.setattr(optim, "moments", spy(optim.moments))
    run, kw = FACES[face]
    model = deep_mlp(layers)
    run(model, *batch(), **kw)
    assert calls == [len(list(model.parameters()))] * STEPS


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.fastmaml_ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "fastmaml":
            self.fastmaml_ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.skipif(not ops.is_available("native"), reason="the native backend (compiled extension) is not built")
@pytest.mark.parametrize("layers", [1, 6])
@pytest.mark.parametrize("face", FACES)
def test_one_fused_op_per_step_with_native(face, layers):
    run, kw = FACES[face]
    counter = CountOps()
    with ops.use_backend("native"), counter:
        run(deep_mlp(layers), *batch(), **kw)
    # whatever the layer count: one fused op per step, the update or, when the face's optimizer
    # keeps state (momentum), the moments op (NOTE: [moment forms])
    steps = [name for name in counter.fastmaml_ops if "fused_update" in name or "fused_moments" in name]
    assert len(steps) == STEPS and len(set(steps)) == 1, counter.fastmaml_ops
    assert len(steps) == len(counter.fastmaml_ops), counter.fastmaml_ops


@pytest.mark.parametrize("backend", ["reference", "foreach"])
def test_faces_agree_across_backends(backend):
    """The faces' results do not depend on the backend (the reference oracle included)."""
    x, y = batch()
    outs = {}
    for name in (backend, "auto"):
        with ops.use_backend(name):
            model = deep_mlp(2)
            learner = fl2l.MAML(model, lr=0.1).clone()
            learner.adapt(((learner(x) - y) ** 2).mean())
            ((learner(x) - y) ** 2).mean().backward()
            outs[name] = [p.grad for p in model.parameters()]
    for a, b in zip(outs[backend], outs["auto"]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
