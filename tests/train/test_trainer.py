"""MetaTrainer: bit-identical resume, Ctrl-C, NaN handling, metrics files, evaluation, the
Reptile-style outer hook."""

import json
import math
import os
import signal

import pytest
import torch
import torch.nn.functional as F

from fastmaml.algorithms import MAML
from fastmaml.models import Conv4, mlp
from fastmaml.tasks import FewShotSampler, SineTasks
from fastmaml.train import (
    CheckpointError,
    MetaTrainer,
    TrainingDiverged,
    evaluate,
    load_checkpoint,
    mean_ci95,
)
from fastmaml.train.metrics import MetricsLogger, read_jsonl, tensorboard_available


def sine_setup(seed=0, lr=0.01):
    torch.manual_seed(seed)
    learner = MAML(mlp(1, 1, hidden=16), inner_lr=lr, inner_steps=2, batching="loop")
    return learner, SineTasks(5, 5, seed=seed), SineTasks(5, 5, seed=seed + 1), F.mse_loss


def image_setup(seed=0):
    torch.manual_seed(seed)
    labels = torch.arange(12).repeat_interleave(6)
    images = torch.rand(labels.numel(), 1, 8, 8, generator=torch.Generator().manual_seed(1)) + labels.view(-1, 1, 1, 1) * 0.05
    learner = MAML(Conv4(3, hidden=4, image_size=8, blocks=2), inner_lr=0.3, inner_steps=1, batching="loop")
    train = FewShotSampler(images, labels, 3, 1, 2, classes=range(8), seed=seed)
    evals = FewShotSampler(images, labels, 3, 1, 2, classes=range(8, 12), seed=seed + 1)
    return learner, train, evals, F.cross_entropy


def trainer(setup, run_dir, iterations, metric="mse", **kw):
    learner, train, evals, loss_fn = setup
    opts = dict(meta_batch=3, iterations=iterations, eval_tasks=evals, eval_every=2, eval_num_tasks=4,
                run_dir=run_dir, checkpoint_every=1, progress=False, log_every=1)
    opts.update(kw)
    return MetaTrainer(learner, train, loss_fn, metric=metric, **opts)


def assert_same_params(a, b):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), f"{name} differs by {(p - q).abs().max().item()}"


@pytest.mark.parametrize("kind", ["sine", "image"])
def test_resume_is_bit_identical(tmp_path, kind):
    make = (lambda: sine_setup()) if kind == "sine" else (lambda: image_setup())
    metric = "mse" if kind == "sine" else "accuracy"
    straight = trainer(make(), tmp_path / "a", 6, metric)
    straight.fit()
    first = trainer(make(), tmp_path / "b", 3, metric)
    first.fit()
    torch.manual_seed(123)  # a fresh process would have other global RNG states: the checkpoint restores them
    resumed = trainer(make(), tmp_path / "b", 6, metric)
    resumed.fit(resume=True)
    assert resumed.iteration == 6
    assert_same_params(straight.learner, resumed.learner)
    for s, r in zip(straight.optimizer.state.values(), resumed.optimizer.state.values()):
        assert torch.equal(s["exp_avg_sq"], r["exp_avg_sq"])
    # metrics of the resumed run continue without duplicates and match the straight run's
    a = [r for r in read_jsonl(tmp_path / "a" / "metrics.jsonl") if r["kind"] == "train"]
    b = [r for r in read_jsonl(tmp_path / "b" / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["iteration"] for r in b] == list(range(1, 7))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]


def _interrupt(kind):
    if kind == "ctrl-c":
        raise KeyboardInterrupt
    os.kill(os.getpid(), signal.SIGTERM)  # `kill PID`: the handler raises at the next bytecode


