"""`fastmaml train`: meta-train an algorithm on sine regression or Omniglot."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

from fastmaml.cli import CommandError
from fastmaml.commands import _args

COMPILE_CHOICES = ("inductor", "aoti", "cuda-graphs")  # fastmaml/train/experiment.py's COMPILE

if TYPE_CHECKING:  # torch is imported when a command runs, not when the parser is built
    from torch import nn

EPILOG = """\
defaults (Finn et al. 2017; a flag overrides its default):
  --task sine       MLP 1-40-40-1, K=10 support + 10 query points, --meta-batch 25,
                    --inner-lr 0.01, --inner-steps 1, Adam --meta-lr 1e-3, --iterations 70000
  --task omniglot   Conv-4 (4 x [conv3x3 64, BatchNorm, ReLU, maxpool 2] + linear) on 28x28,
    --n-way 5       --k-shot 1 --q-query 15, --meta-batch 32, --inner-lr 0.4, --inner-steps 1
                    (3 at evaluation), Adam 1e-3, --iterations 60000
    --n-way 20      --meta-batch 16, --inner-lr 0.1, --inner-steps 5 (5 at evaluation)
  --algo reptile    plain SGD outer step (--meta-lr 0.1 sine, 1.0 omniglot), --inner-lr 0.02
                    (sine) / 0.1 (omniglot), 5 inner steps, trained on the support sets
  Omniglot split "small": meta-train on the alphabets of images_background_small1 (x4 rotations),
  evaluate on Japanese_(katakana), Sanskrit, Tagalog of images_background_small2 (never trained on).
  Split "standard": images_background (30 alphabets) vs images_evaluation (20 alphabets).
  Evaluation: every --eval-every iterations and at the end, mean and 95% CI over --eval-tasks
  fixed tasks. Outputs in RUN_DIR: config.json, checkpoint.pt, metrics.jsonl, train.csv, eval.csv,
  results.json (the summary: final evaluation, wall time, backend, versions).
  Ctrl-C (or SIGTERM) saves a checkpoint; `--resume` continues it bit-identically (on CPU).

examples:
  fastmaml train --task sine --algo maml --iterations 20000 --run-dir runs/sine-maml
  fastmaml train --task omniglot --n-way 5 --data-root ../shared/data/omniglot --first-order
  fastmaml train --resume --run-dir runs/sine-maml --iterations 30000
  torchrun --nproc_per_node=2 -m fastmaml train --task sine --run-dir runs/sine-2p
                    (tasks of each meta-batch split across ranks; see docs/distributed.md)
