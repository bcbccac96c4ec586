"""The learn2learn face beyond MAML/MetaSGD: the free functions (maml_update, update_module,
clone_module, detach_module), GBML and l2l.optim against an independent unrolled loop in float64,
l2l.nn, l2l.data's task transforms and l2l.vision's models, datasets and benchmarks."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import fastmaml.compat.learn2learn as l2l
from tests.compat._compat_helpers import (
    DT,
    MODELS,
    assert_rel,
    make,
    reference_meta_grads,
    unrolled,
)
from tests.train.conftest import find_omniglot

LR = 0.1


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("how", ["maml_update", "update_module", "DifferentiableSGD"])
def test_free_updates_match_unrolled(kind, how):
    """Two inner steps written with each free function give the unrolled loop's meta-gradient."""
    model, (xs, ys, xq, yq), loss_fn = make(kind)
    learner = l2l.clone_module(model)
    for _ in range(2):
        grads = torch.autograd.grad(loss_fn(learner(xs), ys), list(learner.parameters()), create_graph=True)
        if how == "maml_update":
            learner = l2l.algorithms.maml.maml_update(learner, LR, grads)
        elif how == "update_module":
            l2l.update_module(learner, updates=[-LR * g for g in grads])
        else:
            l2l.optim.DifferentiableSGD(LR)(learner, grads)
    loss_fn(learner(xq), yq).backward()
    want, _ = reference_meta_grads(kind, 2, False)
    assert_rel([p.grad for p in model.parameters()], want, f"{how} meta-gradient")


def test_update_module_reads_update_attributes_and_skips_none():
    model, (xs, ys, _, _), loss_fn = make("mlp")
    learner = l2l.clone_module(model)
    params = list(learner.parameters())
    params[0].update = torch.ones_like(params[0])
    l2l.update_module(learner)
    assert torch.equal(learner[0].weight, model[0].weight + 1)
    assert learner[0].bias is model[0].bias and params[0].update is None
    with pytest.warns(UserWarning, match="6 parameters but 1 gradients"):
        l2l.algorithms.maml.maml_update(learner, LR, [torch.zeros_like(params[0])])


def test_detach_module_leaves_the_model_alone():
    model, (xs, ys, _, _), loss_fn = make("mlp")
    learner = l2l.clone_module(model)
    l2l.detach_module(learner, keep_requires_grad=True)
    assert all(p.requires_grad and p.grad_fn is None for p in learner.parameters())
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in model.parameters())
    loss_fn(learner(xs), ys).backward()
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("first_order", [False, True])
def test_gbml_with_a_scale_transform_is_metasgd(first_order):
    """GBML(transform=Scale) takes p - lr * alpha * g: the meta-gradient of params and alphas
    equals the unrolled loop's."""
    model, task, loss_fn = make("mlp")
    xs, ys, xq, yq = task
    shapes = [p.shape for p in model.parameters()]
    gbml = l2l.algorithms.GBML(model, transform=lambda p: l2l.nn.Scale(p.shape, alpha=0.5).to(DT), lr=LR,
                               first_order=first_order)
    learner = gbml.clone()
    for _ in range(2):
        learner.adapt(loss_fn(learner(xs), ys))
    loss_fn(learner(xq), yq).backward()
    alphas = list(gbml.compute_update.parameters())
    assert [a.shape for a in alphas] == shapes
    got = [p.grad for p in model.parameters()] + [a.grad for a in alphas]

    ref_model, _, _ = make("mlp")
    theta = list(ref_model.parameters())
    ref_alphas = [torch.full(s, 0.5, dtype=DT, requires_grad=True) for s in shapes]
    step = lambda ps, gs, state: [p - LR * (a * g) for p, a, g in zip(ps, ref_alphas, gs)]  # noqa: E731
    qloss, _ = unrolled(ref_model, theta, task, loss_fn, 2, first_order, step)
    if first_order:  # the update keeps its graph to the alphas (learn2learn: create_graph=adapt_transform)
        step_grads = torch.autograd.grad(qloss, theta + ref_alphas, allow_unused=True)
        got, want = got[:len(theta)], list(step_grads[:len(theta)])
    else:
        want = list(torch.autograd.grad(qloss, theta + ref_alphas))
    assert_rel(got, want, "GBML meta-gradient (params, then alphas)")


