"""The fault matrix of `fastmaml train` in one process: SIGKILL, SIGTERM and SIGINT in each phase
(inside a meta-step, inside an evaluation, half-way through writing the checkpoint), then
`--resume`: no lost or corrupt file, no stale temporary, the resumed run ends with the parameters
(bit for bit) and the metrics records of an uninterrupted run, and every process exits within its
bound. Also SIGSTOP / SIGCONT. The distributed cases are in tests/distributed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastmaml.cli import main
from fastmaml.train.checkpoint import load_checkpoint
from fastmaml.train.metrics import read_jsonl

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ARGS = ["--task", "sine", "--iterations", "4", "--meta-batch", "2", "--eval-every", "2", "--eval-tasks", "3",
        "--checkpoint-every", "1", "--log-every", "1", "--batching", "loop", "--no-progress", "--threads", "1"]
BOUND_S = 120  # a tiny run; the child is killed (and the test fails) past this


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("reference") / "run"
    assert main(["train", *ARGS, "--run-dir", str(run)]) == 0
    return run


def _child(cmd: list[str], env=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=BOUND_S)


def _records(run: Path) -> list[tuple]:
    """What a run logged, without the timings."""
    out = []
    for r in read_jsonl(run / "metrics.jsonl"):
        out.append((r["kind"], r["iteration"], r.get("loss"), r.get("mean")))
    return out


def _same_run(run: Path, reference: Path) -> None:
    got, want = load_checkpoint(run), load_checkpoint(reference)
    assert got["iteration"] == want["iteration"] == 4
    for name, value in want["learner"].items():
        assert torch.equal(got["learner"][name], value), name
    assert _records(run) == _records(reference)
    assert not list(run.glob(".*.tmp")), "stale temporary files left"


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["step", "eval", "save"])
@pytest.mark.parametrize("sig", ["KILL", "TERM", "INT"])
def test_signal_in_each_phase_then_resume(tmp_path, reference, phase, sig):
    run = tmp_path / "run"
    done = _child([sys.executable, str(HERE / "_faulty_train.py"), phase, sig, str(run), *ARGS])
    expected = -signal.SIGKILL if sig == "KILL" else 130
    assert done.returncode == expected, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    state = load_checkpoint(run)  # never a corrupt checkpoint
    if sig != "KILL":
        assert state["iteration"] == 2 and "interrupted: checkpoint of iteration 2 saved" in done.stdout
    if phase == "save" and sig == "KILL":
        assert list(run.glob(".checkpoint.pt.*.tmp")), "the fault left no temporary: it did not hit the save"
    assert main(["train", "--resume", "--run-dir", str(run), "--no-progress"]) == 0
    _same_run(run, reference)


@pytest.mark.slow
def test_sigstop_then_sigcont_finishes_the_same_run(tmp_path, reference):
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    args = [a if a != "4" else "4" for a in ARGS]
    proc = subprocess.Popen([sys.executable, "-m", "fastmaml", "train", *args, "--run-dir", str(run)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + BOUND_S
        while not (run / "metrics.jsonl").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGSTOP)
        time.sleep(1.0)
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=BOUND_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    _same_run(run, reference)


def test_a_killed_writer_leaves_no_temporary_behind(tmp_path):
    """Temporaries of dead writers are removed by the next save; a live writer's are left alone."""
    from fastmaml.train.checkpoint import save_checkpoint

    path = tmp_path / "checkpoint.pt"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".checkpoint.pt.{dead.stdout.strip()}.abc.tmp"
    live = tmp_path / f".checkpoint.pt.{os.getpid()}.def.tmp"
    other = tmp_path / ".other.pt.1.x.tmp"
    for p in (stale, live, other):
        p.write_bytes(b"partial")
    save_checkpoint({"iteration": 0, "learner": {}, "config": "{}"}, path)
    assert not stale.exists() and live.exists() and other.exists()
    assert load_checkpoint(path)["iteration"] == 0
