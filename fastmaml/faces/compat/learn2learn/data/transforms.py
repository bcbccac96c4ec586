"""learn2learn.data.transforms: the task transforms (each maps a task description to another).

    NWays(dataset, n)          keep the items of n random labels
    KShots(dataset, k)         keep k random items of each label (replacement=True: with replacement)
    FusedNWaysKShots(...)      both at once, drawing only the indices needed
    LoadData(dataset)          load each item as dataset[index]
    RemapLabels(dataset)       relabel the task's labels 0..n-1 (in random order unless shuffle=False)
    ConsecutiveLabels(dataset) order the items by label
    FilterLabels(dataset, l)   keep the items whose label is in l
"""

from __future__ import annotations

import copy
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from fastmaml.faces.compat.learn2learn.data.meta_dataset import MetaDataset
from fastmaml.faces.compat.learn2learn.data.task_dataset import DataDescription

Description = list[DataDescription]  # a task description

__all__ = ["ConsecutiveLabels", "FilterLabels", "FusedNWaysKShots", "KShots", "LoadData", "NWays", "RemapLabels",
           "TaskTransform"]


def _positive(cls: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{cls}: {name} must be a positive int, got {value!r}")
    return value


class TaskTransform:
    """Base class: `new_task()` is the description of the whole dataset; calling a transform with a
    task description (None: the whole dataset) returns the next one.

    Args:
        dataset: the MetaDataset the tasks are drawn from.
    """

    def __init__(self, dataset: MetaDataset) -> None:
        self.dataset = dataset

    def new_task(self) -> Description:
        """The description of the whole dataset: every item, untransformed."""
        return [DataDescription(i) for i in range(len(self.dataset))]

    def _start(self, description: Description | None) -> Description:
        return self.new_task() if description is None else description


class LoadData(TaskTransform):
    """Load each item of the task as `dataset[index]`.

    Args:
        dataset: the MetaDataset the tasks are drawn from.
    """

    def __call__(self, task_description: Description | None) -> Description:
        task_description = self._start(task_description)
        load = self.dataset.__getitem__
        for dd in task_description:
            dd.transforms.append(load)
        return task_description


class FilterLabels(TaskTransform):
    """Keep the items whose label is in `labels`.

    Args:
        dataset: the MetaDataset the tasks are drawn from.
        labels: the labels to keep.
    """

    def __init__(self, dataset: MetaDataset, labels: Iterable[Any]) -> None:
        super().__init__(dataset)
        self.labels = list(labels)
        self._keep = set(self.labels)

    def __call__(self, task_description: Description | None) -> Description:
        task_description = self._start(task_description)
        return [dd for dd in task_description if self.dataset.indices_to_labels[dd.index] in self._keep]


class ConsecutiveLabels(TaskTransform):
    """Order the task's items by label.

    Args:
        dataset: the MetaDataset the tasks are drawn from.
    """

    def __call__(self, task_description: Description | None) -> Description:
        task_description = self._start(task_description)
        return sorted(task_description, key=lambda dd: self.dataset.indices_to_labels[dd.index])


class RemapLabels(TaskTransform):
    """Relabel the task's labels 0..n-1 as its items load.

    Args:
        dataset: the MetaDataset the tasks are drawn from.
        shuffle: the new labels in random order (False: in the order of the sorted labels).
    """

    def __init__(self, dataset: MetaDataset, shuffle: bool = True) -> None:
        super().__init__(dataset)
        self.shuffle = shuffle

    def __call__(self, task_description: Description | None) -> Description:
        task_description = self._start(task_description)
        labels = sorted({self.dataset.indices_to_labels[dd.index] for dd in task_description})
        if self.shuffle:
            random.shuffle(labels)
        mapping = {label: i for i, label in enumerate(labels)}

        def remap(item: Sequence[Any]) -> list[Any]:
            item = list(item)
            item[1] = mapping[item[1].item() if hasattr(item[1], "item") else item[1]]
            return item

        for dd in task_description:
            dd.transforms.append(remap)
        return task_description


def _draw_labels(cls: str, labels: list[Any], n: int) -> list[Any]:
    if n > len(labels):
        raise ValueError(f"{cls}: n={n} ways but the dataset has only {len(labels)} labels")
    return random.sample(labels, k=n)


class NWays(TaskTransform):
    """Keep the items of n random labels.

    Args:
        dataset: the MetaDataset the tasks are drawn from.
        n: the number of labels (ways).
    """

    def __init__(self, dataset: MetaDataset, n: int = 2) -> None:
        super().__init__(dataset)
        self.n = _positive("NWays", "n", n)

    def __call__(self, task_description: Description | None) -> Description:
        if task_description is None:
            chosen = _draw_labels("NWays", self.dataset.labels, self.n)
            return [DataDescription(i) for label in chosen for i in self.dataset.labels_to_indices[label]]
        present = sorted({self.dataset.indices_to_labels[dd.index] for dd in task_description})
        keep = set(_draw_labels("NWays", present, self.n))
        return [dd for dd in task_description if self.dataset.indices_to_labels[dd.index] in keep]


class KShots(TaskTransform):
    """Keep k random items of each label.

    Args:
        dataset: the MetaDataset the tasks are drawn from.
        k: the items per label (shots).
        replacement: draw with replacement (a label may then have fewer than k items).
    """

    def __init__(self, dataset: MetaDataset, k: int = 1, replacement: bool = False) -> None:
        super().__init__(dataset)
        self.k = _positive("KShots", "k", k)
        self.replacement = replacement

    def __call__(self, task_description: Description | None) -> Description:
        task_description = self._start(task_description)
        by_label: defaultdict[Any, Description] = defaultdict(list)
        for dd in task_description:
            by_label[self.dataset.indices_to_labels[dd.index]].append(dd)
        out: Description = []
        for label, dds in by_label.items():
            if self.replacement:
                out += [copy.deepcopy(dd) for dd in random.choices(dds, k=self.k)]
            elif self.k > len(dds):
                raise ValueError(f"KShots: k={self.k} samples per label but label {label!r} has only {len(dds)} "
                                 "(pass replacement=True to draw with replacement)")
            else:
                out += random.sample(dds, k=self.k)
        return out


class FusedNWaysKShots(TaskTransform):
    """NWays then KShots (over `filter_labels`, default all), drawing only the chosen indices.

    Args:
        dataset: the MetaDataset the tasks are drawn from.
        n: the number of labels (ways).
        k: the items per label (shots).
        replacement: draw the items with replacement.
        filter_labels: the labels to draw from (None: all).
    """

    def __init__(self, dataset: MetaDataset, n: int = 2, k: int = 1, replacement: bool = False,
                 filter_labels: Iterable[Any] | None = None) -> None:
        super().__init__(dataset)
        self.n = _positive("FusedNWaysKShots", "n", n)
        self.k = _positive("FusedNWaysKShots", "k", k)
        self.replacement = replacement
        self.filter_labels = list(dataset.labels if filter_labels is None else filter_labels)
        self._chain: tuple[FilterLabels, NWays, KShots] = (FilterLabels(dataset, self.filter_labels), NWays(dataset, n), KShots(dataset, k, replacement))

    def __call__(self, task_description: Description | None) -> Description:
        if task_description is not None:
            for transform in self._chain:
                task_description = transform(task_description)
            return task_description
        out: Description = []
        for label in _draw_labels("FusedNWaysKShots", self.filter_labels, self.n):
            indices = self.dataset.labels_to_indices[label]
            if self.replacement:
                picked = random.choices(indices, k=self.k)
            elif self.k > len(indices):
                raise ValueError(f"FusedNWaysKShots: k={self.k} samples per label but label {label!r} has only "
                                 f"{len(indices)} (pass replacement=True to draw with replacement)")
            else:
                picked = random.sample(indices, k=self.k)
            out += [DataDescription(i) for i in picked]
        return out
