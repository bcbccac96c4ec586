"""The `fastmaml` command. Each subcommand lives in fastmaml/commands/<name>.py and exposes
`add_parser(subparsers)` (which sets `func` on its parser) and a `run(args) -> int`."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

SUBCOMMANDS = ("demo", "info", "train", "eval", "plot", "report")


class CommandError(Exception):
    """A user-facing error: printed as one line, exit status 2, no traceback (`--debug` shows it)."""


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (the usage is one `--help` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fastmaml",
        description="Gradient-based meta-learning (MAML and its family) on fused compiled kernels.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error instead of its one-line message")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"fastmaml.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"fastmaml.commands.{name}":
                raise
            continue  # a subcommand not written yet
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CommandError as err:
        if args.debug:
            raise
        print(f"fastmaml {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the file system refused (read-only, full, not a folder, permissions)
        if args.debug:
            raise
        print(f"fastmaml {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"fastmaml {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
