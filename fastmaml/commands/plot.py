"""`fastmaml plot RUN_DIR`: the figures of a run."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from fastmaml.cli import CommandError
from fastmaml.commands import _args


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "plot", help="draw a run's figures",
        description="Draw the figures of a run folder as PNG files in it: learning_curves.png (train loss "
                    "and periodic evaluation with 95% CI, from metrics.jsonl), inner_steps.png (test metric "
                    "against inner steps, from `fastmaml eval`'s eval.json) and, for sine runs, "
                    "sine_adaptation.png (the MAML paper's Figure 2, from checkpoint.pt).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by `fastmaml train`")
    p.add_argument("--out-dir", help="where to write the figures (default RUN_DIR)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fastmaml.train import plots
    from fastmaml.train.checkpoint import CheckpointError

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise CommandError(f"run folder {str(run_dir)!r} does not exist")
    out_dir = Path(args.out_dir) if args.out_dir else run_dir
    _args.writable_dir("--out-dir" if args.out_dir else "the run folder", out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # drawn into a temporary folder and moved into place only when every figure could be drawn
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".plot-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            made = [plots.learning_curves(run_dir, tmp / "learning_curves.png"),
                    plots.steps_curve(run_dir, tmp / "inner_steps.png")]
            if (run_dir / "checkpoint.pt").is_file():
                made.append(plots.sine_adaptation(run_dir, tmp / "sine_adaptation.png"))
        except (CheckpointError, plots.PlotError) as err:
            raise CommandError(str(err)) from None
        except KeyError as err:
            raise CommandError(f"the checkpoint's config lacks {err}") from None
        figures = [m for m in made if m is not None]
        if not figures:
            raise CommandError(f"{run_dir} has nothing to plot (no metrics.jsonl, eval.json or sine checkpoint)")
        for m in figures:
            os.replace(m, out_dir / m.name)
            print(f"wrote {out_dir / m.name}")
    return 0
