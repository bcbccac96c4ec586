"""Sphinx configuration of the API reference (`make docs`; built into build/docs, outside git)."""

from __future__ import annotations

import sys
from pathlib import Path

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout's fastmaml

project = "fastmaml"
author = "fastmaml developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]
# NOTE: [docstring style] Google style (Args:, Returns:, Raises:, Example:), read by napoleon;
# a class documents its constructor's arguments in the class docstring (docs/architecture.md).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autoclass_content = "class"
napoleon_use_ivar = True  # Attributes: as fields, not a second description of each member
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": True}
exclude_patterns = ["_build"]
default_role = "code"  # `x` in a docstring is code, as in the rest of the docs
html_theme = "alabaster"
html_static_path: list[str] = []


class CommandHelp(SphinxDirective):
    """`.. fastmaml-help::` renders `fastmaml --help` and every subcommand's --help, as the command
    line prints them (so this page cannot drift from the parser)."""

    def run(self) -> list[nodes.Node]:
        import argparse

        from fastmaml.cli import build_parser

        parser = build_parser()
        out: list[nodes.Node] = [nodes.literal_block(text=parser.format_help())]
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        for name, child in sub.choices.items():
            section = nodes.section(ids=[f"fastmaml-{name}"])
            section += nodes.title(text=f"fastmaml {name}")
            section += nodes.literal_block(text=child.format_help())
            out.append(section)
        return out


def setup(app: Sphinx) -> None:
    app.add_directive("fastmaml-help", CommandHelp)
