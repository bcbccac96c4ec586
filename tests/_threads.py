"""One torch thread for suites of tiny models: intra-op threads only add overhead there (and
thrash on a shared machine). A conftest opts its folder in with `from tests._threads import one_thread`."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
