"""`fastmaml report`: the markdown tables of recorded results, made from runs' eval.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from fastmaml.cli import CommandError


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "report", help="markdown tables of finished runs (from their eval.json)",
        description="Print the markdown tables of recorded results (Omniglot accuracy, sine MSE) made from each "
                    "run folder's eval.json, config.json and metrics.jsonl; run `fastmaml eval` on a run first.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (e.g. runs/omniglot-*)")
    p.add_argument("--out", help="also write the tables to this file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fastmaml.train.report import table

    missing = [r for r in args.runs if not Path(r).is_dir()]
    if missing:
        raise CommandError(f"not a run folder: {', '.join(missing)}")
    text = table([Path(r) for r in args.runs])
    if not text:
        raise CommandError("none of the runs has an eval.json: run `fastmaml eval RUN_DIR` first")
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0
