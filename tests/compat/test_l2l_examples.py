"""learn2learn's examples run on the face with only their import line changed (the copies in
tests/compat/l2l_examples/, see its README): maml_omniglot on the local Omniglot files,
maml_miniimagenet on synthetic 84x84 cache files, maml_toy, and maml_sine with a stand-in for
torchmeta's sine loader (the example's data comes from torchmeta, not learn2learn)."""

from __future__ import annotations

import importlib.util
import math
import pickle
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from fastmaml.tasks.omniglot import default_cache_dir
from fastmaml.tasks.sine import SineTasks
from tests.train.conftest import find_omniglot

EXAMPLES = Path(__file__).parent / "l2l_examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"l2l_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def numbers(text: str, label: str) -> list[float]:
    found = [float(v) for v in re.findall(rf"{label}\s+(\S+)", text)]
    assert found, f"no {label!r} line in the output:\n{text}"
    assert all(math.isfinite(v) for v in found), f"{label}: {found}"
    return found


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A home folder whose ~/data the examples' root='~/data' reads (the Omniglot cache stays)."""
    monkeypatch.setenv("FASTMAML_CACHE", str(default_cache_dir()))
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "data").mkdir()
    return tmp_path


def test_maml_omniglot(home, capsys):
    root = find_omniglot()
    if root is None:
        pytest.skip("Omniglot small splits not found in $FASTMAML_DATA or ../shared/data/omniglot")
    (home / "data" / "omniglot-py").symlink_to(root)
    load("maml_omniglot").main(meta_batch_size=2, num_iterations=2, cuda=False)
    out = capsys.readouterr().out
    assert len(numbers(out, "Meta Train Error")) == 2
    assert 0 <= numbers(out, "Meta Test Accuracy")[0] <= 1


def write_mini_imagenet(folder: Path, classes: int = 5, per_class: int = 2) -> None:
    """learn2learn's cache format with random 84x84 RGB images: {"image_data": uint8 [N, 84, 84, 3],
    "class_dict": {name: [indices]}}."""
    rng = np.random.default_rng(0)
    for mode in ("train", "validation", "test"):
        images = rng.integers(0, 256, (classes * per_class, 84, 84, 3), dtype=np.uint8)
        class_dict = {f"n{mode}{c:03d}": list(range(c * per_class, (c + 1) * per_class)) for c in range(classes)}
        with open(folder / f"mini-imagenet-cache-{mode}.pkl", "wb") as f:
            pickle.dump({"image_data": images, "class_dict": class_dict}, f)


def test_maml_miniimagenet_on_synthetic_data(home, capsys):
    write_mini_imagenet(home / "data")
    load("maml_miniimagenet").main(ways=5, shots=1, meta_batch_size=1, num_iterations=1, cuda=False)
    out = capsys.readouterr().out
    numbers(out, "Meta Train Error")
    assert 0 <= numbers(out, "Meta Test Accuracy")[0] <= 1


def test_maml_toy(capsys):
    module = load("maml_toy")
    module.TIMESTEPS, module.TASKS_PER_STEP = 3, 4
    torch.manual_seed(0)
    module.main()
    losses = [float(line.split()[1]) for line in capsys.readouterr().out.splitlines()]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)


class Sinusoid(Dataset):
    """torchmeta.toy.Sinusoid's shape: task i is (inputs [n, 1], targets [n, 1])."""

    def __init__(self, num_samples_per_task: int, num_tasks: int):
        batch = SineTasks(k_shot=num_samples_per_task, q_query=1, seed=0).sample(num_tasks)
        self.x, self.y = batch.support_x.double(), batch.support_y.double()

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_maml_sine(capsys, monkeypatch):
    torchmeta = types.ModuleType("torchmeta")
    toy, utils, data = (types.ModuleType(f"torchmeta.{n}") for n in ("toy", "utils", "utils.data"))
    toy.Sinusoid, data.BatchMetaDataLoader = Sinusoid, DataLoader
    for name, mod in (("torchmeta", torchmeta), ("torchmeta.toy", toy), ("torchmeta.utils", utils),
                      ("torchmeta.utils.data", data)):
        monkeypatch.setitem(sys.modules, name, mod)
    torch.manual_seed(0)
    load("maml_sine").main(tasks_per_batch=4, num_tasks=8, adapt_steps=2)
    assert numbers(capsys.readouterr().out, "Meta Train Loss")
