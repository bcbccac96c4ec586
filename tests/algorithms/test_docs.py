"""Every algorithm has a page in docs/algorithms (their code blocks run in tests/test_docs.py)."""

from pathlib import Path

DOCS = sorted((Path(__file__).resolve().parents[2] / "docs" / "algorithms").glob("*.md"))


def test_every_algorithm_has_a_page():
    names = {doc.stem for doc in DOCS}
    assert {"metasgd", "anil", "reptile", "mamlpp", "cavia", "l2f", "alfa", "mtnet", "warpgrad", "init"} <= names
