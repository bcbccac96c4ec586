"""Figures of a run folder: learning curves (metrics.jsonl), accuracy or MSE against inner steps
at test time (eval.json), and for sine the adaptation figure of the MAML paper (checkpoint), all
in fastmaml.train.style. Each `*_figure` returns the matplotlib Figure (None when the run has
nothing for it); the function of the same name without `_figure` saves it as a PNG."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from fastmaml.tasks.sine import SineBatch, SineTasks
from fastmaml.train import style
from fastmaml.train.metrics import read_jsonl

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn
    from matplotlib.figure import Figure

# one curve of the sine figure: (label, colour, line style, predict(task, grid) -> y)
Curve = tuple[str, str, str, Callable[[int, Tensor], Tensor]]


class PlotError(Exception):
    """A run file that cannot be drawn (not JSON, or not what `fastmaml train`/`eval` write); names it."""


def learning_curves_figure(run_dir: str | os.PathLike) -> Figure | None:
    """The meta-train loss and the periodic evaluation (mean with its 95% CI band) against
    iterations, one panel for each that the run logged; None if it logged neither."""
    run_dir = Path(run_dir)
    records = read_jsonl(run_dir / "metrics.jsonl")
    # records without the fields drawn are skipped, like lines cut short by a crash
    train = [r for r in records if r.get("kind") == "train" and _numbers(r, "iteration", "loss")]
    evals = [r for r in records if r.get("kind") == "eval" and _numbers(r, "iteration", "mean", "ci95", "tasks")
             and isinstance(r.get("metric"), str)]
    if not train and not evals:
        return None
    fig, axes = style.figure(ncols=bool(train) + bool(evals))
    if train:
        ax = axes[0]
        marker = "o" if len(train) < 20 else None
        ax.plot([r["iteration"] for r in train], [r["loss"] for r in train], color=style.COLORS["train"],
                marker=marker, lw=1)
        ax.set_xlabel("iteration (meta-update)")
        ax.set_ylabel(f"meta-train loss ({_loss_name(run_dir)})")
        style.log_axis(ax, "y")
        style.iteration_axis(ax)
    if evals:
        ax = axes[-1]
        scale, label = style.metric_scale(evals[-1]["metric"])
        it = [r["iteration"] for r in evals]
        mean = [scale * r["mean"] for r in evals]
        ci = [scale * r["ci95"] for r in evals]
        ax.plot(it, mean, marker="o", color=style.COLORS["eval"])
        ax.fill_between(it, [m - c for m, c in zip(mean, ci)], [m + c for m, c in zip(mean, ci)],
                        color=style.COLORS["eval"], alpha=0.25, lw=0)
        ax.set_xlabel("iteration (meta-update)")
        ax.set_ylabel(f"held-out {label}\n(mean, 95% CI, {evals[-1]['tasks']} tasks)")
        if evals[-1]["metric"] == "mse":
            style.log_axis(ax, "y")
        style.iteration_axis(ax)
    style.title(fig, _title(run_dir))
    return fig


def learning_curves(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path | None:
    fig = learning_curves_figure(run_dir)
    return None if fig is None else style.save(fig, out or Path(run_dir) / "learning_curves.png")


def steps_curve_figure(run_dir: str | os.PathLike) -> Figure | None:
    """The test metric against the number of inner steps (from `fastmaml eval`'s eval.json)."""
    run_dir = Path(run_dir)
    path = run_dir / "eval.json"
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise PlotError(f"{str(path)!r} is not valid JSON ({err}); rerun `fastmaml eval` to rewrite it") from None
    curve = result.get("curve") if isinstance(result, dict) else None
    if not curve:
        return None
    if not (isinstance(curve, list) and all(isinstance(c, dict) and _numbers(c, "inner_steps", "mean", "ci95")
                                            for c in curve) and _numbers(result, "tasks")
            and isinstance(result.get("metric"), str) and isinstance(result.get("split"), str)):
        raise PlotError(f"{str(path)!r} is not a `fastmaml eval` result (its curve or fields are malformed); "
                        f"rerun `fastmaml eval` to rewrite it")
    scale, label = style.metric_scale(result["metric"])
    fig, (ax,) = style.figure()
    ax.errorbar([c["inner_steps"] for c in curve], [scale * c["mean"] for c in curve],
                yerr=[scale * c["ci95"] for c in curve], marker="o", capsize=3, color=style.COLORS["eval"])
    ax.set_xlabel("inner steps at test time")
    ax.set_ylabel(f"query {label}\n(mean, 95% CI, {result['tasks']} {result['split']} tasks)")
    if result["metric"] == "mse":
        style.log_axis(ax, "y")
    style.iteration_axis(ax)
    ax.set_title(_title(run_dir))
    return fig


def steps_curve(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path | None:
    fig = steps_curve_figure(run_dir)
    return None if fig is None else style.save(fig, out or Path(run_dir) / "inner_steps.png")


def sine_figure(batch: SineBatch, curves: Sequence[Curve], title: str, tasks: int = 3) -> Figure:
    """The MAML paper's Figure 2 layout, for `fastmaml plot` and `fastmaml demo` alike: per task
    the true curve, the K support points, and each of `curves` = [(label, colour, line style,
    predict(t, grid) -> y)]."""
    grid = torch.linspace(-5, 5, 200).unsqueeze(1)
    fig, axes = style.figure(ncols=tasks)
    k_shot = batch.support_x.shape[1]
    for t, ax in enumerate(axes):
        amp, phase = float(batch.amplitude[t]), float(batch.phase[t])
        ax.plot(grid, SineTasks.curve(amp, phase, grid), color=style.COLORS["truth"], lw=2, label="ground truth")
        for label, color, ls, predict in curves:
            ax.plot(grid, predict(t, grid), color=color, ls=ls, label=label)
        ax.plot(batch.support_x[t], batch.support_y[t], "^", color=style.COLORS["support"],
                label=f"{k_shot} support points")
        ax.set_xlim(-5, 5)
        ax.set_xlabel("input x")
        ax.set_ylabel("output y = A sin(x + phase)" if t == 0 else "output y")
        ax.set_title(f"A = {amp:.2f}, phase = {phase:.2f} rad")
    style.legend_below(fig, axes[0])
    style.title(fig, title)
    return fig


def sine_adaptation_figure(run_dir: str | os.PathLike, tasks: int = 3, steps: tuple[int, ...] = (1, 10),
                           seed: int = 7) -> Figure | None:
    """sine_figure for a run's checkpoint: the meta-learned model before and after `steps` inner
    steps on the support points of `tasks` held-out tasks; None for a run that is not on sine."""
    from fastmaml.train.checkpoint import load_checkpoint, run_config
    from fastmaml.train.experiment import build

    run_dir = Path(run_dir)
    state = load_checkpoint(run_dir)
    cfg = run_config(state, run_dir)
    if cfg["task"] != "sine":
        return None
    exp = build(cfg, need_train=False)
    learner = exp.learner
    learner.load_state_dict(state["learner"])
    exp.eval_tasks.generator.manual_seed(seed)
    batch = exp.eval_tasks.sample(tasks)
    trajectories = []
    for t in range(tasks):
        theta = {k: p.detach().requires_grad_() for k, p in learner.params().items()}
        with torch.enable_grad():
            traj = learner.inner_loop(theta, batch.support_x[t], batch.support_y[t], exp.loss_fn,
                                      steps=max(steps), first_order=True)
        trajectories.append([{k: v.detach() for k, v in phi.items()} for phi in traj])

    def after(s: int) -> Callable[[int, Tensor], Tensor]:
        def predict(t: int, grid: Tensor) -> Tensor:
            with torch.no_grad():
                return learner(grid, trajectories[t][s])
        return predict

    name = cfg["algo"].upper() if cfg["algo"] in ("maml", "fomaml") else cfg["algo"]
    curves = [(f"{name}, {s} step{'s' if s != 1 else ''}", style.COLORS["MAML"], style.STEP_STYLES.get(s, "-."),
               after(s)) for s in (0, *steps)]
    return sine_figure(batch, curves, f"{cfg['algo']} on sine, K={cfg['k_shot']}, iteration {state['iteration']}",
                       tasks)


def sine_adaptation(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, tasks: int = 3,
                    steps: tuple[int, ...] = (1, 10), seed: int = 7) -> Path | None:
    fig = sine_adaptation_figure(run_dir, tasks, steps, seed)
    return None if fig is None else style.save(fig, out or Path(run_dir) / "sine_adaptation.png")


def _loss_name(run_dir: Path) -> str:
    cfg_path = run_dir / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    except (ValueError, UnicodeDecodeError):
        cfg = {}  # a label only: an unreadable config.json does not stop the figures
    task = cfg.get("task") if isinstance(cfg, dict) else None
    names: dict[object, str] = {"sine": "MSE", "omniglot": "cross-entropy"}
    return names.get(task, "log scale")


def _title(run_dir: Path) -> str:
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        return run_dir.name
    try:
        cfg = json.loads(cfg_path.read_text())
    except (ValueError, UnicodeDecodeError):
        return run_dir.name  # the title only: an unreadable config.json does not stop the figures
    if not isinstance(cfg, dict):
        return run_dir.name
    what = f"{cfg.get('n_way')}-way {cfg.get('k_shot')}-shot Omniglot" if cfg.get("task") == "omniglot" else \
        f"sine K={cfg.get('k_shot')}"
    return f"{cfg.get('algo')}{' (first order)' if cfg.get('first_order') else ''}, {what}"


def _numbers(record: dict[str, Any], *keys: str) -> bool:
    return all(isinstance(record.get(k), (int, float)) and not isinstance(record.get(k), bool) for k in keys)
