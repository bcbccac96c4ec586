"""Every ```python block of docs/imaml.md runs."""

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "imaml.md"
BLOCKS = list(enumerate(re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)))


@pytest.mark.parametrize("index, code", BLOCKS, ids=[f"imaml-{i}" for i, _ in BLOCKS])
def test_example_runs(index, code, capsys):
    exec(compile(code, f"imaml.md[{index}]", "exec"), {"__name__": "__docs__"})  # noqa: S102 - the docs' own examples
