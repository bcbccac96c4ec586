"""Command lines that run, with unusual values: a diverged model is said to have diverged (exit
status 1 or 2, one line on stderr), never scored as a number; what is allowed on --resume."""

from __future__ import annotations

import json
import math

from fastmaml.cli import main
from tests.robustness.conftest import edit_checkpoint, edit_config


def _one_line(capsys) -> tuple[str, str]:
    out, err = capsys.readouterr()
    err = err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return out, err


def test_eval_of_a_diverging_model_says_so(run_copy, capsys):
    edit_checkpoint(run_copy / "checkpoint.pt", edit_config(inner_lr=1e38))
    capsys.readouterr()
    assert main(["eval", str(run_copy), "--tasks", "2", "--steps", "0,3"]) == 1
    out, err = _one_line(capsys)
    assert "3 inner steps: query MSE diverged" in out and "the model diverged on some task at" in err
    record = json.loads((run_copy / "eval.json").read_text())  # the record is kept, with its NaN
    assert math.isnan(record["mean"]) and math.isfinite(record["curve"][0]["mean"])


def test_demo_that_diverges_says_so(tmp_path, capsys):
    assert main(["demo", "--iterations", "2", "--eval-tasks", "2", "--inner-lr", "1e6", "--out", str(tmp_path)]) == 2
    out, err = capsys.readouterr()  # stderr also holds the progress bars
    assert "Traceback" not in err and [line for line in err.splitlines() if "error:" in line] == \
        ["fastmaml demo: error: the query MSE is not finite (NaN or inf): --inner-lr 1000000.0 or --meta-lr 0.001 is "
         "too large for this network"]
    assert "diverged" in out and "nan ± nan" not in out


def test_demo_with_one_eval_task(tmp_path, capsys):
    assert main(["demo", "--iterations", "1", "--meta-batch", "1", "--eval-tasks", "1", "--out", str(tmp_path)]) == 0
    assert "± 0.000" in capsys.readouterr().out  # one task: no interval


def test_plot_survives_an_unreadable_config_json(run_copy, capsys):
    (run_copy / "config.json").write_text("{broken")
    assert main(["plot", str(run_copy)]) == 0
    assert (run_copy / "learning_curves.png").stat().st_size > 1000
    assert not list(run_copy.glob(".plot-*"))


def test_resume_accepts_unchanged_values_and_keeps_the_logging_options(run_copy, capsys):
    cfg = json.loads((run_copy / "config.json").read_text())
    assert main(["train", "--resume", "--run-dir", str(run_copy), "--iterations", "3", "--meta-lr", str(cfg["meta_lr"]),
                 "--inner-lr", str(cfg["inner_lr"]), "--task", "sine", "--no-progress"]) == 0
    cfg = json.loads((run_copy / "config.json").read_text())
    assert cfg["iterations"] == 3 and cfg["log_every"] == 10
