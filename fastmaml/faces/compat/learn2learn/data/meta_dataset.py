"""learn2learn.data.MetaDataset and FilteredMetaDataset: a dataset with its label bookkeeping."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sized
from typing import Any, cast

import torch
from torch.utils.data import Dataset, TensorDataset

__all__ = ["FilteredMetaDataset", "MetaDataset"]


def _label_tensor(dataset: Dataset) -> torch.Tensor | None:
    """The dataset's labels as a 1-d tensor when it holds them as one (a TensorDataset's second
    tensor, or a `labels` tensor as fastmaml.compat.learn2learn.vision's datasets have), else None."""
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) > 1:
        labels: object = dataset.tensors[1]
    else:
        labels = getattr(dataset, "labels", None)
    if isinstance(labels, torch.Tensor) and labels.dim() == 1 and labels.shape[0] == len(cast(Sized, dataset)):
        return labels
    return None


class MetaDataset(Dataset):
    """Wraps a dataset of (data, label) items and keeps `labels_to_indices`,
    `indices_to_labels` and `labels` for the task transforms. The bookkeeping comes from the given
    dicts, else from the dataset's label tensor (see _label_tensor), else from reading every item.

    Args:
        dataset: a dataset of (data, label) items.
        labels_to_indices: label -> item indices, if known (saves a pass over the data).
        indices_to_labels: item index -> label, if known.
    """

    def __init__(self, dataset: Dataset, labels_to_indices: dict[Any, list[int]] | None = None,
                 indices_to_labels: dict[int, Any] | None = None) -> None:
        if not isinstance(dataset, Dataset):
            raise TypeError(f"MetaDataset: dataset must be a torch.utils.data.Dataset, got {type(dataset).__name__}")
        self.dataset = dataset
        self.create_bookkeeping(labels_to_indices, indices_to_labels)

    def create_bookkeeping(self, labels_to_indices: dict[Any, list[int]] | None = None,
                           indices_to_labels: dict[int, Any] | None = None) -> None:
        """Set `labels_to_indices`, `indices_to_labels` and `labels`.

        Args:
            labels_to_indices: label -> item indices, if known.
            indices_to_labels: item index -> label, if known.
        """
        if labels_to_indices is not None:
            indices_to_labels = {i: label for label, idx in labels_to_indices.items() for i in idx}
        elif indices_to_labels is not None:
            labels_to_indices = defaultdict(list)
            for i, label in indices_to_labels.items():
                labels_to_indices[label].append(i)
        else:
            tensor = _label_tensor(self.dataset)
            labels: list[Any]
            if tensor is not None:
                labels = tensor.tolist()
            else:
                labels = []
                for i in range(len(cast(Sized, self.dataset))):
                    label = self.dataset[i][1]
                    if isinstance(label, torch.Tensor):
                        if label.numel() != 1:
                            raise ValueError(f"MetaDataset: item {i} has a label of shape {list(label.shape)}; "
                                             "scalar labels are required")
                        label = label.item()
                    labels.append(label)
            indices_to_labels = dict(enumerate(labels))
            labels_to_indices = defaultdict(list)
            for i, label in enumerate(labels):
                labels_to_indices[label].append(i)
        self.labels_to_indices = dict(labels_to_indices)
        self.indices_to_labels = dict(indices_to_labels)
        self.labels = list(self.labels_to_indices)

    def __getitem__(self, item: int) -> Any:
        return self.dataset[item]

    def __len__(self) -> int:
        return len(cast(Sized, self.dataset))


class FilteredMetaDataset(MetaDataset):
    """The items of `dataset` whose label is in `labels`, re-indexed from 0.

    Args:
        dataset: a MetaDataset (or dataset of (data, label) items).
        labels: the labels to keep.
    """

    def __init__(self, dataset: Dataset, labels: Iterable[Any]) -> None:
        if not isinstance(dataset, MetaDataset):
            dataset = MetaDataset(dataset)
        missing = [label for label in labels if label not in dataset.labels_to_indices]
        if missing:
            raise ValueError(f"FilteredMetaDataset: labels {missing[:10]} are not in the dataset")
        self.dataset = dataset
        self.to_true_indices = [i for label in labels for i in dataset.labels_to_indices[label]]
        self.create_bookkeeping(indices_to_labels={j: dataset.indices_to_labels[i]
                                                   for j, i in enumerate(self.to_true_indices)})

    def __getitem__(self, item: int) -> Any:
        return self.dataset[self.to_true_indices[item]]

    def __len__(self) -> int:
        return len(self.to_true_indices)
