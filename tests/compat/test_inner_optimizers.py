"""The stateful inner optimizers in the faces against the REAL higher and TorchOpt: meta-gradients
equal to 1e-10 (float64) for higher's Adam and RMSprop (and SGD with momentum: test_compat_higher),
TorchOpt's MetaAdam, MetaAdamW, MetaRMSProp and its functional sgd / adam + apply_updates, on the
compiled moments op and on its reference twin; create_diff_optim, register_optim, stop_gradient
and module_clone; the refused settings name what is supported."""

import warnings

import pytest
import torch
from torch import nn

import fastmaml.compat.higher as fh
import fastmaml.compat.torchopt as fto
from fastmaml import ops
from tests.compat._compat_helpers import MODELS, assert_rel, make, peer

BACKENDS = ["reference", "native"]

HIGHER = {
    "adam": (torch.optim.Adam, dict(lr=0.05, betas=(0.8, 0.9), eps=1e-3)),
    "adam-wd": (torch.optim.Adam, dict(lr=0.05, weight_decay=0.1)),
    "rmsprop": (torch.optim.RMSprop, dict(lr=0.01, alpha=0.9, eps=1e-3)),
    "rmsprop-centered-momentum": (torch.optim.RMSprop, dict(lr=0.01, alpha=0.9, eps=1e-3, momentum=0.5,
                                                            centered=True, weight_decay=0.1)),
    "sgd-nesterov": (torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
}


def higher_loop(h, kind, opt_type, kwargs, steps=3):
    model, (xs, ys, xq, yq), loss_fn = make(kind)
    opt = opt_type(model.parameters(), **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # higher warns about its own RMSprop
        with h.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
            for _ in range(steps):
                diffopt.step(loss_fn(fmodel(xs), ys))
            loss_fn(fmodel(xq), yq).backward()
    return [p.grad for p in model.parameters()]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("name", HIGHER)
def test_higher_optimizers_match_higher(name, kind, backend):
    higher = peer("higher")
    opt_type, kwargs = HIGHER[name]
    want = higher_loop(higher, kind, opt_type, kwargs)
    with ops.use_backend(backend):
        got = higher_loop(fh, kind, opt_type, kwargs)
    assert_rel(got, want, f"meta-gradient vs higher ({name}, {backend})")


def test_create_diff_optim_matches_higher():
    higher = peer("higher")
    results = []
    for h in (higher, fh):
        model, (xs, ys, xq, yq), loss_fn = make("mlp")
        fmodel = h.monkeypatch(model, copy_initial_weights=False)
        diffopt = h.create_diff_optim(torch.optim.Adam, {"lr": 0.05}, params=list(model.parameters()), fmodel=fmodel)
        for _ in range(2):
            diffopt.step(loss_fn(fmodel(xs), ys))
        loss_fn(fmodel(xq), yq).backward()
        results.append([p.grad for p in model.parameters()])
    assert_rel(results[1], results[0], "create_diff_optim vs higher")


def test_register_optim_and_refusals():
    model = make("mlp")[0]
    with pytest.raises(NotImplementedError, match="torch.optim.SGD, torch.optim.Adam, torch.optim.RMSprop"):
        fh.get_diff_optim(torch.optim.Adagrad(model.parameters()), model.parameters())
    for other in (torch.optim.Adamax, torch.optim.Adadelta, torch.optim.ASGD, torch.optim.Rprop):
        with pytest.raises(NotImplementedError, match=f"supports the inner optimizers torch.optim.SGD, "
                                                      f"torch.optim.Adam, torch.optim.RMSprop .*got torch.optim.*{other.__name__}"):
            fh.create_diff_optim(other, {"lr": 0.1}, params=list(model.parameters()))
    with pytest.raises(NotImplementedError, match="amsgrad"):
        with fh.innerloop_ctx(model, torch.optim.Adam(model.parameters(), amsgrad=True)) as (fmodel, diffopt):
            diffopt.step(fmodel(torch.randn(2, 2, dtype=torch.float64)).sum())
    with pytest.raises(TypeError, match="DifferentiableOptimizer"):
        fh.register_optim(torch.optim.Adagrad, object)

    class Twin(fh.optim.DifferentiableSGD):
        pass

    fh.register_optim(torch.optim.Adagrad, Twin)
    try:
        assert isinstance(fh.get_diff_optim(torch.optim.Adagrad(model.parameters(), lr=0.1), model.parameters()), Twin)
    finally:
        fh.optim._opt_mapping.pop(torch.optim.Adagrad)


# ---- TorchOpt --------------------------------------------------------------------------------------
TORCHOPT = {
    "MetaAdam": dict(lr=0.05, betas=(0.8, 0.9), eps=1e-3),
    "MetaAdam-wd-eps_root": dict(lr=0.05, weight_decay=0.1, eps_root=1e-4),
    "MetaAdamW": dict(lr=0.05, weight_decay=0.1),
    "MetaRMSProp": dict(lr=0.01, alpha=0.9, eps=1e-3),
    "MetaRMSProp-centered-momentum": dict(lr=0.01, alpha=0.9, eps=1e-3, momentum=0.5, centered=True,
                                          weight_decay=0.1, initial_scale=0.1),
    "MetaRMSProp-nesterov": dict(lr=0.01, momentum=0.5, nesterov=True),
    "MetaSGD-momentum": dict(lr=0.1, momentum=0.9, dampening=0.3),
}


def torchopt_loop(to, kind, cls, kwargs, steps=3, tasks=2):
    model, (xs, ys, xq, yq), loss_fn = make(kind)
    inner_opt = getattr(to, cls)(model, **kwargs)
    net_state = to.extract_state_dict(model, by="reference", detach_buffers=True)
    opt_state = to.extract_state_dict(inner_opt, by="reference")
    for t in range(tasks):
        for _ in range(steps):
            inner_opt.step(loss_fn(model(xs * (1 + 0.1 * t)), ys))
        loss_fn(model(xq * (1 + 0.1 * t)), yq).backward()
        to.recover_state_dict(model, net_state)
        to.recover_state_dict(inner_opt, opt_state)
    return [p.grad for p in model.parameters()]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("name", TORCHOPT)
def test_torchopt_meta_optimizers_match_torchopt(name, kind, backend):
    to = peer("torchopt")
    cls = name.split("-")[0]
    want = torchopt_loop(to, kind, cls, TORCHOPT[name])
    with ops.use_backend(backend):
        got = torchopt_loop(fto, kind, cls, TORCHOPT[name])
    assert_rel(got, want, f"meta-gradient vs TorchOpt ({name}, {backend})")


def functional_loop(to, kind, make_opt, steps=3):
    """TorchOpt's functional MAML: params as a tuple, init / update / apply_updates(inplace=False)."""
    model, (xs, ys, xq, yq), loss_fn = make(kind)
    names = [n for n, _ in model.named_parameters()]
    params = tuple(model.parameters())
    opt = make_opt(to)
    state = opt.init(params)

    def forward(ps, x):
        return torch.func.functional_call(model, dict(zip(names, ps)), (x,))

    fast = params
    for _ in range(steps):
        grads = torch.autograd.grad(loss_fn(forward(fast, xs), ys), fast, create_graph=True)
        updates, state = opt.update(grads, state, params=fast, inplace=False)
        fast = to.apply_updates(fast, updates, inplace=False)
    loss_fn(forward(fast, xq), yq).backward()
    return [p.grad for p in model.parameters()]


FUNCTIONAL = {
    "sgd": lambda to: to.sgd(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "adam": lambda to: to.adam(lr=0.05, betas=(0.8, 0.9), eps=1e-3, weight_decay=0.01),
    "adamw": lambda to: to.adamw(lr=0.05, weight_decay=0.1),
    "rmsprop": lambda to: to.rmsprop(lr=0.01, momentum=0.5, centered=True),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", FUNCTIONAL)
def test_functional_api_matches_torchopt(name, backend):
    to = peer("torchopt")
    want = functional_loop(to, "cnn", FUNCTIONAL[name])
    with ops.use_backend(backend):
        got = functional_loop(fto, "cnn", FUNCTIONAL[name])
    assert_rel(got, want, f"meta-gradient vs TorchOpt functional {name} ({backend})")


def test_apply_updates_in_place_and_stop_gradient():
    p = [torch.ones(3, requires_grad=True)]
    out = fto.apply_updates(p, [torch.full((3,), 0.5)], inplace=True)
    assert out[0] is p[0] and torch.equal(p[0].detach(), torch.full((3,), 1.5))
    model, (xs, ys, _, _), loss_fn = make("mlp")
    opt = fto.MetaAdam(model, lr=0.1)
    opt.step(loss_fn(model(xs), ys))
    assert all(q.grad_fn is not None for q in model.parameters())
    fto.stop_gradient(model)
    fto.stop_gradient(opt)
    assert all(q.grad_fn is None and q.requires_grad for q in model.parameters())
    assert all(t.grad_fn is None for s in opt.state_dict() for lst in s[1:] if lst for t in lst)


@pytest.mark.parametrize("by", ["reference", "copy", "deepcopy"])
def test_module_clone(by):
    model = make("cnn")[0]
    clone = fto.module_clone(model, by=by)
    assert isinstance(clone, nn.Sequential) and clone is not model
    for a, b in zip(clone.parameters(), model.parameters()):
        assert torch.equal(a, b)
        assert (a is b) == (by == "reference")
        assert (a.grad_fn is not None) == (by == "copy")
    tree = fto.module_clone({"w": torch.ones(2, requires_grad=True)}, by="deepcopy")
    assert tree["w"].grad_fn is None and tree["w"].requires_grad


def test_refusals_name_the_setting():
    model = make("mlp")[0]
    with pytest.raises(NotImplementedError, match="mask"):
        fto.MetaAdamW(model, mask=lambda p: p)
    with pytest.raises(ValueError, match="MetaSGD: InnerSGD: nesterov"):
        fto.MetaSGD(model, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="weight decay: pass params"):
        opt = fto.adam(weight_decay=0.1)
        opt.update([torch.ones(2)], opt.init([torch.ones(2)]))
