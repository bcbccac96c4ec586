"""The README's benchmark tables are the ones bench/tables.py makes from the committed JSON: a
re-run that was not regenerated into the README (or a table typed by hand) fails here."""

from pathlib import Path

import pytest

from bench import tables

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize("name", list(tables.TABLES))
def test_readme_table_is_generated_from_the_json(name):
    text = README.read_text()
    start, end = f"<!-- table:{name} -->\n", f"\n<!-- /table:{name} -->"
    assert start in text and end in text, f"README.md has no {name} table block"
    block = text.split(start, 1)[1].split(end, 1)[0]
    assert block == tables.TABLES[name](), (
        f"README.md's {name} table differs from bench/results: run `python -m bench.tables --readme`")
