"""fastmaml.distributed: 2 gloo ranks on CPU against one process over the union of their tasks,
and failures that end the job instead of hanging it. Every subprocess runs under a timeout and is
killed (its own process group) when it overstays."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastmaml import distributed
from fastmaml.distributed import DistContext, shard_bounds

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "--monitor-interval=0.1"]
ATOL = 1e-6  # float64; the observed differences are ~1e-13


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", FASTMAML_DIST_TIMEOUT="60")
    env.update(extra)
    return env


def _run(cmd, timeout, env=None):
    """Run `cmd` in its own process group; kill the group if it outlives `timeout`."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env or _env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    start = time.monotonic()
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(map(str, cmd))} did not finish within {timeout} s:\n{out[-4000:]}")
    return proc.returncode, out, time.monotonic() - start


def _compare(ref, got, path="") -> list[str]:
    """Mismatches of two nested dicts of tensors, each naming where and by how much."""
    bad = []
    if isinstance(ref, dict):
        if set(ref) != set(got):
            return [f"{path}: keys {sorted(ref)} vs {sorted(got)}"]
        for k in ref:
            bad += _compare(ref[k], got[k], f"{path}/{k}")
    elif ref is None or got is None:
        if (ref is None) != (got is None):
            bad.append(f"{path}: one is None: {ref is None} vs {got is None}")
    else:
        if ref.shape != got.shape:
            return [f"{path}: shape {list(ref.shape)} vs {list(got.shape)}"]
        diff = (ref - got).abs()
        far = diff > ATOL
        if far.any() or not torch.isfinite(got).all():
            bad.append(f"{path}: {int(far.sum())} of {ref.numel()} elements differ by more than {ATOL} "
                       f"(max {diff.max():.3g} at {divmod(int(diff.argmax()), ref.shape[-1]) if ref.dim() else ()}), "
                       f"non-finite: {int((~torch.isfinite(got)).sum())}")
    return bad


# ---- one process ---------------------------------------------------------------------------------

