"""Every fenced code block of docs/**/*.md, and every ```python block of README.md, runs.

The blocks of one page run in order in one namespace, as a reader would type them (a page may
set up names in an earlier block). ```python blocks are executed; ```diff blocks execute their
added lines (the one-import change of the migration pages); ```text and untagged blocks are
output, synopses or diagrams, not code. Any other block in docs/ (shell commands) must be preceded by
`<!-- not run: REASON -->`, which may also mark a python block that cannot run here; the test
checks every such mark gives its reason.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import fastmaml
from tests._threads import one_thread  # noqa: F401  (autouse)

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
FENCE = re.compile(r"(?:<!-- not run: (?P<reason>[^\n]*?) -->\n)?^```(?P<lang>[\w-]*)\n(?P<code>.*?)^```", re.S | re.M)


def blocks(page: Path):
    """(line, lang, code, not-run reason or None) of every fenced block of `page`."""
    text = page.read_text()
    for m in FENCE.finditer(text):
        line = text[:m.start("lang")].count("\n") + 1
        yield line, m["lang"], m["code"], m["reason"]


def runnable(page: Path, lang: str, reason: str | None) -> bool:
    if reason is not None or lang in ("text", ""):
        return False
    if page.name == "README.md":
        return lang == "python"  # the README's shell blocks are `make` targets
    return True


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_page_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks that write (run folders) write here
    namespace = {"__name__": "__docs__"}
    backend = fastmaml.get_backend()
    try:
        for line, lang, code, reason in blocks(page):
            where = f"{page.relative_to(ROOT)}:{line}"
            if reason is not None:
                assert reason.strip(), f"{where}: a not-run mark must say why"
            if not runnable(page, lang, reason):
                continue
            if lang == "diff":
                code = "\n".join(row[1:] for row in code.splitlines() if row.startswith("+"))
            assert lang in ("python", "diff"), (
                f"{where}: a ```{lang} block in docs/ must run or be marked <!-- not run: REASON -->")
            exec(compile(code, where, "exec"), namespace)  # noqa: S102 - the docs' own examples
    finally:
        fastmaml.set_backend(backend)  # the README's backend block sets "native"


def test_marks_are_seen():
    """The pattern finds the marks (else a marked block would silently run or fail)."""
    marked = {p.name for p in PAGES for _, _, _, reason in blocks(p) if reason}
    assert {"distributed.md", "results.md", "training.md"} <= marked
