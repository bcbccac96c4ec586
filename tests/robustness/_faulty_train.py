"""`python _faulty_train.py PHASE SIGNAL RUN_DIR ARGS...`: `fastmaml train ARGS --run-dir RUN_DIR`
that sends itself SIGNAL (KILL, TERM, INT) in PHASE at iteration 2: "step" (inside the meta-step),
"eval" (inside the evaluation of iteration 2), "save" (half-way through writing checkpoint.pt)."""

import os
import signal
import sys

import torch

from fastmaml.cli import main
from fastmaml.train import trainer

phase, sig, run_dir, *args = sys.argv[1:]
sig = getattr(signal, f"SIG{sig}")
fired = []


def fire() -> None:
    if not fired:
        fired.append(1)
        os.kill(os.getpid(), sig)  # to itself: delivered before kill() returns


if phase == "step":
    step = trainer.MetaTrainer._meta_step

    def faulty_step(self):
        if self.iteration == 2:
            fire()
        return step(self)

    trainer.MetaTrainer._meta_step = faulty_step
elif phase == "eval":
    evaluate = trainer.evaluate

    def faulty_evaluate(learner, tasks, loss_fn, *a, **k):
        if not fired:
            sx = tasks.sample(1).tensors()[0]  # part of the evaluation is done when the signal lands
            del sx
            fire()
        return evaluate(learner, tasks, loss_fn, *a, **k)

    trainer.evaluate = faulty_evaluate
elif phase == "save":
    save = torch.save

    def faulty_save(obj, f, *a, **k):
        if isinstance(obj, dict) and obj.get("iteration") == 2 and not fired:
            f.write(b"PK\x03\x04 half a checkpoint")
            f.flush()
            fire()
        return save(obj, f, *a, **k)

    torch.save = faulty_save
else:
    raise SystemExit(f"unknown phase {phase!r}")

sys.exit(main(["train", *args, "--run-dir", run_dir]))
