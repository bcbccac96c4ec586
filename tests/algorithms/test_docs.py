"""Every ```python block of docs/algorithms/*.md runs."""

import re
from pathlib import Path

import pytest

DOCS = sorted((Path(__file__).resolve().parents[2] / "docs" / "algorithms").glob("*.md"))
BLOCKS = [(doc.name, i, code) for doc in DOCS
          for i, code in enumerate(re.findall(r"```python\n(.*?)```", doc.read_text(), re.S))]


def test_every_algorithm_has_a_page():
    names = {doc.stem for doc in DOCS}
    assert {"metasgd", "anil", "reptile", "mamlpp", "cavia", "l2f", "alfa", "mtnet", "warpgrad", "init"} <= names


@pytest.mark.parametrize("name, index, code", BLOCKS, ids=[f"{n}-{i}" for n, i, _ in BLOCKS])
def test_example_runs(name, index, code, capsys):
    exec(compile(code, f"{name}[{index}]", "exec"), {"__name__": "__docs__"})
