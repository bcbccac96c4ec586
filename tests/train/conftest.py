import os
from pathlib import Path

import pytest

from tests._threads import one_thread  # noqa: F401  (autouse)

REPO = Path(__file__).resolve().parents[2]


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
