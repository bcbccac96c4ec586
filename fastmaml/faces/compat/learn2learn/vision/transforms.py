"""learn2learn.vision.transforms.RandomClassRotation."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from fastmaml.faces.compat.learn2learn.data.meta_dataset import MetaDataset
from fastmaml.faces.compat.learn2learn.data.task_dataset import DataDescription


class RandomClassRotation:
    """A task transform: each label of the task gets one rotation drawn from `degrees`
    (multiples of 90), applied to all its images. (learn2learn's closure binds every label to the
    last label's rotation; here each label keeps its own.)

    Args:
        dataset: the MetaDataset the tasks are drawn from.
        degrees: the rotations to draw from, multiples of 90.
    """

    def __init__(self, dataset: MetaDataset, degrees: Sequence[float]) -> None:
        bad = [d for d in degrees if float(d) % 90]
        if bad or not degrees:
            raise ValueError(f"RandomClassRotation: degrees must be non-empty multiples of 90, got {list(degrees)}")
        self.dataset = dataset
        self.degrees = list(degrees)

    def __call__(self, task_description: list[DataDescription]) -> list[DataDescription]:
        turns: dict[Any, int] = {}
        for dd in task_description:
            label = self.dataset.indices_to_labels[dd.index]
            if label not in turns:
                turns[label] = int(float(random.choice(self.degrees)) // 90) % 4
            dd.transforms.append(_Rotate(turns[label]))
        return task_description


class _Rotate:
    def __init__(self, k: int) -> None:
        self.k = k

    def __call__(self, item: Sequence[Any]) -> tuple[Any, ...]:
        return (torch.rot90(item[0], self.k, dims=(-2, -1)), *item[1:])