"""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "train", help="meta-train an algorithm (sine or Omniglot)",
        description="Meta-train an algorithm of the MAML family. Unset options take the paper's defaults, below.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", help="sine or omniglot (default: sine)")
    p.add_argument("--algo", help="maml, fomaml, metasgd, anil, boil, reptile, mamlpp, cavia, mtnet, warpgrad, "
                                  "l2f, alfa, imaml (default: maml)")
    p.add_argument("--run-dir", help="output folder (default: runs/<task>-<algo>[-<N>way<K>shot])")
    p.add_argument("--resume", action="store_true",
                   help="continue RUN_DIR/checkpoint.pt with the config saved in it: only --iterations and "
                        "--eval-every (and the logging options) may change; another option given with a "
                        "different value (e.g. --meta-lr) is refused, since the run would no longer be the "
                        "one saved: start a new run from its weights with --init-from instead")
    p.add_argument("--init-from", metavar="CHECKPOINT",
                   help="start a new run from the meta-parameters of a checkpoint (a run folder or .pt file) of the "
                        "same task and algorithm; the optimizer, RNGs and iteration count start afresh")
    g = p.add_argument_group("meta-training")
    g.add_argument("--iterations", type=int, help="meta-iterations (outer steps)")
    g.add_argument("--meta-batch", type=int, help="tasks per outer step")
    g.add_argument("--meta-lr", type=float, help="outer learning rate (beta)")
    g.add_argument("--meta-optimizer", choices=("adam", "sgd"), help="outer optimizer (default adam; sgd for reptile)")
    g.add_argument("--algo-arg", action="append", metavar="KEY=VALUE",
                   help="an option of the algorithm's class, e.g. --algo-arg lam=4.0 for imaml (VALUE: a "
                        "Python literal; repeatable)")
    g.add_argument("--inner-lr", type=float, help="inner learning rate (alpha)")
    g.add_argument("--inner-steps", type=int, help="inner gradient steps during meta-training")
    g.add_argument("--first-order", action="store_true", default=None,
                   help="do not differentiate through the inner steps (much faster on CPU)")
    g.add_argument("--batching", choices=("auto", "batched", "vmap", "loop"),
                   help="how tasks are batched (default auto: the task-batched kernels where the algorithm has them)")
    g.add_argument("--compile", choices=COMPILE_CHOICES,
                   help="compile the whole meta-step (fastmaml.compile, docs/compile.md): inductor (torch.compile), "
                        "aoti (ahead of time, its package kept on disk for the next run) or cuda-graphs (inductor "
                        "replayed as CUDA graphs, for --device cuda); the first meta-step compiles (tens of seconds "
                        "or more); replaces --batching for meta-training (evaluation keeps its own)")
    g.add_argument("--grad-clip", type=float, help="clip the meta-gradient's global norm")
    g.add_argument("--seed", type=int, help="seed of the model, the samplers and the global RNGs (default 0)")
    g.add_argument("--device", help="cpu (default) or cuda")
    g.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; 1 is often "
                                               "fastest for these small models on a busy machine)")
    t = p.add_argument_group("tasks")
    t.add_argument("--n-way", type=int, help="classes per task (omniglot; default 5)")
    t.add_argument("--k-shot", type=int, help="support examples per class (sine: support points)")
    t.add_argument("--q-query", type=int, help="query examples per class (sine: query points)")
    t.add_argument("--data-root", help="folder with the Omniglot zips or folders (default $FASTMAML_DATA)")
    t.add_argument("--download", action="store_true", default=None,
                   help="fetch the official Omniglot zips (checksums verified) into --data-root")
    t.add_argument("--cache-dir", help="where decoded images are cached (default $FASTMAML_CACHE or ~/.cache/fastmaml)")
    t.add_argument("--omniglot-split", choices=("small", "standard"), help="alphabet split (default small)")
    t.add_argument("--augment-shift", type=float, metavar="PIXELS",
                   help="omniglot: shift meta-training images by up to this many pixels (default 0: off)")
    t.add_argument("--augment-rotate", type=float, metavar="DEGREES",
                   help="omniglot: rotate meta-training images by up to this angle (default 0: off)")
    t.add_argument("--augment-scale", type=float, metavar="FRACTION",
                   help="omniglot: scale meta-training images by 1 +- up to this fraction (default 0: off)")
    e = p.add_argument_group("evaluation and logging")
    e.add_argument("--eval-every", type=int, help="iterations between evaluations (default 1000)")
    e.add_argument("--eval-tasks", type=int, help="tasks per evaluation (default 600)")
    e.add_argument("--eval-inner-steps", type=int, help="inner steps at evaluation")
    e.add_argument("--checkpoint-every", type=int, help="iterations between checkpoints (default --eval-every)")
    e.add_argument("--log-every", type=int, help="iterations per train-loss record (default 10)")
    e.add_argument("--tensorboard", action="store_true", help="also log to RUN_DIR/tensorboard (needs tensorboard)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


CONFIG_KEYS = ("task", "algo", "iterations", "meta_batch", "meta_lr", "meta_optimizer", "inner_lr", "inner_steps",
               "first_order", "batching", "compile", "grad_clip", "seed", "device", "n_way", "k_shot", "q_query", "data_root",
               "download", "cache_dir", "omniglot_split", "eval_every", "eval_tasks", "eval_inner_steps",
               "augment_shift", "augment_rotate", "augment_scale")


def config_from_args(args: argparse.Namespace) -> dict:
    from fastmaml.train.experiment import AUGMENT_KEYS, TASKS, defaults
    from fastmaml.train.registry import ALGORITHMS, AlgorithmUnavailable, algorithm_class

    task = args.task or "sine"
    if task not in TASKS:
        raise CommandError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    algo = args.algo or "maml"
    try:
        algorithm_class(algo)
    except AlgorithmUnavailable as err:
        raise CommandError(str(err)) from None
    assert algo in ALGORITHMS
    cfg = defaults(task, args.n_way, algo)
    for key in CONFIG_KEYS:
        value = getattr(args, key, None)
        if value is not None:
            cfg[key] = value
    for key in ("data_root", "cache_dir"):  # absolute, so `fastmaml eval` works from anywhere
        if cfg.get(key):
            cfg[key] = str(Path(cfg[key]).expanduser().absolute())
    if args.algo_arg:
        cfg["algo_args"] = parse_algo_args(args.algo_arg)
    if args.compile is not None and args.batching is not None:
        raise CommandError("--compile replaces --batching for meta-training (the compiled step batches the tasks "
                           "itself): give one of them")
    if task == "sine" and args.n_way is not None:
        raise CommandError("--n-way applies to --task omniglot only")
    for key in ("iterations", "meta_batch", "k_shot", "eval_every", "eval_tasks", "n_way"):
        _args.at_least(key, cfg.get(key), 0 if key == "iterations" else 1)
    for key in ("q_query", "inner_steps", "eval_inner_steps"):
        _args.at_least(key, cfg.get(key), 0 if key != "q_query" or task == "omniglot" else 1)
    if task == "omniglot" and cfg["n_way"] < 2:
        raise CommandError(f"--n-way must be >= 2 (a classification task), got {cfg['n_way']}")
    for key in AUGMENT_KEYS:
        _args.number(key, cfg.get(key))
        if cfg.get(key) and task != "omniglot":
            raise CommandError(f"--{key.replace('_', '-')} applies to --task omniglot only")
    if cfg["q_query"] < 1 and algo != "reptile":
        raise CommandError(f"--q-query must be >= 1 for {algo} (its outer loss is on the query set)")
    for key in ("inner_lr", "meta_lr"):
        _args.number(key, cfg[key])
    _args.number("grad_clip", cfg.get("grad_clip"), strict=True)  # 0 zeroes the meta-gradient, < 0 ascends
    return cfg


def check_logging(args: argparse.Namespace) -> None:
    """The options that are not part of the config (and may change on --resume)."""
    for key in ("log_every", "checkpoint_every", "eval_every", "threads"):
        _args.at_least(key, getattr(args, key), 1)
    _args.at_least("iterations", args.iterations, 0)


def resume_config(args: argparse.Namespace, cfg: dict) -> dict:
    """The saved config with --iterations / --eval-every applied. Any other option of the config
    given with a different value is refused: a resumed run continues the run it was (its rates,
    optimizer state and RNGs), bit-identically; `--init-from RUN_DIR` starts a new run instead."""
    changed = []
    for key in CONFIG_KEYS:
        value = getattr(args, key, None)
        if value is None or key in ("iterations", "eval_every"):
            continue
        if key in ("data_root", "cache_dir"):
            value = str(Path(value).expanduser().absolute())
        if value != cfg.get(key):
            changed.append(f"{_args.flag(key)} {value} (saved: {cfg.get(key)})")
    if args.algo_arg and parse_algo_args(args.algo_arg) != cfg.get("algo_args"):
        changed.append(f"--algo-arg (saved: {cfg.get('algo_args')})")
    if changed:
        raise CommandError(f"--resume continues the saved run and cannot change {', '.join(changed)}; only "
                           f"--iterations and --eval-every may change (start a new run from its weights with "
                           f"--init-from {args.run_dir} to change the rest)")
    for key in ("iterations", "eval_every"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    return cfg


def parse_algo_args(items: list[str]) -> dict:
    import ast

    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise CommandError(f"--algo-arg must be KEY=VALUE with KEY a Python name, got {item!r}")
        try:
            out[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out[key] = text  # a bare word: a string
    return out


def default_run_dir(cfg: dict) -> str:
    name = f"{cfg['task']}-{cfg['algo']}"
    if cfg["task"] == "omniglot":
        name += f"-{cfg['n_way']}way{cfg['k_shot']}shot"
    return str(Path("runs") / name)


def init_from(learner: nn.Module, path: str, cfg: dict) -> int:
    """Load a checkpoint's meta-parameters (and buffers) into `learner`, which they must fit exactly;
    the checkpoint must be of the same task and algorithm as `cfg`. Returns its iteration."""
    from fastmaml.train.checkpoint import CheckpointError, load_checkpoint, run_config

    try:
        state = load_checkpoint(path)
        source = run_config(state, path)
        if (source.get("task"), source.get("algo")) != (cfg["task"], cfg["algo"]):
            raise CommandError(f"--init-from {path}: a {source.get('task')} {source.get('algo')} checkpoint; this run "
                               f"is {cfg['task']} {cfg['algo']}: --init-from takes a run of the same task and algorithm")
        learner.load_state_dict(state["learner"])
        return int(state["iteration"])
    except CheckpointError as err:
        raise CommandError(f"--init-from: {err}") from None
    except RuntimeError as err:  # load_state_dict lists the missing, unexpected and mis-shaped entries
        first = str(err).strip().splitlines()
        raise CommandError(f"--init-from {path}: its parameters do not fit this model and algorithm: "
                           f"{' '.join(line.strip() for line in first[:4])}") from None


def set_threads(threads: int | None) -> None:
    if threads is None:
        return
    _args.at_least("threads", threads, 1)
    import torch

    torch.set_num_threads(threads)


def write_results(run_dir: Path, cfg: dict, summary: dict, wall: float, world_size: int) -> None:
    """RUN_DIR/results.json: what `fastmaml demo` writes for its run, for a training run."""
    import json
    import os
    import platform

    import torch

    from fastmaml import ops
    from fastmaml.train.metrics import atomic_write_text

    device = torch.device(cfg.get("device") or "cpu")
    record = {
        "command": "fastmaml train", "config": cfg, "iteration": summary["iteration"],
        "last_eval": summary["last_eval"], "checkpoint": summary["checkpoint"], "wall_seconds": wall,
        "world_size": world_size, "backend": ops.resolve_backend(device), "torch": torch.__version__,
        "machine": platform.machine(), "cpus": os.cpu_count(),
    }
    atomic_write_text(run_dir / "results.json", json.dumps(record, indent=2, default=str) + "\n")


def run(args: argparse.Namespace) -> int:
    from fastmaml.tasks.omniglot import OmniglotError
    from fastmaml.tasks.sampler import SamplerError
    from fastmaml.train import MetaTrainer, TrainingDiverged
    from fastmaml.train.checkpoint import CheckpointError, load_checkpoint, run_config
    from fastmaml.train.experiment import build
    from fastmaml.train.registry import AlgorithmUnavailable

    check_logging(args)
    set_threads(args.threads)
    if args.resume:
        if args.init_from:
            raise CommandError("--init-from starts a new run; it cannot be combined with --resume")
        if not args.run_dir:
            raise CommandError("--resume needs --run-dir (the run to continue)")
        try:
            state = load_checkpoint(args.run_dir)
            cfg = resume_config(args, run_config(state, args.run_dir))
        except CheckpointError as err:
            raise CommandError(str(err)) from None
        del state
    else:
        cfg = config_from_args(args)
        if args.init_from:
            cfg["init_from"] = str(Path(args.init_from).expanduser().absolute())
    run_dir = args.run_dir or default_run_dir(cfg)
    if not args.resume and (Path(run_dir) / "checkpoint.pt").exists():
        raise CommandError(f"{run_dir} already holds a run: pass --resume to continue it or choose another --run-dir")
    _args.device(cfg.get("device"))
    _args.writable_dir("--run-dir", run_dir)
    for key, default in (("log_every", 10), ("checkpoint_every", None)):  # kept by a resumed run unless given
        cfg[key] = getattr(args, key) if getattr(args, key) is not None else cfg.get(key, default)
    if args.tensorboard:
        from fastmaml.train.metrics import tensorboard_available

        if not tensorboard_available():
            raise CommandError("--tensorboard needs the tensorboard package: pip install 'fastmaml[tensorboard]' "
                               "(or pip install tensorboard)")
    from fastmaml import distributed

    try:  # under torchrun: join the job (gloo on CPU, NCCL on CUDA); else one process
        ctx = distributed.init_from_env(cfg.get("device"))
    except distributed.DistributedError as err:
        raise CommandError(str(err)) from None
    if cfg["meta_batch"] < ctx.world_size:
        raise CommandError(f"--meta-batch {cfg['meta_batch']} is split across {ctx.world_size} ranks: "
                           f"it must be >= {ctx.world_size}")
    try:
        exp = build(cfg)
    except (OmniglotError, SamplerError, AlgorithmUnavailable, ValueError, TypeError) as err:
        raise CommandError(str(err)) from None
    except KeyError as err:  # a hand-edited or foreign config
        raise CommandError(f"the run's config lacks {err}") from None
    if args.init_from:
        cfg["init_from_iteration"] = init_from(exp.learner, args.init_from, cfg)
    try:  # a resumed run's saved config was not checked by config_from_args (it may be hand-edited)
        trainer = MetaTrainer(
            exp.learner, exp.train_tasks, exp.loss_fn, metric=exp.metric, optimizer=exp.optimizer(),
            meta_batch=cfg["meta_batch"], iterations=cfg["iterations"], eval_tasks=exp.eval_tasks,
            eval_every=cfg["eval_every"], eval_num_tasks=cfg["eval_tasks"], eval_steps=cfg["eval_inner_steps"],
            run_dir=run_dir, checkpoint_every=cfg["checkpoint_every"], log_every=cfg["log_every"], config=cfg,
            progress=not args.no_progress, tensorboard=args.tensorboard, grad_clip=cfg.get("grad_clip"),
            device=cfg.get("device"), dist=ctx)
    except (ValueError, KeyError) as err:
        raise CommandError(f"the run's config does not work: {err}") from None
    start = time.perf_counter()
    try:
        summary = trainer.fit(resume=args.resume)
    except (TrainingDiverged, CheckpointError) as err:
        raise CommandError(str(err)) from None
    finally:
        ctx.destroy()
    wall = time.perf_counter() - start
    last = summary["last_eval"]
    if ctx.is_main:
        write_results(Path(run_dir), cfg, summary, wall, ctx.world_size)
    if last is not None and ctx.is_main:
        score = (f"{last['mean']:.4f} +- {last['ci95']:.4f}" if math.isfinite(last["mean"])
                 else "diverged (not finite on some task)")
        print(f"iteration {summary['iteration']}: {last['metric']} {score} "
              f"(95% CI, {last['tasks']} tasks, {last['inner_steps']} inner steps); {wall:.0f} s; "
              f"checkpoint {summary['checkpoint']}")
    return 0
