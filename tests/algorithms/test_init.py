import pytest
import torch
import torch.nn.functional as Fn

import fastmaml
from fastmaml.tasks.sine import SineTasks
from tests.algorithms._algo_helpers import assert_close_all, batch, evaluate, sine_net, tiny


def mse(state):
    return Fn.mse_loss(state["model"](state["data"]), state["target"])


def mse_weights_list(state):  # the objective passes the weights itself, as seed 001 allows
    assert isinstance(state["model"], torch.nn.Module) and isinstance(state["updated_weights"], list)
    return Fn.mse_loss(state["model"](state["data"], state["updated_weights"]), state["target"])


def mse_functional_call(state):
    model = state["model"]
    weights = dict(zip([n for n, _ in model.named_parameters()], state["updated_weights"]))
    return Fn.mse_loss(torch.func.functional_call(model, weights, (state["data"],)), state["target"])


def mse_functional_call_tuple(state):
    model = state["model"]
    weights = dict(zip([n for n, _ in model.named_parameters()], state["updated_weights"]))
    return Fn.mse_loss(torch.func.functional_call(model, (weights, {}), state["data"]), state["target"])


OBJECTIVES = {"call": mse, "weights_list": mse_weights_list, "functional_call": mse_functional_call,
              "functional_call_tuple": mse_functional_call_tuple}
VARIANTS = {  # Init switches -> (the class, its arguments)
    "maml": ({}, fastmaml.MAML, {"first_order": False}),
    "fomaml": ({"use_second_order": False}, fastmaml.MAML, {"first_order": True}),
    "learn_lr": ({"learn_lr": True}, fastmaml.MetaSGD, {"first_order": False}),
    "learn_lr_fo": ({"learn_lr": True, "use_second_order": False}, fastmaml.MetaSGD, {"first_order": True}),
    "use_t": ({"use_t": True}, fastmaml.MTNet, {"first_order": False}),
    "use_t_fo": ({"use_t": True, "use_second_order": False}, fastmaml.MTNet, {"first_order": True}),
    "use_warp": ({"use_warp": True, "use_second_order": False}, fastmaml.WarpGrad, {"objective": "trajectory"}),
    "use_warp_so": ({"use_warp": True}, fastmaml.WarpGrad, {"objective": "unrolled"}),
    "use_forget": ({"use_forget": True}, fastmaml.L2F, {"first_order": False}),
    "use_forget_fo": ({"use_forget": True, "use_second_order": False}, fastmaml.L2F, {"first_order": True}),
}


@pytest.mark.parametrize("objective", list(OBJECTIVES))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_optimize_matches_the_algorithm_class(variant, objective):
    flags, cls, kw = VARIANTS[variant]
    data = batch(tasks=2)
    fn = OBJECTIVES[objective]
    init = fastmaml.Init(tiny(), fn, fn, inner_learning_rate=0.3, inner_loop=2, **flags)
    assert type(init.learner).__mro__[1] is cls
    losses = [init.optimize(*(t[i] for t in data)) for i in range(2)]
    ours = [p.grad for p in init.parameters()]

    model = tiny()
    learner = cls(model, inner_lr=0.3, inner_steps=2, batching="loop", **kw)
    learner.load_state_dict(init.learner.state_dict())
    ref = learner.meta_loss(*data, Fn.mse_loss, reduction="sum")
    torch.testing.assert_close(sum(losses), ref.detach())
    assert_close_all(ours, torch.autograd.grad(ref, list(learner.parameters()), allow_unused=True), what=variant)


def test_state_dict_keys_and_adapt():
    seen = []

    def inner(state):
        seen.append(set(state))
        model, weights = state["model"], state["updated_weights"]
        assert isinstance(model, torch.nn.Module) and isinstance(weights, list)
        assert [n for n, _ in model.named_parameters()] == [n for n, _ in init.model.named_parameters()]
        for w, p in zip(weights, init.model.parameters()):
            assert w.shape == p.shape
        x = state["data"]
        torch.testing.assert_close(model(x), torch.func.functional_call(init.model, dict(zip(names, weights)), x))
        return mse(state)

    init = fastmaml.Init(tiny(), inner, mse, inner_loop=1)
    names = [n for n, _ in init.model.named_parameters()]
    sx, sy, qx, qy = (t[0] for t in batch(tasks=1))
    phi = init.adapt(sx, sy)
    assert seen == [{"data", "target", "model", "updated_weights"}]
    assert isinstance(phi, list) and len(phi) == 4
    torch.testing.assert_close(init(qx, phi), init(qx, dict(zip(names, phi))))
    assert not torch.allclose(init(qx, phi), init(qx))
    init.optimize(sx, sy, qx, qy)
    assert next(init.model.parameters()).grad is not None


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"at most one of .* \['learn_lr', 'use_t'\]"):
        fastmaml.Init(tiny(), mse, mse, learn_lr=True, use_t=True)
    with pytest.raises(TypeError, match="outer_objective must be a callable"):
        fastmaml.Init(tiny(), mse, None)
    init = fastmaml.Init(tiny(), lambda s: s["model"](s["data"]), mse)
    sx, sy, qx, qy = (t[0] for t in batch(tasks=1))
    with pytest.raises(ValueError, match="inner_objective must return a scalar tensor"):
        init.optimize(sx, sy, qx, qy)
    with pytest.raises(ValueError, match="validate_x has 5 examples but validate_y has 4"):
        fastmaml.Init(tiny(), mse, mse).optimize(sx, sy, qx, qy[:4])
    with pytest.raises(ValueError, match="updated_weights has 3 tensors but the model has 4 parameters"):
        fastmaml.Init(tiny(), mse, mse)(qx, list(tiny().parameters())[:3])


# Per variant: (inner rate, inner steps, outer Adam rate, meta-iterations of 4 tasks). The extra
# layers of use_t/use_warp multiply the effective step, hence their smaller outer rate.
LEARN = {"maml": (0.01, 5, 1e-2, 80), "learn_lr": (0.01, 5, 1e-2, 80), "use_forget": (0.01, 5, 1e-2, 80),
         "use_t": (0.02, 3, 3e-3, 60), "use_warp": (0.01, 5, 3e-3, 200)}
# Parameters meta-learned at their own, smaller rate: Meta-SGD's rates, the warp layers (why:
# docs/algorithms/warpgrad.md). use_warp's ratio on task-stream seeds 0-9: at most 0.40.
SLOW = {"learn_lr": (lambda learner: learner.lrs.parameters(), 1e-4),
        "use_warp": (lambda learner: learner.warp_parameters(), 1e-3)}


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(LEARN))
def test_init_variants_learn_sine(variant):
    flags, _, _ = VARIANTS[variant]
    inner_lr, steps, lr, iters = LEARN[variant]
    init = fastmaml.Init(sine_net(), mse, mse, inner_learning_rate=inner_lr, inner_loop=steps, **flags)
    slow_params, slow_lr = SLOW.get(variant, (lambda learner: [], None))
    slow = list(slow_params(init.learner))
    fast = [p for p in init.parameters() if all(p is not s for s in slow)]
    opt = torch.optim.Adam([{"params": fast, "lr": lr}] + ([{"params": slow, "lr": slow_lr}] if slow else []))
    stream = SineTasks(k_shot=10, q_query=10, seed=0)
    for _ in range(iters):
        b = stream.sample(4)
        opt.zero_grad()
        for t in range(4):
            init.optimize(b.support_x[t], b.support_y[t], b.query_x[t], b.query_y[t])
        opt.step()
    pre, post = evaluate(init.learner)
    assert post <= 0.5 * pre, (variant, pre, post)
