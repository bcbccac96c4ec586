import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread is faster and keeps results independent of the machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def find_omniglot() -> Path | None:
    for candidate in (os.environ.get("FASTMAML_DATA"), REPO.parent / "shared" / "data" / "omniglot"):
        if candidate and (Path(candidate) / "images_background_small1.zip").is_file():
            return Path(candidate)
    return None


@pytest.fixture
def omniglot_root():
    root = find_omniglot()
    if root is None:
        pytest.skip("Omniglot small splits not found in $FASTMAML_DATA or ../shared/data/omniglot")
    return root
