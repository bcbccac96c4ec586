"""`fastmaml train | eval | plot` through fastmaml.cli.main: tiny runs, and every bad argument
ending in one clear line on stderr with exit status 2 (no traceback)."""

import json

import pytest

from fastmaml.cli import main
from fastmaml.train import registry


def fails(capsys, argv, pattern):
    import re

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert re.search(pattern, err), err
    return err


SINE_TINY = ["--task", "sine", "--iterations", "4", "--meta-batch", "2", "--eval-every", "2", "--eval-tasks", "3",
             "--batching", "loop", "--no-progress"]


def test_sine_train_eval_plot(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *SINE_TINY, "--run-dir", str(run)]) == 0
    assert "iteration 4: mse" in capsys.readouterr().out
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["task"], cfg["algo"], cfg["inner_lr"], cfg["k_shot"], cfg["meta_batch"]) == ("sine", "maml", 0.01, 10, 2)
    assert main(["eval", str(run / "checkpoint.pt"), "--tasks", "3", "--steps", "0,1,3"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert [c["inner_steps"] for c in result["curve"]] == [0, 1, 3] and result["metric"] == "mse"
    assert main(["plot", str(run)]) == 0
    from fastmaml.train.report import table

    assert "| maml | 4 | 0.01, 1 |" in table([run])
    for name in ("learning_curves.png", "inner_steps.png", "sine_adaptation.png"):
        assert (run / name).stat().st_size > 1000
    # resume extends the run; an existing run is not overwritten by accident
    assert main(["train", "--resume", "--run-dir", str(run), "--iterations", "6", "--no-progress"]) == 0
    assert "iteration 6" in capsys.readouterr().out
    fails(capsys, ["train", *SINE_TINY, "--run-dir", str(run)], "already holds a run")


def test_help_explains_defaults(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for text in ("1-40-40-1", "--inner-lr 0.4", "meta-batch 32", "Conv-4", "Japanese_(katakana)"):
        assert text in out


def test_bad_arguments(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FASTMAML_DATA", raising=False)
    fails(capsys, ["train", "--algo", "nope", "--run-dir", str(tmp_path / "a")], r"unknown algorithm 'nope'; choose from maml")
    fails(capsys, ["train", "--task", "mnist"], "unknown task 'mnist'")
    fails(capsys, ["train", "--task", "omniglot", "--run-dir", str(tmp_path / "b")], "no Omniglot data folder")
    fails(capsys, ["train", "--task", "omniglot", "--data-root", str(tmp_path / "missing"), "--run-dir",
                   str(tmp_path / "c")], "does not exist")
    fails(capsys, ["train", "--task", "omniglot", "--data-root", str(tmp_path), "--run-dir", str(tmp_path / "d")],
          "images_background_small1 not found")
    fails(capsys, ["train", "--task", "sine", "--meta-batch", "0"], "--meta-batch must be >= 1")
    fails(capsys, ["eval", str(tmp_path / "none")], "no checkpoint")
    fails(capsys, ["plot", str(tmp_path / "none")], "does not exist")
    fails(capsys, ["eval", str(tmp_path), "--steps", "a,b"], "no checkpoint|--steps")


def test_algo_args(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *SINE_TINY, "--algo", "metasgd", "--algo-arg", "per='layer'", "--run-dir", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["algo_args"] == {"per": "layer"}
    fails(capsys, ["train", *SINE_TINY, "--algo-arg", "nope=1", "--run-dir", str(tmp_path / "b")],
          r"MAML takes no argument \['nope'\]; it takes \[")
    fails(capsys, ["train", *SINE_TINY, "--algo-arg", "oops", "--run-dir", str(tmp_path / "c")], "KEY=VALUE")


def test_unavailable_algorithm_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(registry.ALGORITHMS, "cavia", registry.Algorithm("cavia", ("NoSuchClass",), "Zintgraf et al. 2019"))
    fails(capsys, ["train", "--algo", "cavia", "--run-dir", str(tmp_path)],
          r"algorithm 'cavia' \(Zintgraf et al. 2019\) is not available yet.*available now: maml, fomaml")


def test_every_listed_algorithm_resolves():
    for name, algo in registry.ALGORITHMS.items():
        assert registry.algorithm_class(name).__name__ in algo.classes, name


def test_omniglot_episode_errors(tmp_path, capsys, omniglot_root):
    base = ["train", "--task", "omniglot", "--data-root", str(omniglot_root), "--no-progress"]
    fails(capsys, [*base, "--n-way", "600", "--run-dir", str(tmp_path / "a")],
          r"600-way tasks need 600 classes but only 544 are available")
    fails(capsys, [*base, "--k-shot", "10", "--q-query", "15", "--run-dir", str(tmp_path / "b")],
          r"K\+Q = 10\+15 = 25 images per class needed but class \d+ has only 20")


def test_omniglot_tiny_run(tmp_path, capsys, omniglot_root):
    run = tmp_path / "run"
    assert main(["train", "--task", "omniglot", "--data-root", str(omniglot_root), "--iterations", "2",
                 "--meta-batch", "2", "--q-query", "1", "--eval-every", "2", "--eval-tasks", "2", "--first-order",
                 "--batching", "loop", "--no-progress", "--run-dir", str(run)]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert main(["eval", str(run), "--tasks", "2", "--steps", "0,3"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["split"] == "test" and result["n_way"] == 5 and result["inner_steps"] == 3


@pytest.mark.parametrize("algo", list(registry.ALGORITHMS))
def test_every_algorithm_trains_and_evaluates_on_sine(tmp_path, capsys, algo):
    run = tmp_path / algo
    assert main(["train", "--task", "sine", "--algo", algo, "--iterations", "2", "--meta-batch", "2",
                 "--eval-every", "2", "--eval-tasks", "2", "--batching", "loop", "--no-progress",
                 "--run-dir", str(run)]) == 0, capsys.readouterr().err
    assert main(["eval", str(run), "--tasks", "2", "--steps", "0,2"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert all(c["mean"] == c["mean"] for c in result["curve"])  # no NaN


@pytest.mark.parametrize("algo", ["cavia", "reptile", "mamlpp", "warpgrad", "mtnet", "anil", "imaml"])
def test_structured_algorithms_run_on_omniglot(tmp_path, capsys, omniglot_root, algo):
    run = tmp_path / algo
    assert main(["train", "--task", "omniglot", "--algo", algo, "--data-root", str(omniglot_root), "--iterations", "1",
                 "--meta-batch", "1", "--q-query", "1", "--eval-every", "1", "--eval-tasks", "1", "--inner-steps", "1",
                 "--eval-inner-steps", "1", "--batching", "loop", "--no-progress", "--run-dir", str(run)]) == 0, \
        capsys.readouterr().err


def test_init_from_starts_a_new_run_from_a_checkpoints_weights(tmp_path, capsys):
    import torch

    from fastmaml.train.checkpoint import load_checkpoint

    source, run = tmp_path / "source", tmp_path / "run"
    assert main(["train", *SINE_TINY, "--run-dir", str(source)]) == 0
    # one outer step of size 0: the new run's checkpoint holds the weights it started from
    assert main(["train", *SINE_TINY, "--iterations", "1", "--meta-lr", "0", "--init-from", str(source),
                 "--run-dir", str(run)]) == 0
    start, old = load_checkpoint(run)["learner"], load_checkpoint(source)["learner"]
    assert start.keys() == old.keys() and all(torch.equal(start[k], old[k]) for k in old)
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["init_from"], cfg["init_from_iteration"]) == (str(source), 4)
    from fastmaml.train.report import table

    assert main(["eval", str(run), "--tasks", "2", "--steps", "0,1", "--no-progress"]) == 0
    assert "| maml | 4 + 1 | 0.01, 1 |" in table([run])  # the report counts the stages
    fails(capsys, ["train", "--resume", "--run-dir", str(run), "--init-from", str(source)], "cannot be combined")
    fails(capsys, ["train", *SINE_TINY, "--init-from", str(tmp_path / "none"), "--run-dir", str(tmp_path / "a")],
          "--init-from: no checkpoint")
    fails(capsys, ["train", *SINE_TINY, "--algo", "metasgd", "--init-from", str(source), "--run-dir",
                   str(tmp_path / "b")], "a sine maml checkpoint; this run is sine metasgd")
    fails(capsys, ["train", *SINE_TINY, "--algo", "anil", "--init-from", str(source), "--run-dir",
                   str(tmp_path / "c")], "same task and algorithm")  # its parameters would fit: still refused


def test_augment_options(tmp_path, capsys, omniglot_root):
    from fastmaml.train.experiment import build, defaults

    fails(capsys, ["train", *SINE_TINY, "--augment-shift", "2", "--run-dir", str(tmp_path / "a")],
          "--augment-shift applies to --task omniglot only")
    fails(capsys, ["train", "--task", "omniglot", "--augment-rotate", "-5", "--run-dir", str(tmp_path / "b")],
          "--augment-rotate must be a finite number >= 0")
    cfg = {**defaults("omniglot"), "data_root": str(omniglot_root), "augment_shift": 2.0, "augment_rotate": 10.0}
    exp = build(cfg)
    assert repr(exp.train_tasks.transform) == "RandomAffine(shift=2, rotate=10, scale=0)"
    assert exp.eval_tasks.transform is None  # evaluation episodes are never augmented
    assert build({**cfg, "augment_shift": 0.0, "augment_rotate": 0.0}).train_tasks.transform is None


def test_report_says_diverged_for_non_finite_scores():
    from fastmaml.train.report import fmt

    assert fmt({"mean": float("nan"), "ci95": float("nan")}, False) == "diverged"
    assert fmt({"mean": float("inf"), "ci95": float("nan")}, True) == "diverged"
    assert fmt({"mean": 0.25, "ci95": 0.01}, False) == "0.250 ± 0.010"


def test_train_writes_results_and_report_prints_the_table(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *SINE_TINY[:-3], "--batching", "batched", "--no-progress", "--run-dir", str(run)]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["command"] == "fastmaml train" and results["iteration"] == 4
    assert results["last_eval"]["metric"] == "mse" and results["config"]["batching"] == "batched"
    assert results["wall_seconds"] > 0 and results["torch"]
    assert main(["eval", str(run), "--tasks", "3", "--steps", "0,1"]) == 0
    capsys.readouterr()
    out_file = tmp_path / "table.md"
    assert main(["report", str(run), "--out", str(out_file)]) == 0
    assert "| maml | 4 | 0.01, 1 |" in capsys.readouterr().out
    assert "| maml | 4 | 0.01, 1 |" in out_file.read_text()
    fails(capsys, ["report", str(tmp_path / "nope")], "not a run folder")
    fails(capsys, ["report", str(tmp_path)], "none of the runs has an eval.json")


def test_demo_outer_lr_is_a_deprecated_alias_of_meta_lr():
    from fastmaml.cli import build_parser

    assert build_parser().parse_args(["demo", "--meta-lr", "0.5"]).meta_lr == 0.5
    with pytest.warns(FutureWarning, match="--outer-lr is deprecated; use --meta-lr"):
        assert build_parser().parse_args(["demo", "--outer-lr", "0.25"]).meta_lr == 0.25


def test_tensorboard_flag_names_the_extra(tmp_path, capsys, monkeypatch):
    from fastmaml.train import metrics

    monkeypatch.setattr(metrics, "tensorboard_available", lambda: False)
    fails(capsys, ["train", *SINE_TINY, "--tensorboard", "--run-dir", str(tmp_path / "r")],
          r"pip install 'fastmaml\[tensorboard\]'")


def test_compile_option_compiles_the_meta_step(tmp_path, capsys):
    """--compile: each choice reaches fastmaml.compile; a run trains with the compiled step (one
    Inductor compilation) and keeps the choice on --resume; learners it cannot cover, and --batching
    with it, are refused in one line."""
    from fastmaml.commands.train import COMPILE_CHOICES
    from fastmaml.train.experiment import COMPILE, build, defaults

    assert tuple(COMPILE) == COMPILE_CHOICES
    for choice, (backend, cuda_graphs) in {"inductor": ("inductor", False), "aoti": ("aoti", False),
                                           "cuda-graphs": ("inductor", True)}.items():
        learner = build({**defaults("sine", None, "maml"), "task": "sine", "compile": choice}).learner
        state = learner.execution_state
        assert (learner.batching, state.compile_backend, state.compile_cuda_graphs) == ("compiled", backend, cuda_graphs)
    tiny = [a for a in SINE_TINY if a not in ("--batching", "loop")]
    run = tmp_path / "run"
    assert main(["train", *tiny, "--compile", "inductor", "--run-dir", str(run)]) == 0
    assert "iteration 4: mse" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["compile"] == "inductor"
    fails(capsys, ["train", "--resume", "--run-dir", str(run), "--compile", "aoti"], r"cannot change --compile aoti")
    fails(capsys, ["train", *tiny, "--compile", "inductor", "--algo", "reptile", "--run-dir", str(tmp_path / "a")],
          r"--compile inductor: Reptile steps its own outer update")
    fails(capsys, ["train", *tiny, "--compile", "aoti", "--algo", "imaml", "--run-dir", str(tmp_path / "b")],
          r"--compile aoti: the compiled meta-step does not cover IMAML")
    fails(capsys, ["train", *SINE_TINY, "--compile", "inductor", "--run-dir", str(tmp_path / "c")],
          r"--compile replaces --batching")
