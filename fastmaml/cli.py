"""The `fastmaml` command. Each subcommand lives in fastmaml/commands/<name>.py and exposes
`add_parser(subparsers)` (which sets `func` on its parser) and a `run(args) -> int`."""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = ("demo", "info", "train", "eval", "plot", "report")


class CommandError(Exception):
    """A user-facing error: printed as one line, exit status 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastmaml",
        description="Gradient-based meta-learning (MAML and its family) on fused compiled kernels.",
    )
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
        print(f"fastmaml {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fastmaml {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
