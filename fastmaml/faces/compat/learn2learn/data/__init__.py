"""learn2learn.data: MetaDataset (a dataset with label bookkeeping), Taskset (tasks drawn by a
chain of task transforms) and the transforms (`data.transforms`: NWays, KShots, LoadData,
RemapLabels, ConsecutiveLabels, FusedNWaysKShots, FilterLabels)."""

from typing import NoReturn

from fastmaml.faces.compat.learn2learn.data import transforms
from fastmaml.faces.compat.learn2learn.data.meta_dataset import FilteredMetaDataset, MetaDataset
from fastmaml.faces.compat.learn2learn.data.task_dataset import (
    DataDescription,
    TaskDataset,
    Taskset,
)

__all__ = ["DataDescription", "FilteredMetaDataset", "MetaDataset", "TaskDataset", "Taskset", "transforms"]


def __getattr__(name: str) -> NoReturn:
    raise AttributeError(f"fastmaml.compat.learn2learn.data has no {name!r}: it provides {', '.join(__all__)} "
                         "(UnionMetaDataset, OnDeviceDataset, partition_task and InfiniteIterator are "
                         "learn2learn's own)")
