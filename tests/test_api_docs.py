"""The API reference builds without a warning (`make docs`), and the docstrings it is made of name
every constructor parameter (NOTE: [docstring style] in docs/architecture.md)."""

from __future__ import annotations

import importlib
import inspect
import pydoc
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fastmaml

ROOT = Path(__file__).resolve().parents[1]


def test_make_docs_builds_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    done = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-E", "-W", "--keep-going", "-q",
                           str(ROOT / "docs/api"), str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    page = (tmp_path / "fastmaml.html").read_text()
    assert "inner_lr" in page and "adapt_names" in page  # MAML's parameters made it into the reference


# the packages whose __all__ is public API, documented in docs/api/
PUBLIC = ("fastmaml", "fastmaml.execution", "fastmaml.ops", "fastmaml.secondorder", "fastmaml.tasks",
          "fastmaml.train", "fastmaml.compat.higher", "fastmaml.compat.torchopt",
          "fastmaml.compat.learn2learn.algorithms", "fastmaml.compat.learn2learn.data",
          "fastmaml.compat.learn2learn.data.transforms", "fastmaml.compat.learn2learn.utils",
          "fastmaml.compat.learn2learn.nn", "fastmaml.compat.learn2learn.optim",
          "fastmaml.compat.learn2learn.vision.benchmarks", "fastmaml.compat.learn2learn.vision.models")
NAMES = sorted({(m, n) for m in PUBLIC for n in importlib.import_module(m).__all__
                if callable(getattr(importlib.import_module(m), n))})


@pytest.mark.parametrize(("module", "name"), NAMES, ids=[f"{m}.{n}" for m, n in NAMES])
def test_every_public_name_documents_its_parameters(module, name):
    obj = getattr(importlib.import_module(module), name)
    doc = inspect.getdoc(obj) or ""
    assert doc, f"{module}.{name} has no docstring"
    try:
        params = [p.name for p in inspect.signature(obj).parameters.values()
                  if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    except ValueError:  # a builtin without a signature
        return
    # napoleon's Google style: "Args:" (or "Attributes:" of a dataclass), one "name (type): ..." line each
    missing = [p for p in params if not re.search(rf"^\s+{p}\b[^\n]*:", doc, re.M)]
    assert not missing, f"{module}.{name}'s docstring has no Args entry for {missing}"


def test_help_of_maml_is_its_own():
    text = pydoc.render_doc(fastmaml.MAML, renderer=pydoc.plaintext)
    assert "Initialize internal Module state" not in text  # nn.Module's __init__ text
    for param in inspect.signature(fastmaml.MAML).parameters:
        assert param in text, param


def test_the_package_ships_its_type_hints():
    assert (Path(fastmaml.__file__).parent / "py.typed").is_file()