@pytest.mark.parametrize("total,world", [(5, 2), (4, 2), (7, 3), (3, 3), (32, 5), (1, 1)])
def test_shard_bounds_partition_the_batch(total, world):
    bounds = [shard_bounds(total, world, r) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == total
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    sizes = [b - a for a, b in bounds]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    assert sum(s / total for s in sizes) == pytest.approx(1.0)


def test_shard_needs_a_task_per_rank():
    with pytest.raises(ValueError, match="every rank needs at least one task"):
        shard_bounds(1, 2, 0)
    with pytest.raises(ValueError, match="rank must be in"):
        shard_bounds(4, 2, 2)


def test_one_process_context_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = distributed.init_from_env("cpu")
    try:
        assert not ctx.enabled and ctx.is_main and ctx.world_size == 1
        assert distributed.current() is ctx
        x = torch.randn(3, 4, 1)
        shard = ctx.shard((x, x, x, x))
        assert shard.weight == 1.0 and shard.tasks == 3 and shard.support_x is x
        p = torch.nn.Parameter(torch.randn(3))
        p.grad = torch.randn(3)
        before = p.grad.clone()
        assert ctx.all_reduce_grads([p], 1.0, loss=2.5) == 2.5
        assert torch.equal(p.grad, before)
    finally:
        ctx.destroy()
    assert distributed.current() is not ctx


def test_incomplete_environment_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(distributed.DistributedError, match="MASTER_ADDR.*torchrun"):
        distributed.init_from_env("cpu")


def test_shard_rejects_ragged_batches():
    ctx = DistContext()
    with pytest.raises(ValueError, match="disagree on the number of tasks"):
        ctx.shard((torch.zeros(3, 2), torch.zeros(4, 2)))


# ---- two ranks -----------------------------------------------------------------------------------

def test_two_ranks_match_one_process_over_the_union_of_tasks(tmp_path):
    """MAML (second order, loop), MAML with BatchNorm running statistics (vmap), Meta-SGD, Reptile
    through meta_grad (a subset of adapted params: others keep grad None) and through its own
    outer step, and MetaTrainer: the first meta-gradient, the losses and the parameters (and
    buffers) after 3 meta-steps of 5 tasks split 3 + 2, in float64."""
    from tests.distributed._scenarios import STEPS, run_all

    rc, out, _ = _run(TORCHRUN + [str(HERE / "_scenarios.py"), str(tmp_path)], timeout=150)
    assert rc == 0, out[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]

    torch.set_num_threads(1)
    ref = run_all(DistContext(), run_dir=None)
    bad = []
    for name in ref:
        bad += _compare(ref[name], ranks[0][name], f"rank 0 vs one process: {name}")
        bad += _compare(ranks[0][name], ranks[1][name], f"rank 1 vs rank 0: {name}")
    assert not bad, "\n".join(bad)
    # Reptile's non-adapted layer has no gradient on any rank: it stays None, as in one process
    grads = ranks[0]["reptile_meta_grad"]["grad"]
    assert grads["module.4.weight"] is None and grads["module.0.weight"] is not None
    # the gradients went through coalesced buckets: one per dtype here, not one per tensor
    stats = ranks[0]["stats"]
    assert stats["all_reduce_calls"] > 0 and stats["buckets"] == stats["all_reduce_calls"]
    # only rank 0 logged to the run directory: one train record per iteration, not two
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len([line for line in lines if '"train"' in line]) == STEPS
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


def test_a_rank_that_raises_fails_the_job_quickly():
    rc, out, _ = _run(TORCHRUN + [str(HERE / "_fail.py"), "raise"], timeout=90)  # the bound: 90 s
    assert rc != 0, out[-4000:]
    assert "fastmaml.distributed: rank 1 of 2 failed with RuntimeError: injected failure on rank 1" in out, out[-4000:]
    assert "finished without noticing" not in out


@pytest.mark.slow
def test_a_frozen_rank_ends_the_job_in_bounded_time():
    """SIGSTOP freezes rank 1 whole (its heartbeat too): rank 0 sees its heartbeat stop after
    $FASTMAML_HEARTBEAT_TIMEOUT and exits, long before the collective timeout (600 s here); torchrun
    then ends the job (SIGTERM, and SIGKILL for the frozen rank after its 30 s grace)."""
    env = _env(FASTMAML_DIST_TIMEOUT="600", FASTMAML_HEARTBEAT_TIMEOUT="3")
    rc, out, wall = _run(TORCHRUN + [str(HERE / "_fail.py"), "stop"], timeout=120, env=env)
    assert rc != 0, out[-4000:]
    assert "rank 0 of 2: rank 1 has not answered for" in out, out[-4000:]
    assert wall < 100, wall


def test_a_killed_rank_ends_the_job_quickly():
    rc, out, wall = _run(TORCHRUN + [str(HERE / "_fail.py"), "kill"], timeout=90)
    assert rc != 0 and "finished without noticing" not in out, out[-4000:]
    assert "Signal 9 (SIGKILL) received by PID" in out or "exitcode  : -9" in out, out[-4000:]


@pytest.mark.slow
def test_sigterm_to_torchrun_saves_a_checkpoint_that_resumes(tmp_path):
    """SIGTERM to the launcher (a scheduler's preemption): it forwards SIGTERM to the ranks, rank 0
    saves the last completed iteration, and a one-process --resume finishes the run."""
    from fastmaml.cli import main
    from fastmaml.train.checkpoint import load_checkpoint

    run = tmp_path / "run"
    args = ["train", "--task", "sine", "--iterations", "100000", "--meta-batch", "4", "--eval-every", "100000",
            "--eval-tasks", "2", "--no-progress", "--batching", "loop", "--run-dir", str(run)]
    proc = subprocess.Popen(TORCHRUN + ["-m", "fastmaml"] + args, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        log = run / "metrics.jsonl"  # a train record every 10 iterations
        while not (log.exists() and '"train"' in log.read_text()) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        out, _ = proc.communicate(timeout=90)
        wall = time.monotonic() - start
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode != 0 and wall < 60, (wall, out[-4000:])
    saved = load_checkpoint(run)["iteration"]
    assert saved >= 10 and "interrupted: checkpoint of iteration" in out, out[-4000:]
    assert not list(run.glob(".*.tmp"))
    assert main(["train", "--resume", "--run-dir", str(run), "--iterations", str(saved + 2), "--no-progress"]) == 0
    assert load_checkpoint(run)["iteration"] == saved + 2


def test_heartbeat_timeout_must_be_a_number(monkeypatch):
    monkeypatch.setenv(distributed.HEARTBEAT_ENV, "-1")
    with pytest.raises(ValueError, match="FASTMAML_HEARTBEAT_TIMEOUT must be a number of seconds >= 0"):
        distributed._start_heartbeat(0, 2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_hung_rank_fails_the_job_after_the_timeout_without_a_launcher():
    """No torchrun to stop the job: rank 1 stops answering and rank 0's collective times out
    ($FASTMAML_DIST_TIMEOUT), so rank 0 exits non-zero by itself with a message naming the cause."""
    port = _free_port()
    procs = []
    try:
        for rank in (0, 1):
            env = _env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port), FASTMAML_DIST_TIMEOUT="4")
            procs.append(subprocess.Popen([sys.executable, str(HERE / "_fail.py"), "hang"], cwd=ROOT, env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                          start_new_session=True))
        try:
            out, _ = procs[0].communicate(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail("rank 0 still waits for the hung rank 1 after 90 s")
        assert procs[0].returncode != 0, out[-4000:]
        assert "all-reduce failed" in out and "rank 0 of 2 failed with DistributedError" in out, out[-4000:]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.communicate()


@pytest.mark.slow
def test_torchrun_fastmaml_train_matches_one_process(tmp_path):
    """`torchrun --nproc_per_node=2 -m fastmaml train` (float32): the same logged losses and final
    evaluation as `fastmaml train` in one process, and rank 0 alone writes the run directory."""
    import json

    from fastmaml.cli import main

    args = ["train", "--task", "sine", "--iterations", "4", "--meta-batch", "5", "--eval-every", "4",
            "--eval-tasks", "10", "--log-every", "1", "--no-progress", "--batching", "loop"]
    rc, out, _ = _run(TORCHRUN + ["-m", "fastmaml"] + args + ["--run-dir", str(tmp_path / "two")], timeout=150)
    assert rc == 0, out[-4000:]
    assert out.count("iteration 4: mse") == 1, out[-4000:]  # the summary line from rank 0 only
    assert main(args + ["--run-dir", str(tmp_path / "one")]) == 0

    def records(run):
        return [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]

    one, two = records("one"), records("two")
    assert [(r["kind"], r["iteration"]) for r in two] == [(r["kind"], r["iteration"]) for r in one]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), (a, b)
    assert (tmp_path / "two" / "checkpoint.pt").is_file() and (tmp_path / "two" / "config.json").is_file()