def test_gbml_adapt_transform_steps_the_transform():
    model, (xs, ys, xq, yq), loss_fn = make("mlp")
    gbml = l2l.algorithms.GBML(model, transform=lambda p: l2l.nn.Scale(p.shape).to(DT), lr=LR, adapt_transform=True)
    learner = gbml.clone()
    before = [a.detach().clone() for a in learner.compute_update.parameters()]
    learner.adapt(loss_fn(learner(xs), ys))
    learner.adapt(loss_fn(learner(xs), ys))
    after = list(learner.compute_update.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    loss_fn(learner(xq), yq).backward()
    assert all(a.grad is not None for a in gbml.compute_update.parameters())


def test_parameter_update_with_module_transform():
    model = nn.Linear(3, 2)
    update = l2l.optim.ParameterUpdate(model.parameters(), l2l.optim.ModuleTransform(nn.Linear))
    x = torch.randn(4, 3)
    ups = update(model(x).pow(2).sum(), model.parameters(), create_graph=True)
    grads = torch.autograd.grad(model(x).pow(2).sum(), list(model.parameters()))
    for u, g, t in zip(ups, grads, update.transforms_modules):
        assert_rel([u], [t.transform(g.reshape(1, -1)).reshape(g.shape)], "transformed gradient")
    with pytest.raises(ValueError, match=r"transform\(parameters\[0\]\) must return an nn.Module"):
        l2l.optim.ParameterUpdate(model.parameters(), lambda p: 3)


def test_nn_parts_and_no_silent_torch_nn():
    assert l2l.nn.Lambda(lambda x: x * 2)(torch.ones(2)).tolist() == [2.0, 2.0]
    assert l2l.nn.Flatten()(torch.ones(2, 3, 4)).shape == (2, 12)
    assert l2l.nn.Scale(3, alpha=0.5)(torch.ones(3)).tolist() == [0.5, 0.5, 0.5]
    lin = l2l.nn.freeze(nn.Linear(2, 2))
    assert not any(p.requires_grad for p in lin.parameters())
    assert all(p.requires_grad for p in l2l.nn.unfreeze(lin).parameters())
    with pytest.raises(AttributeError, match="compat.learn2learn.nn has no 'Linear'"):
        l2l.nn.Linear  # noqa: B018
    for part, missing in ((l2l.optim, "TransformDictionary"), (l2l.data, "UnionMetaDataset"),
                          (l2l.algorithms, "MAMLpp")):
        with pytest.raises(AttributeError, match=f"has no '{missing}': it provides"):
            getattr(part, missing)


# ---- data ----------------------------------------------------------------------------------------
def toy_dataset(classes=6, per_class=4):
    x = torch.arange(classes * per_class, dtype=torch.float32).unsqueeze(1)
    y = torch.arange(classes).repeat_interleave(per_class)
    return TensorDataset(x, y)


class ItemsOnly(torch.utils.data.Dataset):
    """The same items without a label tensor: MetaDataset reads every item."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        return self.base[i]


def test_meta_dataset_bookkeeping_from_tensor_or_items():
    fast, slow = l2l.data.MetaDataset(toy_dataset()), l2l.data.MetaDataset(ItemsOnly(toy_dataset()))
    assert fast.labels_to_indices == slow.labels_to_indices and fast.indices_to_labels == slow.indices_to_labels
    assert fast.labels_to_indices[2] == [8, 9, 10, 11] and len(fast) == 24
    sub = l2l.data.FilteredMetaDataset(fast, [4, 1])
    assert sub.labels == [4, 1] and len(sub) == 8 and int(sub[0][1]) == 4
    with pytest.raises(TypeError, match="must be a torch.utils.data.Dataset"):
        l2l.data.MetaDataset([1, 2])
    with pytest.raises(ValueError, match=r"labels \[9\] are not in the dataset"):
        l2l.data.FilteredMetaDataset(fast, [9])


@pytest.mark.parametrize("fused", [False, True])
def test_taskset_draws_n_ways_k_shots_with_remapped_consecutive_labels(fused):
    from fastmaml.compat.learn2learn.data.transforms import (
        ConsecutiveLabels,
        FusedNWaysKShots,
        KShots,
        LoadData,
        NWays,
        RemapLabels,
    )

    meta = l2l.data.MetaDataset(toy_dataset())
    pick = [FusedNWaysKShots(meta, n=3, k=2)] if fused else [NWays(meta, 3), KShots(meta, 2)]
    tasks = l2l.data.Taskset(meta, pick + [LoadData(meta), RemapLabels(meta), ConsecutiveLabels(meta)], num_tasks=5)
    random.seed(0)
    for _ in range(10):
        x, y = tasks.sample()
        assert x.shape == (6, 1) and sorted(y.tolist()) == [0, 0, 1, 1, 2, 2]
        original = (x.squeeze(1) // 4).long()  # the toy item's class
        assert len(set(original.tolist())) == 3 and original.tolist() == sorted(original.tolist())
        for label in range(3):  # one original class per new label
            assert len(set(original[y == label].tolist())) == 1
    x0, y0 = tasks[0]
    x1, y1 = tasks[0]
    assert torch.equal(x0, x1) and torch.equal(y0, y1), "a fixed task is the same on every access"
    assert len(tasks) == 5 and len(list(tasks)) == 5


def test_task_transform_errors_name_the_argument():
    from fastmaml.compat.learn2learn.data.transforms import KShots, NWays

    meta = l2l.data.MetaDataset(toy_dataset(classes=3, per_class=2))
    with pytest.raises(ValueError, match="n=4 ways but the dataset has only 3 labels"):
        NWays(meta, 4)(None)
    with pytest.raises(ValueError, match="k=3 samples per label but label 0 has only 2"):
        KShots(meta, 3)(None)
    with pytest.raises(ValueError, match="k must be a positive int, got 0"):
        KShots(meta, 0)
    with pytest.raises(ValueError, match="num_tasks must be -1"):
        l2l.data.Taskset(meta, num_tasks=0)
    with pytest.warns(DeprecationWarning, match="use Taskset"):
        l2l.data.TaskDataset(meta)


# ---- vision --------------------------------------------------------------------------------------
@pytest.mark.parametrize("make_model, shape, n_params", [
    (lambda: l2l.vision.models.OmniglotFC(28 ** 2, 5), (2, 1, 28, 28), 18),
    (lambda: l2l.vision.models.OmniglotCNN(5), (2, 1, 28, 28), 18),
    (lambda: l2l.vision.models.MiniImagenetCNN(5), (2, 3, 84, 84), 18),
])
def test_models_run_and_keep_learn2learns_parameter_names(make_model, shape, n_params):
    model = make_model()
    assert model(torch.randn(shape)).shape == (2, 5)
    names = [n for n, _ in model.named_parameters()]
    assert len(names) == n_params and names[-1] == "classifier.bias"
    assert any(n.endswith(("linear.weight", "conv.weight")) for n in names)
    assert all(n.startswith(("features.", "base.", "classifier.")) for n in names)


def test_get_tasksets_omniglot_splits_classes_apart(monkeypatch):
    root = find_omniglot()
    if root is None:
        pytest.skip("Omniglot small splits not found in $FASTMAML_DATA or ../shared/data/omniglot")
    random.seed(0)
    sets = l2l.vision.benchmarks.get_tasksets("omniglot", train_ways=5, train_samples=2, test_ways=3,
                                              test_samples=4, root=str(root))
    labels = [set(s.dataset.labels) for s in sets]
    assert [len(s) for s in labels] == [164, 15, 63]  # 242 characters in 1100/100/423 proportions
    assert not (labels[0] & labels[1]) and not (labels[0] & labels[2]) and not (labels[1] & labels[2])
    x, y = sets.train.sample()
    assert x.shape == (10, 1, 28, 28) and set(y.tolist()) == set(range(5))
    assert (y.view(5, 2) == y.view(5, 2)[:, :1]).all(), "each class's images are consecutive"
    x, y = sets.test.sample()
    assert x.shape == (12, 1, 28, 28) and 0 <= float(x.min()) and float(x.max()) <= 1


def test_get_tasksets_errors_name_what_to_pass(tmp_path):
    with pytest.raises(Exception, match="no Omniglot images under .* pass root="):
        l2l.vision.benchmarks.get_tasksets("omniglot", root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="pass root= the folder holding learn2learn's mini-imagenet-cache"):
        l2l.vision.benchmarks.get_tasksets("mini-imagenet", root=str(tmp_path))
    with pytest.raises(ValueError, match="no loader for fc100"):
        l2l.vision.benchmarks.get_tasksets("fc100")
    with pytest.raises(ValueError, match="unknown benchmark 'nope'"):
        l2l.vision.benchmarks.get_tasksets("nope")


def test_mini_imagenet_cache_files_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "mini-imagenet-cache-train.pkl", "wb") as f:
        pickle.dump({"image_data": Evil(), "class_dict": {}}, f)
    with pytest.raises(pickle.UnpicklingError, match="refusing builtins.print"):
        l2l.vision.datasets.MiniImagenet(tmp_path)
    images = np.zeros((4, 84, 84, 3), dtype=np.uint8)
    images[2:] = 7
    with open(tmp_path / "mini-imagenet-cache-test.pkl", "wb") as f:
        pickle.dump({"image_data": images, "class_dict": {"b": [2, 3], "a": [0, 1]}}, f)
    data = l2l.vision.datasets.MiniImagenet(tmp_path, mode="test")
    x, y = data[2]
    assert x.shape == (3, 84, 84) and x.dtype == torch.float32 and float(x.max()) == 7 and y == 0


def test_learnable_optimizer_gives_the_transform_its_hypergradient():
    """Two steps of p <- p - lr * a * g on a linear model; after the second loss's backward, the
    rates a hold d loss_2 / d a = dloss_2/dp_2 * (-lr * g_1), with g_1 the gradient before step 2."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1).to(DT)
    x, y = torch.randn(8, 3, dtype=DT), torch.randn(8, 1, dtype=DT)
    metaopt = l2l.optim.LearnableOptimizer(model, lambda p: l2l.nn.Scale(p.shape, alpha=0.5).to(DT), lr=0.1)
    loss = lambda: ((model(x) - y) ** 2).mean()  # noqa: E731
    theta = [p.detach().clone() for p in model.parameters()]

    def grad_at(ps):
        w, b = (q.clone().requires_grad_() for q in ps)
        return [g.detach() for g in torch.autograd.grad((((x @ w.t() + b) - y) ** 2).mean(), [w, b])]

    loss().backward()
    metaopt.step()
    g0 = grad_at(theta)
    p1 = [p - 0.1 * 0.5 * g for p, g in zip(theta, g0)]
    assert_rel([p.detach() for p in model.parameters()], p1, "parameters after step 1")
    metaopt.zero_grad()
    loss().backward()  # the rates' gradient through step 1
    g1 = grad_at(p1)
    assert_rel([a.grad for a in metaopt.parameters()], [-0.1 * g * h for g, h in zip(g1, g0)], "hypergradient")
    metaopt.step()
    p2 = [p - 0.1 * 0.5 * g for p, g in zip(p1, g1)]
    assert_rel([p.detach() for p in model.parameters()], p2, "parameters after step 2")


def test_kronecker_transform_is_left_grad_right():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3).to(DT)
    transform = l2l.optim.KroneckerTransform(l2l.nn.KroneckerLinear, psd=False)(conv.weight).to(DT)
    k = transform.transform
    assert (k.left.shape, k.right.shape) == ((3, 3), (9, 9))
    g = torch.randn_like(conv.weight)
    assert_rel([transform(g)], [g], "identity at initialisation")
    with torch.no_grad():
        k.left.copy_(torch.randn(3, 3, dtype=DT))
        k.right.copy_(torch.randn(9, 9, dtype=DT))
    want = (k.left @ g.reshape(4, 3, 9) @ k.right).reshape(g.shape)
    assert_rel([transform(g)], [want], "L G R per output channel")
    with pytest.raises(ValueError, match=r"last two dimensions must be \(n, m\) = \(3, 9\)"):
        k(torch.randn(2, 3, dtype=DT))


def test_model_state_dict_keys_are_learn2learns():
    """The keys learn2learn 0.2.0's models have (read from its cnn4.py), so checkpoints load either way."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    fc = l2l.vision.models.OmniglotFC(28 ** 2, 5, sizes=[8, 8])
    assert list(fc.state_dict()) == [f"features.1.{i}.{part}" for i in range(2) for part in
                                     ["normalize.weight", "normalize.bias", "linear.weight", "linear.bias"]] + \
        ["classifier.weight", "classifier.bias"]  # BatchNorm1d without running statistics
    cnn = l2l.vision.models.MiniImagenetCNN(5, hidden_size=4)
    assert list(cnn.state_dict()) == [f"features.{i}.{part}" for i in range(4) for part in
                                      [f"normalize.{b}" for b in bn] + ["conv.weight", "conv.bias"]] + \
        ["classifier.weight", "classifier.bias"]
    omni = l2l.vision.models.OmniglotCNN(5, hidden_size=4, layers=2)
    assert list(omni.state_dict())[:7] == [f"base.0.normalize.{b}" for b in bn] + ["base.0.conv.weight", "base.0.conv.bias"]
