import warnings

import pytest
import torch

# The suite runs on whatever backend `auto` resolves to; a missing extension is reported by
# `fastmaml info`, not as a warning in every test.
warnings.filterwarnings("ignore", message="fastmaml: the compiled extension", category=RuntimeWarning)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
