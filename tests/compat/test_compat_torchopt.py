import pytest
import torch
from torch import nn

import fastmaml.compat.torchopt as fto
from tests.compat._compat_helpers import (
    MODELS,
    assert_rel,
    buffers,
    make,
    peer,
    reference_meta_grads,
)

LR = 0.1


def torchopt_loop(to, kind, steps, tasks=2, **kw):
    """TorchOpt's MAML example: adapt net in place, backward the query loss, recover net and
    optimizer state, for each task; returns the accumulated meta-gradient and buffers."""
    model, (xs, ys, xq, yq), loss_fn = make(kind)
    inner_opt = to.MetaSGD(model, lr=LR, **kw)
    net_state = to.extract_state_dict(model, by="reference", detach_buffers=True)
    opt_state = to.extract_state_dict(inner_opt, by="reference")
    for t in range(tasks):
        sx, qx = xs * (1 + 0.1 * t), xq * (1 + 0.1 * t)  # a different task each time
        for _ in range(steps):
            inner_opt.step(loss_fn(model(sx), ys))
        loss_fn(model(qx), yq).backward()
        to.recover_state_dict(model, net_state)
        to.recover_state_dict(inner_opt, opt_state)
    return [p.grad for p in model.parameters()], model


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("kind", MODELS)
def test_metasgd_matches_unrolled(kind, steps):
    got, model = torchopt_loop(fto, kind, steps, tasks=1)
    want, _ = reference_meta_grads(kind, steps, False)
    assert_rel(got, want, "meta-gradient")
    assert all(isinstance(p, nn.Parameter) for p in model.parameters())
    # detach_buffers=True in the example: the running statistics are put back after each task
    assert_rel(buffers(model), buffers(make(kind)[0]), "buffers after recover")


def momentum_reference(momentum, dampening, nesterov, weight_decay, first_call):
    def step(params, grads, state):
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            if weight_decay:
                g = g + weight_decay * p
            if momentum:
                t = state.get(i, torch.zeros_like(p))
                first = first_call and i not in state
                buf = state[i] = t + g if first else t * momentum + (g if nesterov else (1 - dampening) * g)
                g = g + momentum * buf if nesterov else buf
            out.append(p - LR * g)
        return out
    return step


@pytest.mark.parametrize("setting", [dict(momentum=0.9, dampening=0.3), dict(momentum=0.9, nesterov=True),
                                     dict(weight_decay=0.01)])
def test_momentum_and_weight_decay_match_unrolled(setting):
    got, _ = torchopt_loop(fto, "mlp", 3, tasks=1, **setting)
    kw = dict(momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0) | setting
    want, _ = reference_meta_grads("mlp", 3, False, step=momentum_reference(**kw, first_call=True))
    assert_rel(got, want, f"meta-gradient {setting}")


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("kind", MODELS)
def test_metasgd_matches_torchopt(kind, steps):
    to = peer("torchopt")
    want, peer_model = torchopt_loop(to, kind, steps)
    got, model = torchopt_loop(fto, kind, steps)
    assert_rel(got, want, "meta-gradient vs TorchOpt")
    assert_rel(buffers(model), buffers(peer_model), "buffers vs TorchOpt")


@pytest.mark.parametrize("setting", [dict(momentum=0.9, dampening=0.3), dict(momentum=0.9, nesterov=True),
                                     dict(momentum=0.5, weight_decay=0.01), dict(maximize=True, weight_decay=0.01)])
def test_settings_match_torchopt(setting):
    """Two tasks: the second starts from recovered state, TorchOpt's first-step rule included."""
    to = peer("torchopt")
    want, _ = torchopt_loop(to, "cnn", 3, **setting)
    got, _ = torchopt_loop(fto, "cnn", 3, **setting)
    assert_rel(got, want, f"meta-gradient vs TorchOpt {setting}")


def test_extract_and_recover():
    model, (xs, ys, _, _), loss_fn = make("cnn")
    originals = list(model.parameters())
    opt = fto.MetaSGD(model, lr=LR, momentum=0.9)
    empty = fto.extract_state_dict(opt)
    assert empty == (None,)
    for by in ("reference", "copy", "deepcopy"):
        state = fto.extract_state_dict(model, by=by)
        assert len(state.params) == 3 and len(state.buffers) == 1
        opt.step(loss_fn(model(xs), ys))
        assert not any(isinstance(p, nn.Parameter) for p in model.parameters())
        fto.recover_state_dict(model, state)
        if by == "reference":
            assert all(a is b for a, b in zip(model.parameters(), originals))
        else:
            assert_rel(model.parameters(), originals, f"parameters recovered from by={by!r}")
            assert all(p.requires_grad for p in model.parameters())
    fto.recover_state_dict(model, fto.extract_state_dict(make("cnn")[0], by="reference"))
    fto.recover_state_dict(opt, empty)
    opt.step(loss_fn(model(xs), ys))
    assert opt.state_dict()[0].count == 1 and opt.state_dict()[0].b is not None
    fto.recover_state_dict(opt, empty)
    assert opt.state_dict() == empty
    with pytest.raises(RuntimeError, match="Unexpected class"):
        fto.extract_state_dict(object())


def test_frozen_parameters_are_left_alone_and_errors_name_the_argument():
    model, (xs, ys, _, _), loss_fn = make("mlp")
    model[0].weight.requires_grad_(False)
    frozen = model[0].weight
    fto.MetaSGD(model, lr=LR).step(loss_fn(model(xs), ys))
    assert model[0].weight is frozen and model[0].bias.grad_fn is not None
    with pytest.raises(ValueError, match="nesterov"):
        fto.MetaSGD(model, lr=LR, nesterov=True)
    with pytest.raises(ValueError, match="learning rate"):
        fto.MetaSGD(model, lr=-1.0)
    with pytest.raises(AttributeError, match="provides .*MetaAdam, .*MetaSGD"):
        fto.MetaAdagrad  # noqa: B018


def test_schedule_lr():
    model, (xs, ys, xq, yq), loss_fn = make("mlp")
    theta = list(model.parameters())
    opt = fto.MetaSGD(model, lr=lambda count: LR / (1 + count))
    for _ in range(2):
        opt.step(loss_fn(model(xs), ys))
    loss_fn(model(xq), yq).backward()
    rates = iter([LR, LR / 2])
    want, _ = reference_meta_grads("mlp", 2, False, step=lambda ps, gs, s: [
        p - r * g for r in [next(rates)] for p, g in zip(ps, gs)])
    assert_rel([p.grad for p in theta], want, "meta-gradient with a schedule")
