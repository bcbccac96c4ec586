import pytest
import torch

import fastmaml.compat.higher as fh
from tests.compat._compat_helpers import (
    DT,
    MODELS,
    assert_rel,
    buffers,
    make,
    peer,
    reference_meta_grads,
    unrolled,
)

LR = 0.1


def sgd(model, groups: str = "one", **kw):
    params = list(model.parameters())
    if groups == "two":  # the first two tensors at their own lr (and momentum)
        return torch.optim.SGD([{"params": params[:2], "lr": 0.05, "momentum": kw.get("momentum", 0.0) / 2},
                                {"params": params[2:]}], lr=LR, **kw)
    return torch.optim.SGD(params, lr=LR, **kw)


def higher_loop(innerloop_ctx, kind, steps, track=True, copy_initial_weights=False, groups="one", **kw):
    """higher's own usage; returns the meta-gradient (w.r.t. the model's parameters, or w.r.t.
    fmodel.parameters(time=0) with copy_initial_weights, or w.r.t. the last fast weights when not
    tracking), the model's .grad, and model and fmodel buffers."""
    model, (xs, ys, xq, yq), loss_fn = make(kind)
    opt = sgd(model, groups, **kw)
    with innerloop_ctx(model, opt, copy_initial_weights=copy_initial_weights,
                       track_higher_grads=track) as (fmodel, diffopt):
        for _ in range(steps):
            diffopt.step(loss_fn(fmodel(xs), ys))
        loss_fn(fmodel(xq), yq).backward()
        if not track:
            wrt = list(fmodel.parameters())
        elif copy_initial_weights:
            wrt = list(fmodel.parameters(time=0))
        else:
            wrt = list(model.parameters())
        return ([p.grad for p in wrt], [p.grad for p in model.parameters()], buffers(model),
                [b.clone() for b in fmodel.buffers()])


