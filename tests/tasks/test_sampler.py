"""FewShotSampler: shapes, label layout, seeding, splits and the error messages."""

import pytest
import torch

from fastmaml.tasks import FewShotSampler, SamplerError, split_by_group, split_classes


def toy(classes=10, per_class=6, dim=3):
    labels = torch.arange(classes).repeat_interleave(per_class)
    # every image encodes its class and index, so we can check where it came from
    images = torch.stack([labels.float(), torch.arange(labels.numel()).float(), torch.zeros(labels.numel())], 1)
    return images[:, :dim], labels


def test_shapes_and_labels():
    images, labels = toy()
    s = FewShotSampler(images, labels, n_way=4, k_shot=2, q_query=3, seed=1)
    b = s.sample(5)
    assert b.support_x.shape == (5, 8, 3) and b.support_y.shape == (5, 8)
    assert b.query_x.shape == (5, 12, 3) and b.query_y.shape == (5, 12)
    assert b.support_y.dtype == torch.int64
    for t in range(5):
        assert b.classes[t].unique().numel() == 4
        for x, y in ((b.support_x[t], b.support_y[t]), (b.query_x[t], b.query_y[t])):
            # the task label maps to one dataset class, consistently across support and query
            assert torch.equal(x[:, 0].long(), b.classes[t][y])
        used = torch.cat([b.support_x[t, :, 1], b.query_x[t, :, 1]])
        assert used.unique().numel() == used.numel()  # support and query images are distinct


def test_seeded_and_resumable():
    images, labels = toy()
    a = FewShotSampler(images, labels, 3, 1, 2, seed=7)
    b = FewShotSampler(images, labels, 3, 1, 2, seed=7)
    assert all(torch.equal(u, v) for u, v in zip(a.sample(4).tensors(), b.sample(4).tensors()))
    state = a.state_dict()
    first = a.sample(4).tensors()
    a.load_state_dict(state)
    assert all(torch.equal(u, v) for u, v in zip(first, a.sample(4).tensors()))
    c = FewShotSampler(images, labels, 3, 1, 2, seed=8)
    assert not torch.equal(c.sample(4).support_x, b.sample(4).support_x)


def test_uneven_classes_and_class_subset():
    labels = torch.tensor([0] * 3 + [1] * 5 + [2] * 4 + [3] * 9)
    images = torch.arange(labels.numel()).float().unsqueeze(1)
    s = FewShotSampler(images, labels, n_way=2, k_shot=1, q_query=2, classes=[1, 3], seed=0)
    b = s.sample(20)
    assert set(b.classes.flatten().tolist()) == {1, 3}
    got = labels[torch.cat([b.support_x, b.query_x], 1).long().flatten()]
    assert set(got.tolist()) <= {1, 3}


def test_errors_name_the_problem():
    images, labels = toy(classes=5, per_class=4)
    with pytest.raises(SamplerError, match="20-way tasks need 20 classes but only 5"):
        FewShotSampler(images, labels, 20, 1, 1)
    with pytest.raises(SamplerError, match=r"K\+Q = 2\+3 = 5 .* only 4 images"):
        FewShotSampler(images, labels, 2, 2, 3)
    with pytest.raises(SamplerError, match="no images"):
        FewShotSampler(images, labels, 2, 1, 1, classes=[0, 99])
    with pytest.raises(ValueError, match="k_shot"):
        FewShotSampler(images, labels, 2, 0, 1)
    with pytest.raises(ValueError, match="one label per image"):
        FewShotSampler(images, labels[:-1], 2, 1, 1)


def test_splits():
    parts = split_classes(range(20), (0.6, 0.2, 0.2), seed=3)
    assert [len(p) for p in parts.values()] == [12, 4, 4]
    assert torch.cat(list(parts.values())).sort().values.tolist() == list(range(20))
    assert torch.equal(parts["train"], split_classes(range(20), (0.6, 0.2, 0.2), seed=3)["train"])
    groups = ["a", "a", "b", "c", "c"]
    by = split_by_group(groups, {"train": ["a", "c"], "test": ["b"]})
    assert by["train"].tolist() == [0, 1, 3, 4] and by["test"].tolist() == [2]
    with pytest.raises(SamplerError, match="both"):
        split_by_group(groups, {"train": ["a"], "test": ["a"]})
    with pytest.raises(SamplerError, match="no classes in groups"):
        split_by_group(groups, {"train": ["z"]})
