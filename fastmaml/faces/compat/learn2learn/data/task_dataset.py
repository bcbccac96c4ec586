"""learn2learn.data.Taskset (and its old name TaskDataset): tasks drawn by a chain of task
transforms over a MetaDataset.

A task description is a list of DataDescription(index, transforms); each task transform takes
one (None at the start of the chain) and returns another. `get_task` then loads every item
through its transforms and collates them (torch's default_collate: [data, labels]). Randomness
comes from Python's `random` module, as in learn2learn, so `random.seed` makes runs repeatable.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Sequence
from typing import Any, cast

from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate

from fastmaml.faces.compat.learn2learn.data.meta_dataset import MetaDataset

__all__ = ["DataDescription", "TaskDataset", "Taskset"]

# a task transform: a task description -> another (the first of a chain gets None; some, e.g.
# vision's RandomClassRotation, only take a description)
TaskTransformFn = Callable[[Any], "list[DataDescription]"]


class DataDescription:
    """One item of a task: its index in the dataset and the transforms to load it with.

    Args:
        index: the item's index in the dataset.
    """

    __slots__ = ("index", "transforms")

    def __init__(self, index: int) -> None:
        self.index = index
        self.transforms: list[Callable[[Any], Any]] = []


class Taskset:
    """Tasks over `dataset`: `sample()` draws one; with num_tasks > 0, `taskset[i]` is task i,
    drawn once and then fixed (its description, transforms included, is kept), and iteration yields the
    num_tasks tasks; with num_tasks=-1 every access draws a new one.

    Args:
        dataset: a MetaDataset.
        task_transforms: the task transforms (NWays, KShots, LoadData, RemapLabels, ...), applied in
            order.
        num_tasks: > 0: a fixed set of tasks, `taskset[i]` is task i; -1: a new task every draw.
        task_collate: collates a task's items (None: stack data and labels).
    """

    def __init__(self, dataset: Dataset, task_transforms: Sequence[TaskTransformFn] | TaskTransformFn | None = None,
                 num_tasks: int = -1, task_collate: Callable[[list[Any]], Any] | None = None) -> None:
        if not isinstance(dataset, MetaDataset):
            dataset = MetaDataset(dataset)
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < -1 or num_tasks == 0:
            raise ValueError(f"Taskset: num_tasks must be -1 (no limit) or a positive int, got {num_tasks!r}")
        self.dataset = dataset
        self.task_transforms: Sequence[TaskTransformFn] | TaskTransformFn = (
            [] if task_transforms is None else task_transforms)
        self.num_tasks = num_tasks
        self.task_collate = default_collate if task_collate is None else task_collate
        self.sampled_descriptions: dict[int, list[DataDescription] | None] = {}
        self._task_id = 0

    def sample_task_description(self) -> list[DataDescription] | None:
        """A new task description: the task transforms applied in order, starting from None."""
        if callable(self.task_transforms):
            return self.task_transforms(None)
        description = None
        for transform in self.task_transforms:
            description = transform(description)
        return description

    def get_task(self, task_description: Sequence[DataDescription] | None) -> Any:
        """Load every item of `task_description` through its transforms and collate them.

        Args:
            task_description: the task's items (None, from an empty chain of task transforms, fails
                here as in learn2learn).
        """
        items = []
        for dd in cast("Sequence[DataDescription]", task_description):
            item = dd.index
            for transform in dd.transforms:
                item = transform(item)
            items.append(item)
        return self.task_collate(items)

    def sample(self) -> Any:
        """One task (with num_tasks > 0, one of the fixed ones at random)."""
        return self[random.randint(0, len(self) - 1)]

    def __len__(self) -> int:
        return 1 if self.num_tasks == -1 else self.num_tasks

    def __getitem__(self, i: int) -> Any:
        if self.num_tasks == -1:
            return self.get_task(self.sample_task_description())
        if not 0 <= i < self.num_tasks:
            raise IndexError(f"Taskset: task {i} out of range (num_tasks={self.num_tasks})")
        if i not in self.sampled_descriptions:
            self.sampled_descriptions[i] = self.sample_task_description()
        return self.get_task(self.sampled_descriptions[i])

    def __iter__(self) -> Taskset:
        self._task_id = 0
        return self

    def __next__(self) -> Any:
        if self.num_tasks == -1:
            return self.get_task(self.sample_task_description())
        if self._task_id >= self.num_tasks:
            raise StopIteration
        self._task_id += 1
        return self[self._task_id - 1]


class TaskDataset(Taskset):
    """The old name of Taskset (deprecated in learn2learn too)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        warnings.warn("TaskDataset is deprecated, use Taskset instead", DeprecationWarning, stacklevel=2)
        super().__init__(*args, **kwargs)
