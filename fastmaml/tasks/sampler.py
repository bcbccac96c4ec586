"""N-way K-shot episodes from any labeled dataset.

    sampler = FewShotSampler(images, labels, n_way=5, k_shot=1, q_query=15, seed=0)
    batch = sampler.sample(32)                         # 32 tasks
    batch.support_x  # [32, N*K, ...]   batch.support_y  # [32, N*K] in 0..N-1
    batch.query_x    # [32, N*Q, ...]   batch.query_y    # [32, N*Q]
    learner.meta_loss(*batch.tensors(), F.cross_entropy)

Each task draws N distinct classes, assigns them the labels 0..N-1 in random order, and draws K+Q
distinct images of each class (K support, Q query); an optional `transform(images, generator)`
(e.g. fastmaml.tasks.augment.RandomAffine) then augments every drawn image. All randomness comes
from the sampler's own torch.Generator, whose state `state_dict()` saves, so a resumed run sees the
same tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from fastmaml.checks import check_int


class SamplerError(ValueError):
    """The episode cannot be drawn from the data (too few classes or images per class)."""


class TaskBatch(Protocol):
    """A batch of tasks as the trainer and the evaluation read it (FewShotBatch, SineBatch)."""

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]: ...


class TaskSource(Protocol):
    """A source of task batches (FewShotSampler, SineTasks): `sample(T)` draws T tasks."""

    def sample(self, num_tasks: int) -> TaskBatch: ...


@dataclass
class FewShotBatch:
    """A batch of few-shot episodes (as `FewShotSampler.sample` returns).

    Attributes:
        support_x: [T, n_way * k_shot, ...] support images.
        support_y: [T, n_way * k_shot] labels 0..n_way-1.
        query_x: [T, n_way * q_query, ...] query images.
        query_y: [T, n_way * q_query] labels.
        classes: [T, n_way] the dataset classes of each task, in label order.
    """
    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    classes: Tensor  # [tasks, N]: the dataset class behind each task label

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.support_x, self.support_y, self.query_x, self.query_y


class FewShotSampler:
    """Episodes over `classes` (default: every label present) of a dataset of `images` [M, ...]
    with integer `labels` [M].

    Args:
        images: [N, ...] the examples.
        labels: [N] their integer classes.
        n_way: classes per task.
        k_shot: support examples per class.
        q_query: query examples per class.
        classes: the classes to draw from (default: every label present).
        seed: the generator's seed (None: random).
        device: where batches go (None: with images).
        name: the data's name in error messages.
        transform: (images, generator) -> images, applied per task (e.g. augmentation).
    """

    def __init__(self, images: Tensor, labels: Tensor, n_way: int, k_shot: int, q_query: int,
                 classes: Sequence[int] | Tensor | None = None, seed: int | None = 0,
                 device: str | torch.device | None = None, name: str = "data",
                 transform: Callable[[Tensor, torch.Generator], Tensor] | None = None):
        if not isinstance(images, Tensor) or not isinstance(labels, Tensor):
            raise TypeError("images and labels must be tensors")
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must be 1-d with one label per image: images {list(images.shape)}, "
                             f"labels {list(labels.shape)}")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError(f"labels must be integers, got {labels.dtype}")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be a callable (images, generator) -> images, got {transform!r}")
        self.transform = transform
        self.n_way = check_int(n_way, "n_way", 1)
        self.k_shot = check_int(k_shot, "k_shot", 1)
        self.q_query = check_int(q_query, "q_query", 0)
        self.name = name
        self.images = images if device is None else images.to(device)
        labels = labels.cpu()
        present = torch.unique(labels)
        if classes is None:
            classes = present
        classes = torch.as_tensor(classes, dtype=torch.int64).flatten()
        missing = classes[~torch.isin(classes, present)]
        if missing.numel():
            raise SamplerError(f"{name}: classes {missing.tolist()[:10]} have no images")
        self.classes = torch.unique(classes)
        if self.classes.numel() < self.n_way:
            raise SamplerError(f"{name}: {self.n_way}-way tasks need {self.n_way} classes but only "
                               f"{self.classes.numel()} are available")
        counts = torch.stack([(labels == c).sum() for c in self.classes])
        need = self.k_shot + self.q_query
        if int(counts.min()) < need:
            worst = int(self.classes[counts.argmin()])
            raise SamplerError(f"{name}: K+Q = {self.k_shot}+{self.q_query} = {need} images per class needed but "
                               f"class {worst} has only {int(counts.min())} images")
        # table[c, j]: index of the j-th image of class c; short classes are padded with -1
        order = torch.argsort(labels, stable=True)
        width = int(counts.max())
        self._table = torch.full((self.classes.numel(), width), -1, dtype=torch.int64)
        for i, c in enumerate(self.classes.tolist()):
            idx = order[labels[order] == c]
            self._table[i, : idx.numel()] = idx
        self._counts = counts
        self.seed = seed
        self.generator = torch.Generator().manual_seed(torch.seed() if seed is None else seed)

    @property
    def num_classes(self) -> int:
        return self.classes.numel()

    def __repr__(self) -> str:
        aug = f", {self.transform!r}" if self.transform is not None else ""
        return (f"FewShotSampler({self.name}: {self.n_way}-way {self.k_shot}-shot {self.q_query}-query over "
                f"{self.num_classes} classes{aug})")

    def sample(self, num_tasks: int) -> FewShotBatch:
        check_int(num_tasks, "num_tasks", 1)
        n, k, q, g = self.n_way, self.k_shot, self.q_query, self.generator
        # N distinct classes per task: the first N of a random permutation (argsort of uniforms)
        cls = torch.rand(num_tasks, self.num_classes, generator=g).argsort(-1)[:, :n]           # [T, N]
        # K+Q distinct images per class: padded slots get keys > 1 so they sort last
        keys = torch.rand(num_tasks, n, self._table.shape[1], generator=g)
        keys = keys.masked_fill(self._table[cls] < 0, 2.0)
        pick = keys.argsort(-1)[..., : k + q]                                                   # [T, N, K+Q]
        idx = torch.gather(self._table[cls], 2, pick)
        x = self.images[idx.to(self.images.device)]                                            # [T, N, K+Q, ...]
        if self.transform is not None:
            x = self.transform(x, g)
        y = torch.arange(n).view(1, n, 1).expand(num_tasks, n, k + q).to(self.images.device)
        tail = x.shape[3:]
        return FewShotBatch(
            x[:, :, :k].reshape(num_tasks, n * k, *tail), y[:, :, :k].reshape(num_tasks, n * k),
            x[:, :, k:].reshape(num_tasks, n * q, *tail), y[:, :, k:].reshape(num_tasks, n * q),
            self.classes[cls],
        )

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def split_classes(classes: Sequence[int] | Tensor, fractions: Sequence[float] = (0.7, 0.1, 0.2),
                  seed: int = 0, names: Sequence[str] = ("train", "val", "test")) -> dict[str, Tensor]:
    """Disjoint class splits, a seeded random partition in the given proportions (summing to 1).

    Args:
        classes: the classes to split.
        fractions: the splits' proportions, summing to 1.
        seed: the permutation's seed.
        names: the splits' names.
    """
    classes = torch.as_tensor(classes, dtype=torch.int64).flatten()
    if len(fractions) != len(names):
        raise ValueError(f"{len(fractions)} fractions for {len(names)} names {list(names)}")
    if any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be >= 0 and sum to 1, got {list(fractions)}")
    perm = classes[torch.randperm(classes.numel(), generator=torch.Generator().manual_seed(seed))]
    bounds = torch.tensor([0.0, *fractions]).cumsum(0).mul(classes.numel()).round().long().tolist()
    return {name: perm[a:b].sort().values for name, a, b in zip(names, bounds, bounds[1:])}


def split_by_group(groups: Sequence[str], assignment: dict[str, Sequence[str]]) -> dict[str, Tensor]:
    """Class splits by group (e.g. Omniglot alphabets): `groups[c]` is class c's group and
    `assignment` maps split name -> groups; a group named in two splits is an error.

    Args:
        groups: groups[c] is class c's group (e.g. its alphabet).
        assignment: split name -> the groups in it.
    """
    seen: dict[str, str] = {}
    out = {}
    for split, chosen in assignment.items():
        unknown = sorted(set(chosen) - set(groups))
        if unknown:
            raise SamplerError(f"split {split!r}: no classes in groups {unknown}")
        for grp in chosen:
            if grp in seen:
                raise SamplerError(f"group {grp!r} is in both {seen[grp]!r} and {split!r}")
            seen[grp] = split
        out[split] = torch.tensor([c for c, grp in enumerate(groups) if grp in set(chosen)], dtype=torch.int64)
    return out
