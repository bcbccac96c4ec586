import json
import shutil

import pytest
import torch

from tests._threads import one_thread  # noqa: F401  (autouse)

SINE_TINY = ["--task", "sine", "--iterations", "2", "--meta-batch", "2", "--eval-every", "2", "--eval-tasks", "2",
             "--batching", "loop", "--no-progress"]


@pytest.fixture(scope="session")
def sine_run(tmp_path_factory):
    """A finished tiny sine run (checkpoint, metrics, eval.json), made once; tests copy it."""
    from fastmaml.cli import main

    run = tmp_path_factory.mktemp("source") / "run"
    assert main(["train", *SINE_TINY, "--run-dir", str(run)]) == 0
    assert main(["eval", str(run), "--tasks", "2", "--steps", "0,1"]) == 0
    return run


@pytest.fixture
def run_copy(sine_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(sine_run, run)
    return run


def edit_checkpoint(path, edit) -> None:
    """Rewrite a checkpoint file after `edit(state)` (which changes the dict in place)."""
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)


def edit_config(**changes):
    def edit(state):
        cfg = json.loads(state["config"])
        cfg.update(changes)
        state["config"] = json.dumps(cfg)
    return edit
