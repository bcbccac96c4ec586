"""Every figure, rendered from a tiny run (Agg backend) and checked on its axes: labelled axes,
log axes with readable major tick labels (plain numbers, at least two), integer iteration ticks,
accuracy in %, a visible loss curve when the run logged a single train record, and `fastmaml demo`
drawing the sine figure of `fastmaml plot`."""

from __future__ import annotations

import json
import math

import pytest

from fastmaml.cli import main
from fastmaml.train import plots, style

TINY = ["train", "--task", "sine", "--iterations", "3", "--meta-batch", "2", "--eval-every", "1", "--eval-tasks",
        "3", "--batching", "loop", "--no-progress"]


@pytest.fixture(scope="module")
def sine_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("figures") / "sine"
    assert main([*TINY, "--log-every", "10", "--run-dir", str(run)]) == 0  # shorter than --log-every
    assert main(["eval", str(run), "--tasks", "3", "--steps", "0,1,2,5"]) == 0
    return run


def visible_labels(ax, which: str) -> list[str]:
    """The tick labels matplotlib draws inside the axis limits."""
    ax.figure.canvas.draw()
    axis = ax.yaxis if which == "y" else ax.xaxis
    lo, hi = sorted(ax.get_ylim() if which == "y" else ax.get_xlim())
    return [t.get_text() for t, v in zip(axis.get_majorticklabels(), axis.get_majorticklocs())
            if lo <= v <= hi and t.get_text()]


def check_labelled(ax) -> None:
    assert ax.get_xlabel().strip() and ax.get_ylabel().strip(), (ax.get_xlabel(), ax.get_ylabel())


def check_log_axis(ax) -> None:
    assert ax.get_yscale() == "log"
    labels = visible_labels(ax, "y")
    assert len(labels) >= 2, f"log axis with fewer than two labelled ticks: {labels}"
    for text in labels:
        assert "times" not in text and "^" not in text and "$" not in text, labels
        float(text)  # a plain number


def check_integer_ticks(ax) -> None:
    for text in visible_labels(ax, "x"):
        value = float(text.replace("\u2212", "-"))
        assert value == int(value), f"fractional iteration tick {text!r}"


def test_learning_curves_short_run(sine_run):
    fig = plots.learning_curves_figure(sine_run)
    loss, evals = fig.axes
    for ax in (loss, evals):
        check_labelled(ax)
        check_integer_ticks(ax)
        check_log_axis(ax)
    assert "MSE" in loss.get_ylabel() and "MSE" in evals.get_ylabel()
    (line,) = loss.get_lines()
    assert len(line.get_xdata()) == 1 and line.get_marker() == "o", "a single train record must show as a marker"
    assert list(evals.get_lines()[0].get_xdata()) == [1, 2, 3]


def test_eval_only_run_has_no_empty_loss_panel(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({"kind": "eval", "iteration": i, "metric": "accuracy", "mean": m, "ci95": 0.02,
                            "tasks": 10}) + "\n" for i, m in ((5, 0.4), (10, 0.55))))
    fig = plots.learning_curves_figure(tmp_path)
    (ax,) = fig.axes
    assert "accuracy (%)" in ax.get_ylabel()
    assert max(ax.get_lines()[0].get_ydata()) == pytest.approx(55.0), "accuracy is drawn in %"
    check_integer_ticks(ax)


def test_steps_curve(sine_run, tmp_path):
    fig = plots.steps_curve_figure(sine_run)
    (ax,) = fig.axes
    check_labelled(ax)
    check_log_axis(ax)
    check_integer_ticks(ax)
    (tmp_path / "eval.json").write_text(json.dumps({"metric": "accuracy", "tasks": 4, "split": "test", "curve": [
        {"inner_steps": s, "mean": m, "ci95": 0.01} for s, m in ((0, 0.2), (1, 0.9), (3, 0.95))]}))
    (ax,) = plots.steps_curve_figure(tmp_path).axes
    assert "accuracy (%)" in ax.get_ylabel() and ax.get_ylim()[1] > 90


def test_sine_adaptation_and_demo_draw_the_same_figure(sine_run, monkeypatch, tmp_path):
    fig = plots.sine_adaptation_figure(sine_run)
    assert len(fig.axes) == 3
    for ax in fig.axes:
        check_labelled(ax)
        assert ax.get_title().startswith("A = ")
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[0] == "ground truth" and legend[-1] == "10 support points"
    assert "MAML, 0 steps" in legend and "MAML, 10 steps" in legend

    drawn = []
    monkeypatch.setattr(style, "save", lambda f, path: drawn.append(f))
    assert main(["demo", "--iterations", "2", "--meta-batch", "2", "--eval-tasks", "3", "--out", str(tmp_path)]) == 0
    (demo,) = drawn
    assert len(demo.axes) == 3
    for a, b in zip(fig.axes, demo.axes):
        assert (a.get_xlabel(), a.get_ylabel(), a.get_xlim()) == (b.get_xlabel(), b.get_ylabel(), b.get_xlim())
    demo_legend = [t.get_text() for t in demo.legends[0].get_texts()]
    assert demo_legend[0] == "ground truth" and "pre-trained, 10 steps" in demo_legend


@pytest.mark.parametrize("value, text", [(0.002, "0.002"), (0.05, "0.05"), (3.0, "3"), (20.0, "20"),
                                         (1e6, "1e+06"), (0.0, "0")])
def test_plain_number(value, text):
    assert style.plain_number(value) == text
    assert not math.isnan(float(text))
