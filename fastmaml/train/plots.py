"""Figures of a run folder: learning curves (metrics.jsonl), accuracy or MSE against inner steps
at test time (eval.json), and for sine the adaptation figure of the MAML paper (checkpoint)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from fastmaml.train.metrics import read_jsonl


class PlotError(Exception):
    """A run file that cannot be drawn (not JSON, or not what `fastmaml train`/`eval` write); names it."""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def learning_curves(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path | None:
    """Train loss and periodic evaluation (mean with its 95% CI band) against iterations."""
    run_dir = Path(run_dir)
    records = read_jsonl(run_dir / "metrics.jsonl")
    # records without the fields drawn are skipped, like lines cut short by a crash
    train = [r for r in records if r.get("kind") == "train" and _numbers(r, "iteration", "loss")]
    evals = [r for r in records if r.get("kind") == "eval" and _numbers(r, "iteration", "mean", "ci95", "tasks")
             and isinstance(r.get("metric"), str)]
    if not train and not evals:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2 if evals else 1, figsize=(10 if evals else 5, 3.6), squeeze=False)
    ax = axes[0][0]
    ax.plot([r["iteration"] for r in train], [r["loss"] for r in train], lw=1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("meta-train loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if evals:
        ax = axes[0][1]
        it = [r["iteration"] for r in evals]
        mean = [r["mean"] for r in evals]
        ci = [r["ci95"] for r in evals]
        ax.plot(it, mean, marker="o", ms=3)
        ax.fill_between(it, [m - c for m, c in zip(mean, ci)], [m + c for m, c in zip(mean, ci)], alpha=0.25)
        metric = evals[-1]["metric"]
        ax.set_xlabel("iteration")
        ax.set_ylabel(f"eval {metric} ({evals[-1]['tasks']} tasks, 95% CI)")
        if metric == "mse":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    fig.suptitle(_title(run_dir))
    fig.tight_layout()
    out = Path(out) if out else run_dir / "learning_curves.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def steps_curve(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path | None:
    """Test metric against the number of inner steps (from `fastmaml eval`'s eval.json)."""
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
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.errorbar([c["inner_steps"] for c in curve], [c["mean"] for c in curve], yerr=[c["ci95"] for c in curve],
                marker="o", capsize=3)
    ax.set_xlabel("inner steps at test time")
    ax.set_ylabel(f"query {result['metric']} ({result['tasks']} {result['split']} tasks, 95% CI)")
    if result["metric"] == "mse":
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.set_title(_title(run_dir))
    fig.tight_layout()
    out = Path(out) if out else run_dir / "inner_steps.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def sine_adaptation(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, tasks: int = 3,
                    steps: tuple[int, ...] = (1, 10), seed: int = 7) -> Path | None:
    """The MAML paper's Figure 2: K support points of a few sine tasks, the true curve, and the
    meta-learned model before and after adaptation."""
    from fastmaml.train.checkpoint import load_checkpoint, run_config
    from fastmaml.train.experiment import build

    run_dir = Path(run_dir)
    state = load_checkpoint(run_dir)
    cfg = run_config(state, run_dir)
    if cfg["task"] != "sine":
        return None
    exp = build(cfg, need_train=False)
    exp.learner.load_state_dict(state["learner"])
    sampler = exp.eval_tasks
    sampler.generator.manual_seed(seed)
    batch = sampler.sample(tasks)
    grid = torch.linspace(-5, 5, 200).unsqueeze(1)
    plt = _pyplot()
    fig, axes = plt.subplots(1, tasks, figsize=(4 * tasks, 3.2), squeeze=False)
    learner = exp.learner
    for t in range(tasks):
        ax = axes[0][t]
        amp, phase = float(batch.amplitude[t]), float(batch.phase[t])
        ax.plot(grid, exp.eval_tasks.curve(amp, phase, grid), "k-", lw=2, label="ground truth")
        theta = {k: p.detach().requires_grad_() for k, p in learner.params().items()}
        with torch.enable_grad():
            traj = learner.inner_loop(theta, batch.support_x[t], batch.support_y[t], exp.loss_fn,
                                      steps=max(steps), first_order=True)
        with torch.no_grad():
            ax.plot(grid, learner(grid, {k: v.detach() for k, v in traj[0].items()}), ":", label="pre-update")
            for s in steps:
                ax.plot(grid, learner(grid, {k: v.detach() for k, v in traj[s].items()}), "--",
                        label=f"{s} grad step{'s' if s > 1 else ''}")
        ax.plot(batch.support_x[t], batch.support_y[t], "^", color="tab:purple", label=f"{cfg['k_shot']} points used")
        ax.set_xlim(-5, 5)
        if t == 0:
            ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{cfg['algo']} on sine, K={cfg['k_shot']}, iteration {state['iteration']}")
    fig.tight_layout()
    out = Path(out) if out else run_dir / "sine_adaptation.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


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


def _numbers(record: dict, *keys: str) -> bool:
    return all(isinstance(record.get(k), (int, float)) and not isinstance(record.get(k), bool) for k in keys)
