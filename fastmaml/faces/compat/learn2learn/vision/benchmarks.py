"""learn2learn.vision.benchmarks: get_tasksets(name, ...) -> (train, validation, test) Tasksets. ::

    "omniglot"       fastmaml's Omniglot loader on `root` (the official full sets, or the two small
                     background splits); characters split at random (`random.shuffle`) in
                     learn2learn's proportions 1100 / 100 / 423 of 1623; each task's classes get
                     a random rotation of 0/90/180/270 degrees.
    "mini-imagenet"  learn2learn's cache files in `root` (see vision.datasets.MiniImagenet).

Unlike learn2learn 0.2.0's omniglot benchmark, whose task transforms draw from all 1623 classes
whatever the split, each taskset here draws only from its own split's classes.
"""

from __future__ import annotations

import os
import random
from collections import namedtuple
from collections.abc import Callable, KeysView
from typing import Any

import torch

from fastmaml.faces.compat.learn2learn.data import FilteredMetaDataset, MetaDataset, Taskset
from fastmaml.faces.compat.learn2learn.data.task_dataset import TaskTransformFn
from fastmaml.faces.compat.learn2learn.data.transforms import (
    ConsecutiveLabels,
    FusedNWaysKShots,
    KShots,
    LoadData,
    NWays,
    RemapLabels,
)
from fastmaml.faces.compat.learn2learn.vision.datasets import FullOmniglot, MiniImagenet
from fastmaml.faces.compat.learn2learn.vision.transforms import RandomClassRotation

__all__ = ["BenchmarkTasksets", "get_tasksets", "list_tasksets"]

BenchmarkTasksets = namedtuple("BenchmarkTasksets", ("train", "validation", "test"))
BenchmarkTasksets.__doc__ = """The (train, validation, test) Tasksets of a benchmark, as `get_tasksets` returns them.

Attributes:
    train: the training Taskset.
    validation: the validation Taskset.
    test: the test Taskset.
"""

# each split's dataset and its chain of task transforms
Splits = tuple[list[MetaDataset], list[list[TaskTransformFn]]]

NOT_SHIPPED = ("tiered-imagenet", "fc100", "cifarfs")


def omniglot_tasksets(train_ways: int, train_samples: int, test_ways: int, test_samples: int, root: str,
                      device: str | torch.device | None = None, **kwargs: Any) -> Splits:
    data = FullOmniglot(root, cache_dir=kwargs.get("cache_dir"))
    if device is not None:
        data.to(device)
    dataset = MetaDataset(data)
    classes = list(dataset.labels)
    random.shuffle(classes)
    n_train = round(len(classes) * 1100 / 1623)
    n_valid = max(1, round(len(classes) * 100 / 1623))
    splits = (classes[:n_train], classes[n_train:n_train + n_valid], classes[n_train + n_valid:])
    datasets: list[MetaDataset] = []
    transforms: list[list[TaskTransformFn]] = []
    for labels, ways, samples in zip(splits, (train_ways, test_ways, test_ways),
                                     (train_samples, test_samples, test_samples)):
        part = FilteredMetaDataset(dataset, labels)
        datasets.append(part)
        transforms.append([FusedNWaysKShots(part, n=ways, k=samples), LoadData(part), RemapLabels(part),
                           ConsecutiveLabels(part), RandomClassRotation(part, [0.0, 90.0, 180.0, 270.0])])
    return datasets, transforms


def mini_imagenet_tasksets(train_ways: int = 5, train_samples: int = 10, test_ways: int = 5, test_samples: int = 10,
                           root: str = "~/data", data_augmentation: str | None = None,
                           device: str | torch.device | None = None, **kwargs: Any) -> Splits:
    if data_augmentation not in (None, "normalize"):
        raise ValueError(f"get_tasksets('mini-imagenet'): data_augmentation must be None or 'normalize' here, got "
                         f"{data_augmentation!r} (learn2learn's 'lee2019' needs torchvision: use learn2learn)")
    scale = (lambda x: x / 255.0) if data_augmentation == "normalize" else None
    datasets: list[MetaDataset] = []
    transforms: list[list[TaskTransformFn]] = []
    for mode, ways, samples in (("train", train_ways, train_samples), ("validation", test_ways, test_samples),
                                ("test", test_ways, test_samples)):
        data = MiniImagenet(root, mode=mode, transform=scale)
        if device is not None:
            data.to(device)
        meta = MetaDataset(data)
        datasets.append(meta)
        transforms.append([NWays(meta, ways), KShots(meta, samples), LoadData(meta), RemapLabels(meta),
                           ConsecutiveLabels(meta)])
    return datasets, transforms


_TASKSETS: dict[str, Callable[..., Splits]] = {"omniglot": omniglot_tasksets, "mini-imagenet": mini_imagenet_tasksets}


def list_tasksets() -> KeysView[str]:
    """The benchmark names get_tasksets knows."""
    return _TASKSETS.keys()


def get_tasksets(name: str, train_ways: int = 5, train_samples: int = 10, test_ways: int = 5,
                 test_samples: int = 10, num_tasks: int = -1, root: str = "~/data",
                 device: str | torch.device | None = None, **kwargs: Any) -> BenchmarkTasksets:
    """(train, validation, test) Tasksets of `name`: tasks of `*_ways` classes with `*_samples`
    images each (the caller splits them into adaptation and evaluation halves), `num_tasks`
    fixed tasks per set or -1 for a fresh task on every draw, data read from `root`, tensors on
    `device` if given.

    Args:
        name: the benchmark: "omniglot" or "mini-imagenet" (see `list_tasksets`).
        train_ways: classes per training task.
        train_samples: examples per class in a training task (support + query).
        test_ways: classes per validation/test task.
        test_samples: examples per class in a validation/test task.
        num_tasks: > 0: a fixed set of tasks per split; -1: new tasks every draw.
        root: where the data are (Omniglot: fastmaml's data folder; mini-ImageNet: learn2learn's
            cache files).
        device: where the data are loaded to (None: the CPU).
    """
    if name in NOT_SHIPPED:
        raise ValueError(f"get_tasksets({name!r}): fastmaml.compat.learn2learn has no loader for {name}; build the "
                         "tasksets from your own copy with l2l.data.MetaDataset(dataset) and l2l.data.Taskset(meta, "
                         "[NWays(meta, n), KShots(meta, k), LoadData(meta), RemapLabels(meta)]), or use learn2learn")
    if name not in _TASKSETS:
        raise ValueError(f"get_tasksets: unknown benchmark {name!r}; the benchmarks are {list(_TASKSETS)}")
    datasets, transforms = _TASKSETS[name](train_ways=train_ways, train_samples=train_samples, test_ways=test_ways,
                                           test_samples=test_samples, root=os.path.expanduser(root), device=device,
                                           **kwargs)
    return BenchmarkTasksets(*(Taskset(d, task_transforms=t, num_tasks=num_tasks)
                               for d, t in zip(datasets, transforms)))
