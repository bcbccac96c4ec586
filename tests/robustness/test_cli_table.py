"""Every subcommand and flag of `fastmaml` with bad values, table-driven: each must end with one line
on stderr naming the problem, a non-zero exit status, no traceback, and nothing written or changed
(no new run folder; the existing run's files byte-identical). `fastmaml --debug` shows the
traceback instead.

Placeholders in argv: {run} a finished tiny sine run (a copy per case), {new} a fresh folder that
must stay absent, {file} a regular file. A setup name edits the run first (SETUPS)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from fastmaml.cli import main
from tests.robustness.conftest import SINE_TINY, edit_checkpoint, edit_config

T = SINE_TINY
NEW = ["--run-dir", "{new}"]


def _truncate(run):
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])


def _drop(key):
    return lambda run: edit_checkpoint(run / "checkpoint.pt", lambda s: s.pop(key))


def _learner_of_other_shape(run):
    def edit(state):
        state["learner"] = {k: torch.zeros(3, *v.shape) for k, v in state["learner"].items()}
    edit_checkpoint(run / "checkpoint.pt", edit)


SETUPS = {
    "garbage_ckpt": lambda run: (run / "checkpoint.pt").write_bytes(b"not a checkpoint at all"),
    "truncated_ckpt": _truncate,
    "ckpt_without_learner": _drop("learner"),
    "ckpt_without_optimizer": _drop("optimizer"),
    "ckpt_config_lacks_keys": lambda run: edit_checkpoint(
        run / "checkpoint.pt", lambda s: s.update(config=json.dumps({"task": "sine"}))),
    "ckpt_config_not_json": lambda run: edit_checkpoint(run / "checkpoint.pt", lambda s: s.update(config="{oops")),
    "ckpt_state_does_not_fit": _learner_of_other_shape,
    "ckpt_config_other_width": lambda run: edit_checkpoint(run / "checkpoint.pt", edit_config(algo="metasgd")),
    "ckpt_config_bad_value": lambda run: edit_checkpoint(run / "checkpoint.pt", edit_config(eval_tasks=0)),
    "ckpt_config_bad_clip": lambda run: edit_checkpoint(run / "checkpoint.pt", edit_config(grad_clip=-1.0)),
    "ckpt_unknown_device": lambda run: edit_checkpoint(run / "checkpoint.pt", edit_config(device="foo")),
    "eval_json_garbage": lambda run: (run / "eval.json").write_text("{not json"),
    "eval_json_list": lambda run: (run / "eval.json").write_text("[1, 2]"),
    "eval_json_bad_curve": lambda run: (run / "eval.json").write_text(json.dumps({"curve": [{"mean": "x"}]})),
    "eval_json_binary": lambda run: (run / "eval.json").write_bytes(b"\xff\xfe\x00garbage"),
    "only_bad_metrics": lambda run: [(run / n).unlink() for n in ("eval.json", "checkpoint.pt")] and
    (run / "metrics.jsonl").write_text('[1]\n"x"\n{"kind": "train", "loss": "a"}\n'),
}

# (id, argv, stderr pattern, setup or None)
CASES = [
    # ---- top level --------------------------------------------------------------------------------
    ("no-command", [], r"required: COMMAND", None),
    ("unknown-command", ["fly"], r"invalid choice: 'fly'", None),
    ("info-extra-flag", ["info", "--bogus"], r"unrecognized arguments: --bogus", None),
    # ---- train: values argparse rejects ------------------------------------------------------------
    ("train-iterations-text", ["train", "--iterations", "x", *NEW], r"argument --iterations: invalid int", None),
    ("train-meta-lr-text", ["train", "--meta-lr", "fast", *NEW], r"argument --meta-lr: invalid float", None),
    ("train-optimizer", ["train", "--meta-optimizer", "rmsprop", *NEW], r"invalid choice: 'rmsprop'", None),
    ("train-batching", ["train", "--batching", "threads", *NEW], r"invalid choice: 'threads'", None),
    ("train-split", ["train", "--omniglot-split", "huge", *NEW], r"invalid choice: 'huge'", None),
    ("train-seed-float", ["train", "--seed", "1.5", *NEW], r"argument --seed: invalid int", None),
    # ---- train: the config ---------------------------------------------------------------------------
    ("train-task", ["train", "--task", "mnist", *NEW], r"unknown task 'mnist'", None),
    ("train-algo", ["train", "--algo", "nope", *NEW], r"unknown algorithm 'nope'", None),
    ("train-iterations-neg", ["train", *T, "--iterations", "-1", *NEW], r"--iterations must be >= 0, got -1", None),
    ("train-meta-batch-0", ["train", *T, "--meta-batch", "0", *NEW], r"--meta-batch must be >= 1", None),
    ("train-meta-lr-neg", ["train", *T, "--meta-lr", "-1", *NEW], r"--meta-lr must be a finite number >= 0", None),
    ("train-meta-lr-nan", ["train", *T, "--meta-lr", "nan", *NEW], r"--meta-lr must be a finite number", None),
    ("train-meta-lr-inf", ["train", *T, "--meta-lr", "inf", *NEW], r"--meta-lr must be a finite number", None),
    ("train-inner-lr-neg", ["train", *T, "--inner-lr", "-0.1", *NEW], r"--inner-lr must be a finite number", None),
    ("train-inner-lr-nan", ["train", *T, "--inner-lr", "nan", *NEW], r"--inner-lr must be a finite number", None),
    ("train-inner-steps-neg", ["train", *T, "--inner-steps", "-1", *NEW], r"--inner-steps must be >= 0", None),
    ("train-eval-inner-steps-neg", ["train", *T, "--eval-inner-steps", "-2", *NEW], r"--eval-inner-steps must be >= 0",
     None),
    ("train-grad-clip-neg", ["train", *T, "--grad-clip", "-1", *NEW], r"--grad-clip must be a finite number > 0", None),
    ("train-grad-clip-0", ["train", *T, "--grad-clip", "0", *NEW], r"--grad-clip must be a finite number > 0", None),
    ("train-grad-clip-nan", ["train", *T, "--grad-clip", "nan", *NEW], r"--grad-clip must be a finite number", None),
    ("train-k-shot-0", ["train", *T, "--k-shot", "0", *NEW], r"--k-shot must be >= 1", None),
    ("train-q-query-0", ["train", *T, "--q-query", "0", *NEW], r"--q-query must be >= 1", None),
    ("train-n-way-sine", ["train", *T, "--n-way", "5", *NEW], r"--n-way applies to --task omniglot only", None),
    ("train-n-way-1", ["train", "--task", "omniglot", "--n-way", "1", *NEW], r"--n-way must be >= 2", None),
    ("train-n-way-0", ["train", "--task", "omniglot", "--n-way", "0", *NEW], r"--n-way must be >= 1", None),
    ("train-q-query-neg-omniglot", ["train", "--task", "omniglot", "--q-query", "-1", *NEW], r"--q-query must be >= 0",
     None),
    ("train-augment-neg", ["train", "--task", "omniglot", "--augment-shift", "-1", *NEW], r"--augment-shift must be",
     None),
    ("train-augment-nan", ["train", "--task", "omniglot", "--augment-scale", "nan", *NEW], r"--augment-scale must be",
     None),
    ("train-augment-sine", ["train", *T, "--augment-rotate", "5", *NEW], r"applies to --task omniglot only", None),
    ("train-eval-every-0", ["train", *T, "--eval-every", "0", *NEW], r"--eval-every must be >= 1", None),
    ("train-eval-tasks-0", ["train", *T, "--eval-tasks", "0", *NEW], r"--eval-tasks must be >= 1", None),
    ("train-checkpoint-every-neg", ["train", *T, "--checkpoint-every", "-3", *NEW], r"--checkpoint-every must be >= 1",
     None),
    ("train-checkpoint-every-0", ["train", *T, "--checkpoint-every", "0", *NEW], r"--checkpoint-every must be >= 1",
     None),
    ("train-log-every-0", ["train", *T, "--log-every", "0", *NEW], r"--log-every must be >= 1", None),
    ("train-threads-0", ["train", *T, "--threads", "0", *NEW], r"--threads must be >= 1", None),
    ("train-device-foo", ["train", *T, "--device", "foo", *NEW], r"--device must be cpu, cuda or cuda:N, got 'foo'",
     None),
    ("train-device-tpu", ["train", *T, "--device", "meta", *NEW], r"--device must be cpu, cuda or cuda:N", None),
    ("train-device-cuda-99", ["train", *T, "--device", "cuda:99", *NEW], r"--device cuda:99: (CUDA is not available|"
     r"this machine has)", None),
    ("train-algo-arg-form", ["train", *T, "--algo-arg", "oops", *NEW], r"KEY=VALUE", None),
    ("train-algo-arg-unknown", ["train", *T, "--algo-arg", "nope=1", *NEW], r"takes no argument \['nope'\]", None),
    ("train-omniglot-no-data", ["train", "--task", "omniglot", "--data-root", "{new}/data", *NEW], r"does not exist",
     None),
    ("train-tensorboard", ["train", *T, "--tensorboard", *NEW], r"--tensorboard needs the tensorboard package", None),
    # ---- train: the run folder ---------------------------------------------------------------------
    ("train-run-dir-is-file", ["train", *T, "--run-dir", "{file}"], r"--run-dir .* is not a folder", None),
    ("train-run-dir-under-file", ["train", *T, "--run-dir", "{file}/sub"], r"--run-dir .* cannot be created", None),
    ("train-existing-run", ["train", *T, "--run-dir", "{run}"], r"already holds a run", None),
    ("train-resume-no-dir", ["train", "--resume"], r"--resume needs --run-dir", None),
    ("train-resume-missing", ["train", "--resume", *NEW], r"no checkpoint at", None),
    ("train-resume-and-init", ["train", "--resume", "--run-dir", "{run}", "--init-from", "{run}"],
     r"cannot be combined", None),
    ("train-resume-meta-lr", ["train", "--resume", "--run-dir", "{run}", "--meta-lr", "0.5"],
     r"--resume continues the saved run and cannot change --meta-lr 0.5 \(saved: 0.001\)", None),
    ("train-resume-inner-lr", ["train", "--resume", "--run-dir", "{run}", "--inner-lr", "0.5"],
     r"cannot change --inner-lr 0.5 \(saved: 0.01\)", None),
    ("train-resume-algo", ["train", "--resume", "--run-dir", "{run}", "--algo", "fomaml"], r"cannot change --algo",
     None),
    ("train-resume-garbage", ["train", "--resume", "--run-dir", "{run}", "--iterations", "3"], r"cannot read checkpoint",
     "garbage_ckpt"),
    ("train-resume-truncated", ["train", "--resume", "--run-dir", "{run}", "--iterations", "3"],
     r"cannot read checkpoint", "truncated_ckpt"),
    ("train-resume-no-optimizer", ["train", "--resume", "--run-dir", "{run}", "--iterations", "3"],
     r"does not fit this run .*KeyError: 'optimizer'", "ckpt_without_optimizer"),
    ("train-resume-no-learner", ["train", "--resume", "--run-dir", "{run}", "--iterations", "3"],
     r"is incomplete: it lacks \['learner'\]", "ckpt_without_learner"),
    ("train-resume-config-lacks", ["train", "--resume", "--run-dir", "{run}", "--iterations", "3"],
     r"its config lacks", "ckpt_config_lacks_keys"),
    ("train-resume-config-not-json", ["train", "--resume", "--run-dir", "{run}", "--iterations", "3"],
     r"unreadable config", "ckpt_config_not_json"),
    ("train-resume-state-misfit", ["train", "--resume", "--run-dir", "{run}", "--iterations", "3"],
     r"does not fit this run", "ckpt_state_does_not_fit"),
    ("train-resume-config-misfit", ["train", "--resume", "--run-dir", "{run}", "--iterations", "3"],
     r"does not fit this run", "ckpt_config_other_width"),
    ("train-resume-bad-device", ["train", "--resume", "--run-dir", "{run}", "--iterations", "3"],
     r"--device must be cpu", "ckpt_unknown_device"),
    ("train-resume-config-bad-value", ["train", "--resume", "--run-dir", "{run}", "--iterations", "3"],
     r"the run.s config does not work: eval_num_tasks must be an int >= 1, got 0", "ckpt_config_bad_value"),
    ("train-resume-config-bad-clip", ["train", "--resume", "--run-dir", "{run}", "--iterations", "3"],
     r"grad_clip must be a finite number > 0", "ckpt_config_bad_clip"),
    ("train-resume-iterations-neg", ["train", "--resume", "--run-dir", "{run}", "--iterations", "-5"],
     r"--iterations must be >= 0", None),
    ("train-init-from-missing", ["train", *T, "--init-from", "{new}/x", *NEW], r"--init-from: no checkpoint", None),
    ("train-init-from-other-algo", ["train", *T, "--algo", "fomaml", "--init-from", "{run}", *NEW],
     r"a sine maml checkpoint; this run is sine fomaml", None),
    ("train-init-from-garbage", ["train", *T, "--init-from", "{run}", *NEW], r"--init-from: cannot read",
     "garbage_ckpt"),
    # ---- eval ----------------------------------------------------------------------------------------
    ("eval-missing", ["eval", "{new}"], r"no checkpoint at", None),
    ("eval-tasks-0", ["eval", "{run}", "--tasks", "0"], r"--tasks must be >= 1", None),
    ("eval-tasks-text", ["eval", "{run}", "--tasks", "many"], r"argument --tasks: invalid int", None),
    ("eval-steps-text", ["eval", "{run}", "--steps", "a,b"], r"--steps must be comma-separated integers", None),
    ("eval-steps-neg", ["eval", "{run}", "--steps=-1,2"], r"--steps must be integers >= 0", None),
    ("eval-steps-option-like", ["eval", "{run}", "--steps", "-1,2"], r"argument --steps: expected one argument", None),
    ("eval-steps-empty", ["eval", "{run}", "--steps", ","], r"--steps must be integers >= 0", None),
    ("eval-inner-steps-neg", ["eval", "{run}", "--inner-steps", "-2"], r"--inner-steps must be >= 0", None),
    ("eval-split", ["eval", "{run}", "--split", "val"], r"invalid choice: 'val'", None),
    ("eval-threads-0", ["eval", "{run}", "--threads", "0"], r"--threads must be >= 1", None),
    ("eval-out-is-dir", ["eval", "{run}", "--out", "{run}"], r"--out .* is a folder", None),
    ("eval-out-under-file", ["eval", "{run}", "--out", "{file}/eval.json"], r"--out .* is not a folder", None),
    ("eval-garbage", ["eval", "{run}"], r"cannot read checkpoint", "garbage_ckpt"),
    ("eval-truncated", ["eval", "{run}"], r"cannot read checkpoint", "truncated_ckpt"),
    ("eval-no-learner", ["eval", "{run}"], r"lacks \['learner'\]", "ckpt_without_learner"),
    ("eval-config-lacks", ["eval", "{run}"], r"its config lacks", "ckpt_config_lacks_keys"),
    ("eval-state-misfit", ["eval", "{run}"], r"size mismatch|Error", "ckpt_state_does_not_fit"),
    ("eval-file-not-checkpoint", ["eval", "{file}"], r"cannot read checkpoint", None),
    # ---- plot ----------------------------------------------------------------------------------------
    ("plot-missing", ["plot", "{new}"], r"does not exist", None),
    ("plot-file", ["plot", "{file}"], r"does not exist", None),
    ("plot-out-dir-under-file", ["plot", "{run}", "--out-dir", "{file}/figs"], r"--out-dir .* cannot be created", None),
    ("plot-eval-json-garbage", ["plot", "{run}"], r"eval.json' is not valid JSON", "eval_json_garbage"),
    ("plot-eval-json-binary", ["plot", "{run}"], r"eval.json' is not valid JSON", "eval_json_binary"),
    ("plot-eval-json-bad-curve", ["plot", "{run}"], r"is not a `fastmaml eval` result", "eval_json_bad_curve"),
    ("plot-garbage-checkpoint", ["plot", "{run}"], r"cannot read checkpoint", "garbage_ckpt"),
    ("plot-only-bad-metrics", ["plot", "{run}"], r"has nothing to plot", "only_bad_metrics"),
    # ---- demo ----------------------------------------------------------------------------------------
    ("demo-iterations-0", ["demo", "--iterations", "0", "--out", "{new}"], r"--iterations must be >= 1", None),
    ("demo-meta-batch-0", ["demo", "--meta-batch", "0", "--out", "{new}"], r"--meta-batch must be >= 1", None),
    ("demo-k-shot-0", ["demo", "--k-shot", "0", "--out", "{new}"], r"--k-shot must be >= 1", None),
    ("demo-eval-tasks-0", ["demo", "--eval-tasks", "0", "--out", "{new}"], r"--eval-tasks must be >= 1", None),
    ("demo-threads-0", ["demo", "--threads", "0", "--out", "{new}"], r"--threads must be >= 1", None),
    ("demo-inner-lr-nan", ["demo", "--inner-lr", "nan", "--out", "{new}"], r"--inner-lr must be a finite number", None),
    ("demo-inner-lr-neg", ["demo", "--inner-lr", "-1", "--out", "{new}"], r"--inner-lr must be a finite number", None),
    ("demo-outer-lr-neg", ["demo", "--outer-lr", "-1", "--out", "{new}"], r"--meta-lr must be a finite number", None),
    ("demo-outer-lr-inf", ["demo", "--outer-lr", "inf", "--out", "{new}"], r"--meta-lr must be a finite number", None),
    ("demo-out-under-file", ["demo", "--out", "{file}/runs"], r"--out .* cannot be created", None),
    ("demo-seed-text", ["demo", "--seed", "x", "--out", "{new}"], r"argument --seed: invalid int", None),
]


def _fill(argv, tmp_path, run):
    return [a.format(run=run, new=tmp_path / "new", file=tmp_path / "afile") for a in argv]


def _snapshot(run):
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


@pytest.mark.parametrize("name,argv,pattern,setup", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(name, argv, pattern, setup, tmp_path, run_copy, capsys, monkeypatch):
    if name == "train-tensorboard":
        from fastmaml.train.metrics import tensorboard_available

        if tensorboard_available():
            pytest.skip("tensorboard is installed here")
    monkeypatch.delenv("FASTMAML_DATA", raising=False)
    (tmp_path / "afile").write_text("a regular file\n")
    if setup:
        SETUPS[setup](run_copy)
    before = _snapshot(run_copy)
    capsys.readouterr()
    try:
        rc = main(_fill(argv, tmp_path, run_copy))
    except SystemExit as exit_:  # argparse
        rc = exit_.code
    err = capsys.readouterr().err.strip()
    assert rc not in (0, None), f"exit status {rc}; stderr: {err}"
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert re.search(pattern, err), err
    assert not (tmp_path / "new").exists(), "a folder was created for a refused command"
    after = _snapshot(run_copy)
    assert after.keys() == before.keys() and all(after[k] == before[k] for k in before), \
        f"files of the run changed: {[k for k in after if before.get(k) != after[k]]}"


def test_debug_shows_the_traceback(tmp_path):
    from fastmaml.cli import CommandError

    with pytest.raises(CommandError, match="--meta-batch must be >= 1"):
        main(["--debug", "train", *T, "--meta-batch", "0", "--run-dir", str(tmp_path / "x")])
