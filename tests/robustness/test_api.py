"""The public API with bad or unusual inputs, by example and by property (hypothesis): each call
ends in an error naming the argument, or gives the same numbers as the reference computation
(the task loop, and hand-written float64 SGD on tiny_mlp)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings, strategies as st

import fastmaml
from fastmaml.train.trainer import MetaTrainer, evaluate
from tests.models import image_tasks, mlp_forward, regression_tasks, tiny_cnn, tiny_mlp

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NAMES = ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]


def hand_sgd(x, y, lr: float, steps: int, params=None):
    """`steps` SGD steps of tiny_mlp on (x, y) by torch.autograd on an explicit forward."""
    p = [t.detach().clone().requires_grad_() for t in (params or list(tiny_mlp().parameters()))]
    for _ in range(steps):
        loss = F.mse_loss(mlp_forward(p, x), y)
        grads = torch.autograd.grad(loss, p)
        p = [(w - lr * g).detach().requires_grad_() for w, g in zip(p, grads)]
    return [w.detach() for w in p]


# ---- issue 20, item 7: by example ------------------------------------------------------------------
def test_misspelled_params_key_names_it_and_the_known_names():
    learner = fastmaml.MAML(tiny_mlp())
    x = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"\['0.weigth'\] is not a parameter or buffer of the Sequential; its "
                                         r"parameters are \['0.weight', .*did you mean '0.weight'"):
        learner(x, {"0.weigth": torch.zeros(8, 2, dtype=torch.float64)})
    with pytest.raises(ValueError, match="not a parameter or buffer"):
        fastmaml.functional_forward(learner.module, {"head.weight": torch.zeros(1)}, x)
    # a partial dict of real names still falls back to the model's own for the rest (documented)
    out = learner(x, {"4.bias": torch.zeros(1, dtype=torch.float64)})
    assert out.shape == (4, 1)


@pytest.mark.parametrize("steps", [-3, -1, 2.5, True, "2"])
def test_adapt_steps_must_be_a_count(steps):
    sx, sy, _, _ = regression_tasks()
    learner = fastmaml.MAML(tiny_mlp())
    with pytest.raises(ValueError, match="steps must be an int >= 0"):
        learner.adapt(sx[0], sy[0], F.mse_loss, steps=steps)


@pytest.mark.parametrize("rate", [float("nan"), float("inf"), -0.1])
def test_rate_dicts_are_checked_at_entry(rate):
    sx, sy, _, _ = regression_tasks()
    model = tiny_mlp()
    params = fastmaml.params_of(model)
    tensors = {n: torch.full((1,), rate, dtype=torch.float64) for n in params}
    with pytest.raises(ValueError, match=r"lr\['0.weight'\] must be finite and >= 0"):
        fastmaml.adapt(model, params, sx[0], sy[0], F.mse_loss, lr=tensors)
    with pytest.raises(ValueError, match=r"lr\['0.weight'\] must be a finite number >= 0"):
        fastmaml.adapt(model, params, sx[0], sy[0], F.mse_loss, lr={n: rate for n in params})
    with pytest.raises(KeyError, match=r"lr has no rate for \['0.bias'"):
        fastmaml.adapt(model, params, sx[0], sy[0], F.mse_loss, lr={"0.weight": 0.1})


def test_adapt_refuses_a_batch_of_tasks_and_meta_loss_one_task():
    sx, sy, qx, qy = regression_tasks()
    learner = fastmaml.MAML(tiny_mlp())
    with pytest.raises(ValueError, match=r"adapt: support_x has shape \[3, 5, 2\] but takes one task \[N, \.\.\.\] "
                                         r"with examples of rank 1 \(from the model's first layer, Linear\); it looks "
                                         r"like a batch of tasks"):
        learner.adapt(sx, sy, F.mse_loss)
    with pytest.raises(ValueError, match=r"meta_loss: support_x has shape \[5, 2\] but takes a batch of tasks .*it "
                                         r"looks like one task's"):
        learner.meta_loss(sx[0], sy[0], qx[0, :5], qy[0, :5], F.mse_loss)
    cnn = fastmaml.MAML(tiny_cnn())
    isx, isy, iqx, iqy = image_tasks()
    with pytest.raises(ValueError, match=r"examples of rank 3 \(from the model's first layer, Conv2d\)"):
        cnn.adapt(isx, isy, F.cross_entropy)
    with pytest.raises(ValueError, match=r"has 2 channels .* takes 1"):
        cnn.meta_loss(isx.expand(-1, -1, 2, -1, -1), isy, iqx, iqy, F.cross_entropy)
    # the escape hatch: a model whose examples are sequences [L, F] into a Linear
    seq = fastmaml.MAML(tiny_mlp())
    seq.example_rank = 2
    assert torch.isfinite(seq.meta_loss(sx[:, :, None].expand(-1, -1, 3, -1), sy[:, :, None].expand(-1, -1, 3, -1),
                                        qx[:, :, None].expand(-1, -1, 3, -1), qy[:, :, None].expand(-1, -1, 3, -1),
                                        F.mse_loss))


def test_a_model_without_a_known_first_layer_takes_its_example_rank_from_the_first_call():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 3), torch.nn.Linear(3, 1))
    learner = fastmaml.MAML(model)
    x = torch.randint(0, 10, (2, 4))  # 2 tasks of 4 token examples (rank 0)
    y = torch.randn(2, 4, 1)
    learner.meta_loss(x, y, x, y, F.mse_loss)
    with pytest.raises(ValueError, match=r"adapt: support_x has shape \[2, 4\].*from the examples of an earlier call"):
        learner.adapt(x, y, F.mse_loss)


def test_inputs_of_another_dtype_or_width_are_named():
    sx, sy, qx, qy = regression_tasks()
    learner = fastmaml.MAML(tiny_mlp())
    with pytest.raises(ValueError, match=r"support_x has dtype torch.float32 but the model's parameters are "
                                         r"torch.float64"):
        learner.meta_loss(sx.float(), sy, qx, qy, F.mse_loss)
    with pytest.raises(ValueError, match=r"query_x has 1 features .* Linear, takes 2"):
        learner.meta_loss(sx, sy, qx[..., :1], qy, F.mse_loss)


@pytest.mark.parametrize("clip", [0, -1, float("nan"), float("inf"), True])
def test_grad_clip_must_be_positive(clip):
    learner = fastmaml.MAML(tiny_mlp())
    with pytest.raises(ValueError, match="grad_clip must be a finite number > 0"):
        MetaTrainer(learner, None, F.mse_loss, metric="mse", grad_clip=clip)


def test_grad_clip_scales_down_never_flips():
    """The clipped meta-gradient points the same way as the unclipped one, with norm <= grad_clip."""
    from fastmaml.tasks.sine import SineTasks, sine_mlp

    grads = {}
    for clip in (None, 1e-3):
        torch.manual_seed(0)
        learner = fastmaml.MAML(sine_mlp(hidden=8), inner_lr=0.01, batching="loop")
        trainer = MetaTrainer(learner, SineTasks(3, 3, seed=0), F.mse_loss, metric="mse", meta_batch=2, iterations=1,
                              grad_clip=clip, progress=False)
        trainer._meta_step()
        grads[clip] = torch.cat([p.grad.flatten() for p in learner.parameters()])
    assert grads[None].norm() > 1e-2  # so the clip acts
    assert grads[1e-3].norm() <= 1e-3 * (1 + 1e-5)
    assert F.cosine_similarity(grads[None], grads[1e-3], dim=0) > 0.9999


def test_evaluate_reports_a_diverged_classifier_as_nan_not_chance():
    """Issue 20 item 5: inner lr 1e38 (float32) makes the adapted outputs NaN; accuracy must not read
    as a chance-level number."""
    isx, isy, iqx, iqy = (t.float() if t.is_floating_point() else t for t in image_tasks())

    class Tasks:
        def sample(self, n):
            return type("B", (), {"tensors": lambda self: (isx[:n], isy[:n], iqx[:n], iqy[:n])})()

    torch.manual_seed(0)
    learner = fastmaml.MAML(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 3)), inner_lr=1e38,
                            inner_steps=3)
    result = evaluate(learner, Tasks(), F.cross_entropy, "accuracy", num_tasks=3, steps=[0, 3])
    by_steps = {c["inner_steps"]: c for c in result["curve"]}
    assert math.isfinite(by_steps[0]["mean"])  # before adaptation: fine
    assert not math.isfinite(by_steps[3]["loss"])
    assert math.isnan(by_steps[3]["mean"]) and math.isnan(by_steps[3]["ci95"])


# ---- by property ------------------------------------------------------------------------------------
@SETTINGS
@given(tasks=st.integers(1, 3), support=st.integers(1, 4), query=st.integers(1, 4), steps=st.integers(0, 2),
       lr=st.floats(0, 0.5), batching=st.sampled_from(["vmap", "batched", "auto"]), seed=st.integers(0, 2**16))
def test_meta_loss_agrees_with_the_task_loop(tasks, support, query, steps, lr, batching, seed):
    g = torch.Generator().manual_seed(seed)
    sx, sy = torch.randn(tasks, support, 2, generator=g, dtype=torch.float64), torch.randn(tasks, support, 1, generator=g,
                                                                                            dtype=torch.float64)
    qx, qy = torch.randn(tasks, query, 2, generator=g, dtype=torch.float64), torch.randn(tasks, query, 1, generator=g,
                                                                                          dtype=torch.float64)
    ref = fastmaml.MAML(tiny_mlp(), inner_lr=lr, inner_steps=steps, batching="loop")
    got = fastmaml.MAML(tiny_mlp(), inner_lr=lr, inner_steps=steps, batching=batching)
    a, b = ref.meta_loss(sx, sy, qx, qy, F.mse_loss), got.meta_loss(sx, sy, qx, qy, F.mse_loss)
    ga = torch.autograd.grad(a, list(ref.parameters()))
    gb = torch.autograd.grad(b, list(got.parameters()))
    assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
    for x, y in zip(ga, gb):
        assert torch.allclose(x, y, rtol=1e-8, atol=1e-11)


@SETTINGS
@given(steps=st.integers(-4, 3), lr=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2, 2)),
       support=st.integers(1, 5))
def test_adapt_is_an_error_or_hand_written_sgd(steps, lr, support):
    sx, sy, _, _ = regression_tasks(tasks=1, support=support)
    x, y = sx[0], sy[0]
    valid_lr = math.isfinite(lr) and lr >= 0
    try:
        learner = fastmaml.MAML(tiny_mlp(), inner_lr=lr)
    except ValueError as err:
        assert not valid_lr and "inner_lr must be a finite number >= 0" in str(err)
        return
    assert valid_lr
    try:
        phi = learner.adapt(x, y, F.mse_loss, steps=steps, first_order=True)
    except ValueError as err:
        assert steps < 0 and "steps must be an int >= 0" in str(err)
        return
    assert steps >= 0
    want = hand_sgd(x, y, float(lr), steps)
    for name, w in zip(NAMES, want):
        assert_same(phi[name].detach(), w, rtol=1e-10, atol=1e-12)
    functional = fastmaml.adapt(learner.module, learner.params(), x, y, F.mse_loss, lr=lr, steps=steps, first_order=True)
    for name in NAMES:
        assert_same(functional[name].detach(), phi[name].detach(), rtol=1e-12, atol=1e-14)


def assert_same(got, want, rtol, atol):
    """Close where finite, and non-finite in the same places (a huge lr overflows both the same way,
    though inf - inf may be nan on one side and the order of the sums decides which)."""
    finite = torch.isfinite(want)
    assert torch.equal(torch.isfinite(got), finite)
    assert torch.allclose(got[finite], want[finite], rtol=rtol, atol=atol)


@SETTINGS
@given(keys=st.lists(st.one_of(st.sampled_from(NAMES), st.text(min_size=1, max_size=8)), min_size=1, max_size=3,
                     unique=True))
def test_params_dicts_with_unknown_keys_are_named(keys):
    learner = fastmaml.MAML(tiny_mlp())
    real = learner.params()
    x = torch.randn(3, 2, dtype=torch.float64)
    params = {k: (real[k].detach() * 2 if k in real else torch.zeros(1)) for k in keys}
    unknown = [k for k in keys if k not in real]
    if unknown:
        with pytest.raises(ValueError, match="is not a parameter or buffer|are not a parameter or buffer") as err:
            learner(x, params)
        assert repr(unknown[0]) in str(err.value)
    else:
        p = [params.get(n, real[n]) for n in NAMES]
        assert torch.allclose(learner(x, params), mlp_forward(p, x))


BAD_LAYOUTS = ["ok", "no_task_dim", "extra_dim", "features", "examples", "tasks", "empty_support", "dtype", "list"]


@SETTINGS
@given(layout=st.sampled_from(BAD_LAYOUTS), which=st.integers(0, 3), tasks=st.integers(1, 3),
       batching=st.sampled_from(["loop", "vmap", "auto"]))
def test_meta_loss_names_the_bad_argument(layout, which, tasks, batching):
    arrays = list(regression_tasks(tasks=tasks))
    arg = ["support_x", "support_y", "query_x", "query_y"][which]
    is_x = which in (0, 2)
    t = arrays[which]
    if layout == "no_task_dim":
        t = t[0]
    elif layout == "extra_dim":
        t = t[None]
    elif layout == "features":
        assume(is_x)
        t = t[..., :1]
    elif layout == "examples":
        t = t[:, :-1] if t.shape[1] > 1 else torch.cat([t, t], 1)
    elif layout == "tasks":
        t = torch.cat([t, t[:1]], 0)
    elif layout == "empty_support":
        assume(which == 0)
        arrays[1] = arrays[1][:, :0]
        t = t[:, :0]
    elif layout == "dtype":
        assume(is_x)
        t = t.float()
    elif layout == "list":
        t = t.tolist()
    arrays[which] = t
    learner = fastmaml.MAML(tiny_mlp(), inner_lr=0.1, batching=batching)
    if layout == "ok":
        assert torch.isfinite(learner.meta_loss(*arrays, F.mse_loss))
        return
    with pytest.raises((ValueError, TypeError)) as err:
        learner.meta_loss(*arrays, F.mse_loss)
    message = str(err.value)
    named = [a for a in ("support_x", "support_y", "query_x", "query_y", "support", "query", "tasks") if a in message]
    assert named, message
    if layout in ("features", "dtype", "list", "extra_dim"):
        assert arg in message, message


def test_ignored_labels_agree_between_the_batched_path_and_the_loop():
    isx, isy, iqx, iqy = image_tasks()
    iqy = iqy.clone()
    iqy[:, 0] = -100
    a = fastmaml.MAML(tiny_cnn(), inner_lr=0.1, batching="loop").meta_loss(isx, isy, iqx, iqy, F.cross_entropy)
    b = fastmaml.MAML(tiny_cnn(), inner_lr=0.1, batching="batched").meta_loss(isx, isy, iqx, iqy, F.cross_entropy)
    assert torch.allclose(a, b, rtol=1e-9)