def sgd_reference(groups="one", momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
    """torch.optim.SGD's maths written out, per tensor (higher's DifferentiableSGD)."""
    def step(params, grads, state):
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            lr, mom = (0.05, momentum / 2) if groups == "two" and i < 2 else (LR, momentum)
            if weight_decay:
                g = g + weight_decay * p
            if mom:
                buf = state[i] = g if i not in state else state[i] * mom + (1 - dampening) * g
                g = g + mom * buf if nesterov else buf
            out.append(p - lr * g)
        return out
    return step


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("kind", MODELS)
def test_second_order_matches_unrolled(kind, steps):
    got, _, model_buffers, fbuffers = higher_loop(fh.innerloop_ctx, kind, steps)
    want, ref_model = reference_meta_grads(kind, steps, False)
    assert_rel(got, want, "meta-gradient")
    # higher's buffer rule: fmodel has its own copies; the model's stay as they were
    assert_rel(model_buffers, buffers(make(kind)[0]), "model buffers")
    assert_rel(fbuffers, buffers(ref_model), "fmodel buffers")


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("kind", MODELS)
def test_first_order_matches_unrolled(kind, steps):
    """track_higher_grads=False: first-order steps, the last fast weights are detached leaves."""
    got, model_grads, _, _ = higher_loop(fh.innerloop_ctx, kind, steps, track=False)
    model, task, loss_fn = make(kind)
    qloss, last = unrolled(model, list(model.parameters()), task, loss_fn, steps, True, sgd_reference())
    assert all(g is None for g in model_grads)
    assert_rel(got, torch.autograd.grad(qloss, last), "gradient w.r.t. the last fast weights")


@pytest.mark.parametrize("kind", MODELS)
def test_copy_initial_weights_true_cuts_the_model_off(kind):
    """The usual gotcha, as in higher: gradients reach fmodel.parameters(time=0), not the model."""
    got, model_grads, _, _ = higher_loop(fh.innerloop_ctx, kind, 2, copy_initial_weights=True)
    assert all(g is None for g in model_grads)
    want, _ = reference_meta_grads(kind, 2, False)
    assert_rel(got, want, "gradient w.r.t. fmodel.parameters(time=0)")


SETTINGS = {
    "plain": dict(),
    "momentum": dict(momentum=0.9),
    "dampening": dict(momentum=0.9, dampening=0.3),
    "nesterov": dict(momentum=0.9, nesterov=True),
    "weight_decay": dict(weight_decay=0.01, momentum=0.5),
    "two_groups": dict(groups="two", momentum=0.9),
}


@pytest.mark.parametrize("setting", SETTINGS)
def test_sgd_settings_match_unrolled(setting):
    kw = dict(SETTINGS[setting])
    got, _, _, _ = higher_loop(fh.innerloop_ctx, "cnn", 3, **kw)
    want, _ = reference_meta_grads("cnn", 3, False, step=sgd_reference(**kw))
    assert_rel(got, want, f"meta-gradient ({setting})")


@pytest.mark.parametrize("track", [True, False])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("kind", MODELS)
def test_matches_higher(kind, steps, track):
    higher = peer("higher")
    want = higher_loop(higher.innerloop_ctx, kind, steps, track=track)
    got = higher_loop(fh.innerloop_ctx, kind, steps, track=track)
    assert_rel(got[0], want[0], "meta-gradient vs higher")
    assert_rel(got[2], want[2], "model buffers vs higher")
    assert_rel(got[3], want[3], "fmodel buffers vs higher")


@pytest.mark.parametrize("copy_initial_weights", [True, False])
@pytest.mark.parametrize("setting", SETTINGS)
def test_sgd_settings_match_higher(setting, copy_initial_weights):
    higher = peer("higher")
    kw = dict(SETTINGS[setting], copy_initial_weights=copy_initial_weights)
    want = higher_loop(higher.innerloop_ctx, "cnn", 3, **kw)
    got = higher_loop(fh.innerloop_ctx, "cnn", 3, **kw)
    assert_rel(got[0], want[0], f"meta-gradient vs higher ({setting})")
    assert [g is None for g in got[1]] == [g is None for g in want[1]]


def override_loop(innerloop_ctx):
    model, (xs, ys, xq, yq), loss_fn = make("mlp")
    lrs = [torch.tensor(0.05, dtype=DT, requires_grad=True), torch.tensor(0.2, dtype=DT, requires_grad=True)]
    with innerloop_ctx(model, sgd(model, "two"), copy_initial_weights=False,
                       override={"lr": lrs}) as (fmodel, diffopt):
        for _ in range(2):
            diffopt.step(loss_fn(fmodel(xs), ys))
        loss_fn(fmodel(xq), yq).backward()
    return [lr.grad for lr in lrs] + [p.grad for p in model.parameters()]


def test_learned_lr_override():
    got = override_loop(fh.innerloop_ctx)
    model, task, loss_fn = make("mlp")
    lrs = [torch.tensor(0.05, dtype=DT, requires_grad=True), torch.tensor(0.2, dtype=DT, requires_grad=True)]
    step = lambda ps, gs, s: [p - lrs[i >= 2] * g for i, (p, g) in enumerate(zip(ps, gs))]
    theta = list(model.parameters())
    qloss, _ = unrolled(model, theta, task, loss_fn, 2, False, step)
    assert_rel(got, torch.autograd.grad(qloss, lrs + theta), "d loss / d (lrs, theta)")
    higher = peer("higher")
    assert_rel(got, override_loop(higher.innerloop_ctx), "vs higher")


def test_fmodel_api():
    model, (xs, ys, xq, yq), loss_fn = make("cnn")
    with fh.innerloop_ctx(model, sgd(model), copy_initial_weights=False) as (fmodel, diffopt):
        assert isinstance(fmodel, torch.nn.Sequential)
        assert fmodel[1].num_features == 4
        first = list(fmodel.parameters())
        new = diffopt.step(loss_fn(fmodel(xs), ys))
        assert fmodel.fast_params == new and list(fmodel.parameters()) == new
        assert list(fmodel.parameters(time=0)) == first == fmodel.init_fast_params
        # params= runs with the given weights and makes them current, as in higher
        out = fmodel(xq, params=first)
        assert list(fmodel.parameters()) == first
        assert_rel([out], [model(xq)], "forward with params=initial")
    # the explicit functional form: step(loss, params=...) without a patched model's view
    ps = [p.detach().clone().requires_grad_() for p in model.parameters()]
    diffopt = fh.get_diff_optim(sgd(model), model.parameters())
    new = diffopt.step((ps[-1] ** 2).sum(), params=ps)
    assert_rel([new[-1]], [ps[-1] - LR * 2 * ps[-1]], "functional step")
    assert new[0] is ps[0]  # no gradient: unchanged


def test_unsupported_optimizer_names_what_is_supported():
    model, _, _ = make("mlp")
    with pytest.raises(NotImplementedError, match=r"supports the inner optimizers torch.optim.SGD, .*Adagrad"):
        with fh.innerloop_ctx(model, torch.optim.Adagrad(model.parameters())):
            pass
    with pytest.raises(NotImplementedError, match="maximize"):
        with fh.innerloop_ctx(model, torch.optim.SGD(model.parameters(), lr=0.1, maximize=True)):
            pass
