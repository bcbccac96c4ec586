"""learn2learn.vision.datasets: FullOmniglot (on fastmaml's Omniglot loader) and MiniImagenet
(learn2learn's cache files). Both keep their images as one tensor and expose `labels`, which
MetaDataset reads instead of loading every item."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from fastmaml.tasks.omniglot import Omniglot, OmniglotError

__all__ = ["FullOmniglot", "MiniImagenet"]

FULL = ("images_background", "images_evaluation")
SMALL = ("images_background_small1", "images_background_small2")


def _has(folder: Path, name: str) -> bool:
    return (folder / name).is_dir() or (folder / f"{name}.zip").is_file()


def omniglot_sets(root: str | os.PathLike) -> tuple[Path, tuple[str, ...]]:
    """Where the Omniglot files are under `root` (itself or learn2learn's `omniglot-py/`) and
    which: the full background + evaluation sets, else the two small background splits."""
    root = Path(root).expanduser()
    for folder in (root, root / "omniglot-py"):
        for sets in (FULL, SMALL):
            if all(_has(folder, s) for s in sets):
                return folder, sets
    raise OmniglotError(
        f"no Omniglot images under {str(root)!r} (nor its omniglot-py/): pass root= a folder holding "
        "images_background.zip and images_evaluation.zip (the official files, or their extracted folders), or "
        "images_background_small1.zip and images_background_small2.zip; fastmaml.tasks.omniglot.fetch downloads "
        "the official ones")


class _TensorImages(Dataset):
    """Items (transform(images[i]), target_transform(labels[i]))."""

    images: torch.Tensor
    labels: torch.Tensor
    transform: Callable[[torch.Tensor], Any] | None = None
    target_transform: Callable[[int], Any] | None = None

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        x: Any = self.images[i]
        y: Any = int(self.labels[i])
        if x.dtype == torch.uint8:
            x = x.float()
        if self.transform is not None:
            x = self.transform(x)
        if self.target_transform is not None:
            y = self.target_transform(y)
        return x, y

    def __len__(self) -> int:
        return self.labels.shape[0]

    def to(self, device: str | torch.device) -> _TensorImages:
        """Move the images to `device` (learn2learn's OnDeviceDataset).

        Args:
            device: where the images go.
        """
        self.images = self.images.to(device)
        return self


class FullOmniglot(_TensorImages):
    """Every Omniglot character as one class (1623 with the full sets), images 1x28x28 float in
    [0, 1] with strokes 1 (learn2learn's Resize(28, LANCZOS), ToTensor, 1 - x). `transform`
    applies to these tensors (not to PIL images as in learn2learn)."""

    def __init__(self, root: str | os.PathLike, transform: Callable[[torch.Tensor], Any] | None = None,
                 target_transform: Callable[[int], Any] | None = None, download: bool = False,
                 cache_dir: str | os.PathLike | None = None) -> None:
        folder, sets = omniglot_sets(root)
        data = Omniglot.load(sets, root=folder, rotations=(0,), cache_dir=cache_dir)
        self.images, self.labels = data.images, data.labels
        self.class_names = data.class_names
        self.transform, self.target_transform = transform, target_transform


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a cache file cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("collections", "OrderedDict")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name} in a mini-ImageNet cache file")
        return super().find_class(module, name)


class MiniImagenet(_TensorImages):
    """mini-ImageNet from learn2learn's cache file `<root>/mini-imagenet-cache-<mode>.pkl` (a dict
    with "image_data", uint8 [N, 84, 84, 3], and "class_dict", class name -> indices). Items are
    float [3, 84, 84] in 0..255, as learn2learn's. Nothing is downloaded: pass the folder of the
    files learn2learn downloaded."""

    MODES = ("train", "validation", "test")

    def __init__(self, root: str | os.PathLike, mode: str = "train",
                 transform: Callable[[torch.Tensor], Any] | None = None,
                 target_transform: Callable[[int], Any] | None = None, download: bool = False) -> None:
        if mode not in self.MODES:
            raise ValueError(f"MiniImagenet: mode must be one of {self.MODES}, got {mode!r}")
        path = Path(root).expanduser() / f"mini-imagenet-cache-{mode}.pkl"
        if not path.is_file():
            raise FileNotFoundError(
                f"MiniImagenet: {str(path)!r} not found. fastmaml does not ship or download mini-ImageNet: pass "
                "root= the folder holding learn2learn's mini-imagenet-cache-{train,validation,test}.pkl")
        with open(path, "rb") as f:
            data = _RestrictedUnpickler(f).load()
        images = torch.as_tensor(data["image_data"])
        if images.dim() != 4 or images.shape[-1] != 3:
            raise ValueError(f"MiniImagenet: {path.name} image_data has shape {list(images.shape)}, expected "
                             "[N, H, W, 3]")
        labels = torch.full((images.shape[0],), -1, dtype=torch.int64)
        for c, name in enumerate(data["class_dict"]):  # class ids in the file's order, as learn2learn
            labels[torch.as_tensor(data["class_dict"][name], dtype=torch.int64)] = c
        if (labels < 0).any():
            raise ValueError(f"MiniImagenet: {int((labels < 0).sum())} images of {path.name} are in no class")
        self.images = images.permute(0, 3, 1, 2)
        self.labels = labels
        self.transform, self.target_transform = transform, target_transform
        self.mode = mode
