"""The README's benchmark tables are the ones bench/tables.py makes from the committed JSON: a
re-run that was not regenerated into the README (or a table typed by hand) fails here."""

from pathlib import Path

import pytest

from bench import tables

ROOT = Path(__file__).resolve().parents[2]
READMES = (ROOT / "README.md", ROOT / "bench" / "README.md")  # both rewritten by `python -m bench.tables --readme`


@pytest.mark.parametrize("name", list(tables.TABLES))
def test_readme_table_is_generated_from_the_json(name):
    start, end = f"<!-- table:{name} -->\n", f"\n<!-- /table:{name} -->"
    holders = [p for p in READMES if start in p.read_text() and end in p.read_text()]
    assert holders, f"neither README.md nor bench/README.md has a {name} table block"
    text = holders[0].read_text()
    block = text.split(start, 1)[1].split(end, 1)[0]
    assert block == tables.TABLES[name](), (
        f"{holders[0].name}'s {name} table differs from bench/results: run `python -m bench.tables --readme`")