@pytest.mark.parametrize("kind", ["ctrl-c", "sigterm"])
def test_interrupt_saves_a_checkpoint_that_resumes_exactly(tmp_path, kind):
    straight = trainer(sine_setup(), tmp_path / "a", 6)
    straight.fit()
    setup = sine_setup()
    tasks = setup[1]
    original, calls = tasks.sample, []

    def sample(n):
        calls.append(n)
        if len(calls) == 4:  # inside iteration 4, after drawing nothing yet
            _interrupt(kind)
        return original(n)

    tasks.sample = sample
    t = trainer(setup, tmp_path / "b", 6, checkpoint_every=100)
    with pytest.raises(KeyboardInterrupt):
        t.fit()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored after the run
    assert load_checkpoint(tmp_path / "b")["iteration"] == 3
    resumed = trainer(sine_setup(), tmp_path / "b", 6)
    resumed.fit(resume=True)
    assert_same_params(straight.learner, resumed.learner)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    learner, train, evals, _ = sine_setup()
    calls = []

    def loss_fn(out, y):
        calls.append(1)
        loss = F.mse_loss(out, y)
        return loss * float("nan") if len(calls) > 3 * 9 else loss  # 9 calls an iteration: NaN from iteration 4 on

    t = trainer((learner, train, evals, loss_fn), tmp_path, 6, eval_tasks=None, checkpoint_every=2)
    with pytest.raises(TrainingDiverged, match=r"meta-loss is nan at iteration 4;.*iteration 2\)"):
        t.fit()
    state = load_checkpoint(tmp_path)
    assert state["iteration"] == 2
    good = trainer(sine_setup(), None, 2, eval_tasks=None)
    good.fit()
    learner.load_state_dict(state["learner"])
    assert_same_params(good.learner, learner)
    assert read_jsonl(tmp_path / "metrics.jsonl")[-1]["kind"] == "diverged"


def test_metrics_files(tmp_path):
    t = trainer(sine_setup(), tmp_path, 4, log_every=2)
    summary = t.fit()
    assert summary["iteration"] == 4 and summary["last_eval"]["iteration"] == 4
    lines = (tmp_path / "train.csv").read_text().splitlines()
    assert lines[0] == "iteration,loss,elapsed_s,iterations_per_s" and len(lines) == 3
    evals = (tmp_path / "eval.csv").read_text().splitlines()
    assert evals[0].startswith("iteration,split,metric,mean,ci95") and len(evals) == 3
    assert json.loads((tmp_path / "config.json").read_text()) == {}
    torch.load(tmp_path / "checkpoint.pt", weights_only=True)


def test_evaluate_and_ci():
    mean, ci = mean_ci95([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and math.isclose(ci, 1.96 * math.sqrt((1.25 * 4 / 3) / 4))
    assert mean_ci95([5.0]) == (5.0, 0.0)
    learner, _, evals, loss_fn = image_setup()
    rng = torch.get_rng_state()
    out = evaluate(learner, evals, loss_fn, "accuracy", num_tasks=7, steps=[0, 1, 2], batch=3)
    assert out["tasks"] == 7 and [c["inner_steps"] for c in out["curve"]] == [0, 1, 2]
    assert all(0 <= c["mean"] <= 1 and c["ci95"] >= 0 for c in out["curve"])
    assert torch.equal(rng, torch.get_rng_state())
    assert not any(p.grad is not None for p in learner.parameters())


def test_outer_hook_for_reptile_like_learners(tmp_path):
    """A learner with meta_grad() (its own outer update) is trained through it, not meta_loss."""
    learner, train, evals, loss_fn = sine_setup()
    used = []

    def meta_grad(sx, sy, loss_fn):
        used.append(sx.shape)
        for p in learner.parameters():
            p.grad = torch.ones_like(p)
        return torch.tensor(1.0)

    learner.meta_grad = meta_grad
    before = [p.detach().clone() for p in learner.parameters()]
    t = trainer((learner, train, evals, loss_fn), None, 2, optimizer=torch.optim.SGD(learner.parameters(), lr=0.5))
    t.fit()
    assert used == [(3, 5, 1)] * 2
    for b, p in zip(before, learner.parameters()):
        assert torch.allclose(p, b - 1.0)


def test_reptile_trains_when_available(tmp_path):
    algorithms = pytest.importorskip("fastmaml.algorithms")
    if not hasattr(algorithms, "Reptile"):
        pytest.skip("fastmaml.algorithms has no Reptile yet")
    torch.manual_seed(0)
    learner = algorithms.Reptile(mlp(1, 1, hidden=16), inner_lr=0.02, inner_steps=3, batching="loop")
    t = MetaTrainer(learner, SineTasks(5, 5, seed=0), F.mse_loss, metric="mse", meta_batch=4, iterations=3,
                    optimizer=torch.optim.SGD(learner.parameters(), lr=0.1), progress=False)
    before = [p.detach().clone() for p in learner.parameters()]
    t.fit()
    assert any(not torch.equal(b, p) for b, p in zip(before, learner.parameters()))


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path)
    torch.save({"x": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a fastmaml checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_tensorboard_optional(tmp_path):
    if tensorboard_available():
        MetricsLogger(tmp_path, tensorboard=True).close()
        assert (tmp_path / "tensorboard").is_dir()
    else:
        with pytest.raises(RuntimeError, match="pip install tensorboard"):
            MetricsLogger(tmp_path, tensorboard=True)
