"""`fastmaml eval CHECKPOINT`: score a meta-trained checkpoint on held-out tasks."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from fastmaml.cli import CommandError
from fastmaml.commands import _args

EPILOG = """\
Rebuilds the experiment from the config saved in the checkpoint, adapts to --tasks tasks of the
held-out split (Omniglot: alphabets never trained on; sine: a fresh task stream) with each number
of inner steps in --steps, and reports the query accuracy (Omniglot) or MSE (sine) with its 95%
confidence interval over tasks. The result goes to RUN_DIR/eval.json (or --out), which
`fastmaml plot` draws as accuracy against inner steps.

example:
  fastmaml eval runs/omniglot-maml-5way1shot --tasks 600 --steps 0,1,2,3,5,10
"""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate a checkpoint on held-out tasks",
        description="Evaluate a meta-trained checkpoint (a checkpoint.pt file or its run folder).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint file or run folder")
    p.add_argument("--tasks", type=int, default=600, help="tasks to evaluate (default 600)")
    p.add_argument("--steps", help="comma-separated inner step counts (default: 0..10 and the training "
                                   "config's evaluation steps)")
    p.add_argument("--inner-steps", type=int, help="the step count reported as the main result "
                                                  "(default: the config's evaluation steps)")
    p.add_argument("--split", default="test", choices=("test", "train"),
                   help="Omniglot split part to evaluate on (default test: unseen alphabets)")
    p.add_argument("--seed", type=int, help="seed of the evaluation tasks (default: the run's seed + 2)")
    p.add_argument("--data-root", help="Omniglot folder (default: the one saved in the checkpoint, or $FASTMAML_DATA)")
    p.add_argument("--cache-dir", help="decoded-image cache folder")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", help="where to write the JSON result (default RUN_DIR/eval.json)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def parse_steps(text: str) -> list[int]:
    try:
        steps = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise CommandError(f"--steps must be comma-separated integers, got {text!r}") from None
    if not steps or steps[0] < 0:
        raise CommandError(f"--steps must be integers >= 0, got {text!r}")
    return steps


def run(args: argparse.Namespace) -> int:
    from fastmaml.commands.train import set_threads
    from fastmaml.tasks.omniglot import OmniglotError
    from fastmaml.tasks.sampler import SamplerError
    from fastmaml.train.checkpoint import CheckpointError, load_checkpoint, run_config
    from fastmaml.train.evaluate import evaluate
    from fastmaml.train.experiment import build
    from fastmaml.train.metrics import atomic_write_text
    from fastmaml.train.registry import AlgorithmUnavailable

    set_threads(args.threads)
    _args.at_least("tasks", args.tasks, 1)
    _args.at_least("inner_steps", args.inner_steps, 0)
    steps = parse_steps(args.steps) if args.steps is not None else None
    try:
        state = load_checkpoint(args.checkpoint)
        cfg = run_config(state, args.checkpoint)
    except CheckpointError as err:
        raise CommandError(str(err)) from None
    ckpt = Path(args.checkpoint)
    run_dir = ckpt if ckpt.is_dir() else ckpt.parent
    out = Path(args.out) if args.out else run_dir / "eval.json"
    if out.is_dir():
        raise CommandError(f"--out {str(out)!r} is a folder; give a file name")
    _args.writable_dir("--out" if args.out else "the run folder", out.parent)
    if args.data_root is not None:
        cfg["data_root"] = args.data_root
    if args.cache_dir is not None:
        cfg["cache_dir"] = args.cache_dir
    cfg["download"] = False
    main_steps = args.inner_steps if args.inner_steps is not None else cfg["eval_inner_steps"]
    steps = sorted(set(steps or range(11)) | {main_steps})
    try:
        exp = build(cfg, eval_split=args.split)
        exp.learner.load_state_dict(state["learner"])
    except (OmniglotError, SamplerError, AlgorithmUnavailable, ValueError, TypeError, RuntimeError) as err:
        raise CommandError(str(err).strip().splitlines()[0]) from None
    except KeyError as err:
        raise CommandError(f"the checkpoint's config lacks {err}") from None
    tasks = exp.eval_tasks
    seed = args.seed if args.seed is not None else cfg["seed"] + 2
    tasks.generator.manual_seed(seed)
    start = time.perf_counter()
    result = evaluate(exp.learner, tasks, exp.loss_fn, exp.metric, args.tasks, steps, progress=not args.no_progress)
    wall = time.perf_counter() - start
    main = next(c for c in result["curve"] if c["inner_steps"] == main_steps)
    result.update(mean=main["mean"], ci95=main["ci95"], loss=main["loss"], inner_steps=main_steps)
    record = {"checkpoint": str(ckpt), "iteration": int(state["iteration"]), "split": args.split, "seed": seed,
              "task": cfg["task"], "algo": cfg["algo"], "n_way": cfg.get("n_way"), "k_shot": cfg["k_shot"],
              "wall_s": round(wall, 2), **result}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(record, indent=2) + "\n")
    what = "accuracy" if exp.metric == "accuracy" else "query MSE"
    print(f"{cfg['task']} {cfg['algo']} (iteration {state['iteration']}), {args.tasks} {args.split} tasks:")
    for c in result["curve"]:
        mark = "  <-" if c["inner_steps"] == main_steps else ""
        score = (f"{c['mean']:.4f} +- {c['ci95']:.4f}" if math.isfinite(c["mean"])
                 else "diverged (not finite on some task)")
        print(f"  {c['inner_steps']:3d} inner steps: {what} {score}{mark}")
    print(f"wrote {out} ({wall:.0f} s)")
    if not math.isfinite(main["mean"]):
        print(f"fastmaml eval: error: the model diverged on some task at {main_steps} inner steps (a NaN or "
              f"infinite query loss); the run's inner learning rate {cfg['inner_lr']} is probably too large",
              file=sys.stderr)
        return 1
    return 0
